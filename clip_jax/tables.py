"""Mini paper tables: a sweep of demo-scale training runs, written up as a markdown table and a
PNG plot.

  python -m clip_jax.tables configs/tables/siglip_batch.py \
      [--workdir /tmp/tables/siglip_batch] [--out_dir docs/tables]

A table config is a Python file whose `get_config()` returns a `Table`: the runs (each a training
config file, `--config.<field>` overrides as a dict, and a label), the metric columns to report,
and a function that says, from the measured numbers, whether the paper's claim reproduces.

Each run trains in its own workdir, `<workdir>/<run slug>` (`clip_jax.training.loop.
train_and_evaluate`, in this process), which also holds `table_run.json`: the run's settings,
its wall time and, once finished, its final metrics. A rerun of the same command skips finished
runs and resumes an interrupted one from its latest checkpoint, so a sweep stopped by Ctrl-C (the
run in progress checkpoints and stops, see `clip_jax.training.preemption`) goes on where it
stopped. Once every run has finished, `<out_dir>/<name>.md` (the command, date, machine, the
table, the verdict, each run's overrides) and `<out_dir>/<name>.png` are written.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from clip_jax import fs
from clip_jax.registry import ConfigError

RECORD = "table_run.json"  # <run workdir>/table_run.json: settings, wall time, final metrics


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a table.

  Attributes:
    label: its row name in the table (unique in the table; its workdir is a slug of it).
    config: a training config file (`--config`), optionally with ":arg".
    overrides: {dotted field below config: value}, as `--config.<field>=<value>` on the command
      line of `clip_jax.train` (a component switched by name starts from its own defaults).
    series: the line it belongs to in a plot over `x` (e.g. the loss), or "" for a bar plot.
    x: its position on the plot's x axis (e.g. the batch size), or None for a bar plot.
  """
  label: str
  config: str
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  series: str = ""
  x: float | None = None


@dataclasses.dataclass(frozen=True)
class Table:
  """A table config (`get_config()` of a configs/tables/ file).

  Attributes:
    title: the markdown's heading.
    claim: the paper's claim being tested, with the reference (markdown).
    setup: what the runs are and why (markdown).
    runs: the runs, in row order.
    columns: ((metric key of final_metrics.json, column header), ...).
    verdict: {run label: final metrics} -> markdown saying plainly whether the direction of the
      claim reproduces in these numbers.
    plot_columns: the metric keys drawn in the PNG (default: every column).
    x_label: the x axis of a plot over `Run.x` ("batch size"), logarithmic.
  """
  title: str
  claim: str
  setup: str
  runs: Sequence[Run]
  columns: Sequence[tuple[str, str]]
  verdict: Callable[[dict[str, dict[str, float]]], str]
  plot_columns: Sequence[str] = ()
  x_label: str = ""


def slug(label: str) -> str:
  """A run label as a directory name: "sigmoid, batch 32" -> "sigmoid_batch_32"."""
  return re.sub(r"[^A-Za-z0-9.+-]+", "_", label).strip("_") or "run"


def load_table(path: str) -> Table:
  """Reads a table config file.

  Raises:
    ConfigError: no such file, no get_config(), it returns no `Table`, or two runs share a label
      or a workdir slug.
  """
  if not os.path.isfile(path):
    raise ConfigError(f"table config {path!r}: no such file; give a configs/tables/*.py file")
  from clip_jax.config import load_config_file  # pylint: disable=g-import-not-at-top

  table = load_config_file(path)
  if not isinstance(table, Table):
    raise ConfigError(f"table config {path!r}: get_config() must return clip_jax.tables.Table, "
                      f"not {type(table).__name__}")
  seen: dict[str, str] = {}
  for run in table.runs:
    if slug(run.label) in seen:
      raise ConfigError(f"table config {path!r}: runs {seen[slug(run.label)]!r} and "
                        f"{run.label!r} would share the workdir {slug(run.label)!r}; give them "
                        "distinct labels")
    seen[slug(run.label)] = run.label
  return table


def _set(config: ml_collections.ConfigDict, path: str, value: Any, where: str) -> None:
  """Sets the dotted field `path` of `config` to `value`; errors start with `where`.

  Raises:
    ConfigError: a section or the field is missing, or the value has another type than the
      field's.
  """
  node = config
  *sections, field = path.split(".")
  for key in sections:
    if not hasattr(node, "get") or key not in node:
      raise ConfigError(f"{where}: override {path!r}: the config has no section {key!r}")
    node = node[key]
  if field not in node:
    raise ConfigError(f"{where}: override {path!r} is not a field of the config; see "
                      "the config file for the known fields")
  try:
    with config.unlocked():
      node[field] = value
  except TypeError as e:
    raise ConfigError(f"{where}: override {path}={value!r}: {e}") from None


def run_config(run: Run) -> ml_collections.ConfigDict:
  """The training config of `run`: its file, then its overrides applied as the command line of
  `clip_jax.train` would (components switched by name, declared fields added, defaults filled).

  Raises:
    ConfigError: the file cannot be loaded, or an override names no field (naming the run).
  """
  from clip_jax import cli, config as config_lib  # pylint: disable=g-import-not-at-top

  config = config_lib.load_config_file(run.config)
  raw = {k: v if isinstance(v, str) else repr(v) for k, v in run.overrides.items()}
  config_lib.import_modules(run.overrides.get("imports", config.get("imports", ())))
  cli.switch_components(config, raw)
  cli.add_overridden_fields(config, raw)
  config = config_lib.add_defaults(config)
  for path, value in run.overrides.items():
    _set(config, path, value, f"run {run.label!r}")
  return config


def _spec(run: Run) -> dict[str, Any]:
  """What identifies a run's results: its config file (as `_shown`: relative to the current
  directory, so another clone run from its root matches) and overrides (JSON-able)."""
  return {"config": _shown(run.config),
          "overrides": {k: repr(v) for k, v in run.overrides.items()}}


def train_run(run: Run, run_dir: str) -> dict[str, Any] | None:
  """Trains `run` in `run_dir` unless it has finished there; returns its record.

  Returns:
    {"spec", "wall_s" (all sessions together), "metrics" (final metrics)}, or None when the run
    stopped before its last step (a signal; its checkpoint is there to resume from).

  Raises:
    ConfigError: `run_dir` holds a run with other settings (change --workdir or delete it).
  """
  from clip_jax.training.loop import train_and_evaluate  # pylint: disable=g-import-not-at-top

  record_path = fs.join(run_dir, RECORD)
  record = {"spec": _spec(run), "wall_s": 0.0}
  if fs.exists(record_path):
    record = json.loads(fs.read_text(record_path))
    if record.get("spec") != _spec(run):
      raise ConfigError(f"{run_dir} holds run {run.label!r} with other settings ({record_path}: "
                        f"{record.get('spec')}, the table now: {_spec(run)}); delete that "
                        "directory or pass another --workdir")
    if "metrics" in record:
      print(f"[tables] {run.label}: finished in {run_dir}, skipped", flush=True)
      return record
  config = run_config(run)
  fs.makedirs(run_dir)
  fs.write_text(record_path, json.dumps(record, indent=2))
  print(f"[tables] {run.label}: training in {run_dir}", flush=True)
  start = time.time()
  try:
    train_and_evaluate(config, run_dir)
  finally:
    record["wall_s"] += time.time() - start
    fs.write_text(record_path, json.dumps(record, indent=2))
  final = fs.join(run_dir, "final_metrics.json")
  if not fs.exists(final):
    return None
  record["metrics"] = json.loads(fs.read_text(final))
  fs.write_text(record_path, json.dumps(record, indent=2))
  return record


def machine() -> str:
  """One line naming this machine: CPU model and cores, memory, JAX's backend and devices."""
  import jax  # pylint: disable=g-import-not-at-top

  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                 cpu)
  except OSError:
    pass
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  try:
    memory = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
  except (ValueError, OSError, AttributeError):
    memory = ""
  devices = jax.devices()
  return (f"{cores} cores of {cpu}{memory}; JAX {jax.__version__}, {len(devices)} "
          f"{devices[0].platform} device{'s' if len(devices) > 1 else ''}")


def _shown(path: str) -> str:
  """A config path as the markdown shows it: relative to the current directory when inside it
  (configs/demo/emoji.py, not /home/me/clip_jax/configs/tables/../demo/emoji.py)."""
  relative = os.path.relpath(os.path.normpath(path))
  return path if relative.startswith("..") else relative


def _format(value: float | None) -> str:
  return "–" if value is None else f"{value:.3f}"


def markdown(table: Table, records: dict[str, dict[str, Any]], *, command: str, date: str,
             machine_line: str, png_name: str) -> str:
  """The table's markdown: heading, claim, command, date and machine, setup, the table (one row
  per run, its columns and wall time), the verdict, the plot and each run's overrides."""
  metrics = {label: r["metrics"] for label, r in records.items()}
  total = sum(r["wall_s"] for r in records.values())
  seeds = sorted({run_config(run).seed for run in table.runs})
  lines = [f"# {table.title}", "", table.claim, "",
           f"Made with `{command}` on {date}; machine: {machine_line}. Training time of the "
           f"runs, summed: {total / 60:.1f} min (each run's time includes start-up, compilation "
           f"and evaluation). One run per row, seed {', '.join(map(str, seeds))} "
           "(`config.seed`).", "", table.setup, "",
           "| run | " + " | ".join(h for _, h in table.columns) + " | wall time |",
           "|---|" + "---|" * (len(table.columns) + 1)]
  for run in table.runs:
    row = [_format(metrics[run.label].get(key)) for key, _ in table.columns]
    lines.append(f"| {run.label} | " + " | ".join(row)
                 + f" | {records[run.label]['wall_s']:.0f} s |")
  lines += ["", table.verdict(metrics), "", f"![{table.title}]({png_name})", "",
            "Runs (`python -m clip_jax.train --config FILE --workdir DIR` with these "
            "overrides):", ""]
  for run in table.runs:
    flags = " ".join(shlex.quote(f"--config.{k}={v}") for k, v in run.overrides.items())
    lines.append(f"- {run.label}: `--config {_shown(run.config)} {flags}`")
  return "\n".join(lines) + "\n"


def run_table(table_path: str, workdir: str | None = None, out_dir: str = "docs/tables",
              command: str | None = None) -> tuple[str, str] | None:
  """Trains every unfinished run of the table, then writes its markdown and PNG.

  Args:
    table_path: a table config file (`configs/tables/<name>.py`).
    workdir: the runs' parent directory (default /tmp/tables/<name>); local or object storage.
    out_dir: where `<name>.md` and `<name>.png` go.
    command: the command line recorded in the markdown (default: this process's).

  Returns:
    (markdown path, PNG path), or None when a run stopped early (rerun to resume it).

  Raises:
    ConfigError: a bad table config or run override, or a workdir holding other runs.
  """
  from clip_jax.plots import plot_table  # pylint: disable=g-import-not-at-top

  name = os.path.splitext(os.path.basename(table_path))[0]
  table = load_table(table_path)
  workdir = workdir or f"/tmp/tables/{name}"
  records = {}
  for run in table.runs:
    record = train_run(run, fs.join(workdir, slug(run.label)))
    if record is None:
      print(f"[tables] {run.label} stopped before its last step; run the same command again to "
            "resume it", flush=True)
      return None
    records[run.label] = record
  fs.makedirs(out_dir)
  png = fs.join(out_dir, f"{name}.png")
  plot_table([(run.label, run.series, run.x, records[run.label]["metrics"])
              for run in table.runs],
             [(k, h) for k, h in table.columns if not table.plot_columns or k in table.plot_columns],
             png, title=table.title, x_label=table.x_label)
  md = fs.join(out_dir, f"{name}.md")
  fs.write_text(md, markdown(
      table, records, command=command or "python -m clip_jax.tables " + shlex.join(sys.argv[1:]),
      date=datetime.date.today().isoformat(), machine_line=machine(), png_name=f"{name}.png"))
  print(f"[tables] wrote {md} and {png}", flush=True)
  return md, png


def main(argv: list[str], workdir: str | None, out_dir: str) -> None:
  """The CLI: `argv` = [program, table config]; exits 0 once the table is written, 1 when a run
  stopped early, 2 on a usage or config error."""
  from absl import logging  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)
  if len(argv) != 2:
    print("usage: python -m clip_jax.tables configs/tables/<name>.py [--workdir DIR] "
          "[--out_dir docs/tables]", file=sys.stderr)
    sys.exit(2)
  try:
    done = run_table(argv[1], workdir, out_dir)
  except ConfigError as e:
    print(f"Config error: {e}", file=sys.stderr)
    sys.exit(2)
  sys.exit(0 if done else 1)


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  # Through the imported module: table configs build clip_jax.tables.Table, not __main__.Table.
  from clip_jax import tables  # pylint: disable=g-import-not-at-top

  _WORKDIR = flags.DEFINE_string("workdir", None, "Parent of the runs' workdirs (default "
                                 "/tmp/tables/<name>); a rerun skips finished runs and resumes "
                                 "the rest.")
  _OUT_DIR = flags.DEFINE_string("out_dir", "docs/tables",
                                 "Where <name>.md and <name>.png are written.")
  app.run(lambda argv: tables.main(argv, _WORKDIR.value, _OUT_DIR.value))
