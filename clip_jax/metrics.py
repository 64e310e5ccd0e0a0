"""Training metrics on the host: a metrics.jsonl writer and a console progress bar.

- `MetricsWriter` appends one JSON object per line, `{"step": <int>, "<name>": <float>, ...}`, to
  `<workdir>/metrics.jsonl`, flushing after every line (on object storage, where nothing can be
  appended, the object is rewritten by `sync()` and at least every minute: see `fs.Appender`).
  Reopened with `resume_step` (the restored checkpoint's step) it first drops the lines of later
  steps, atomically, so a run that crashed and restarted has every step exactly once.
- `ProgressBar` is a tqdm bar on stderr with the latest metrics as a compact postfix.

Paths may be local or on object storage (gs://bucket/run): all I/O goes through `clip_jax.fs`.

Only process 0 should write: pass `enabled=jax.process_index() == 0`. Plots: `clip_jax.plots`.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Mapping, TextIO

import numpy as np

from clip_jax import fs
from clip_jax.tensorboard import TensorBoardWriter

METRICS_FILENAME = "metrics.jsonl"


def _to_float(name: str, value: Any) -> float:
  """A Python float from a float/int/numpy scalar/0-d or 1-element array (jax arrays included)."""
  if isinstance(value, (bool, np.bool_)):
    return float(value)
  if isinstance(value, (int, float)):
    return float(value)
  try:
    arr = np.asarray(value)
  except Exception as e:  # pylint: disable=broad-except
    raise TypeError(f"metric {name!r} = {value!r} is not a number") from e
  if arr.size != 1 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
    raise TypeError(f"metric {name!r} must be a scalar number, got {type(value).__name__} with "
                    f"shape {arr.shape} and dtype {arr.dtype}")
  return float(arr.reshape(()))


def _parse_lines(text: str, path: str) -> list[dict[str, Any]]:
  """Parses JSON lines; a final line without a newline that does not parse (a write cut off by a
  crash) is dropped, any other bad line raises ValueError."""
  lines = text.split("\n")
  records = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:  # unterminated last line: a torn write
        break
      raise ValueError(f"{path}:{i + 1}: not a JSON line: {line[:80]!r}") from e
    if not isinstance(record, dict) or "step" not in record:
      raise ValueError(f"{path}:{i + 1}: expected an object with a 'step', got {line[:80]!r}")
    records.append(record)
  return records


def read_metrics(path: str) -> list[dict[str, Any]]:
  """Reads a metrics.jsonl file (or a workdir containing one) into a list of dicts, in file order.

  Each dict has an int "step" and float metrics. A torn (unterminated, unparsable) last line is
  ignored.
  """
  if fs.isdir(path):
    path = fs.join(path, METRICS_FILENAME)
  return _parse_lines(fs.read_text(path), path)


class MetricsWriter:
  """Appends `{"step": step, **metrics}` lines to `<workdir>/metrics.jsonl`, and the same
  scalars to TensorBoard event files in `<workdir>/tensorboard/` (`clip_jax.tensorboard`).

  Args:
    workdir: the run directory (created if missing), local or on object storage.
    resume_step: the step training resumes from (the restored checkpoint's step). Lines with
      step > resume_step are dropped first, with `fs.write_atomic` (locally a temporary file in
      the same directory renamed over the old one), so an interruption leaves either the old or
      the new file, never a partial one. None keeps all existing lines.
    enabled: False (e.g. on processes other than 0) makes every method a no-op.
  """

  def __init__(self, workdir: str, *, resume_step: int | None = None, enabled: bool = True):
    self.path = fs.join(workdir, METRICS_FILENAME)
    self.enabled = enabled
    self._file: fs.Appender | None = None
    self._tensorboard = TensorBoardWriter(workdir, resume_step=resume_step, enabled=enabled)
    if not enabled:
      return
    fs.makedirs(workdir)
    if fs.exists(self.path):
      text = fs.read_text(self.path)
      records = _parse_lines(text, self.path)
      torn = bool(text) and not text.endswith("\n")
      if resume_step is not None:
        kept = [r for r in records if r["step"] <= resume_step]
        if len(kept) != len(records) or torn:
          self._rewrite(kept)
      elif torn:
        self._rewrite(records)
    self._file = fs.Appender(self.path)

  def _rewrite(self, records: list[dict[str, Any]]) -> None:
    """Atomically replaces the file with `records`."""
    fs.write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in records).encode("utf-8"))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Appends one line `{"step": step, name: float(value), ...}` and flushes it.

    Values may be Python, numpy or jax scalars (0-d or 1-element arrays). Non-finite values are
    written as NaN/Infinity (which Python's json reads back).
    """
    if not self.enabled:
      return
    if self._file is None:
      raise ValueError(f"MetricsWriter for {self.path} is closed")
    if "step" in metrics:
      raise ValueError("metrics must not contain a 'step' key; pass the step separately")
    record = {"step": int(step)}
    for name, value in metrics.items():
      record[str(name)] = _to_float(name, value)
    self._file.write(json.dumps(record) + "\n")
    self._tensorboard.write(step, {k: v for k, v in record.items() if k != "step"})

  def sync(self) -> None:
    """Makes every line written so far readable at `path` (on object storage a rewrite of the
    object; locally each line is already flushed), and the TensorBoard events too."""
    if self._file is not None:
      self._file.sync()
    self._tensorboard.sync()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    self._tensorboard.close()

  def __enter__(self) -> MetricsWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# Short names for the progress bar postfix.
_SHORT_NAMES = {
    "learning_rate": "lr",
    "examples_per_sec": "ex/s",
    "examples_per_second": "ex/s",
    "steps_per_sec": "it/s",
    "grad_norm": "gnorm",
}


# Shown first in the progress bar, in this order (names without a "train/" prefix).
_FIRST = ("loss", "learning_rate", "examples_per_sec", "mfu")


def format_metrics(metrics: Mapping[str, Any], max_items: int = 6) -> str:
  """A compact one-line summary: `loss=0.6931 lr=1.00e-03 ex/s=12.3k mfu=41.2%`.

  A "train/" prefix is dropped, a few long names are shortened, the names in `_FIRST` come
  first, numbers get 4 significant digits (thousands/millions as k/M; `mfu`, a fraction, as a
  percentage), and at most `max_items` entries are shown.
  """
  def rank(name: str) -> int:
    short = str(name).removeprefix("train/")
    return _FIRST.index(short) if short in _FIRST else len(_FIRST)

  parts = []
  for name, value in sorted(metrics.items(), key=lambda kv: rank(kv[0]))[:max_items]:
    short = str(name).removeprefix("train/")
    short = _SHORT_NAMES.get(short, short)
    try:
      v = _to_float(name, value)
    except TypeError:
      parts.append(f"{short}={value}")
      continue
    if not math.isfinite(v):
      text = str(v)
    elif short == "mfu":
      text = f"{100 * v:.1f}%"
    elif short in ("lr",) or (v != 0 and abs(v) < 1e-3):
      text = f"{v:.2e}"
    elif abs(v) >= 1e6:
      text = f"{v / 1e6:.3g}M"
    elif abs(v) >= 1e4:
      text = f"{v / 1e3:.3g}k"
    else:
      text = f"{v:.4g}"
    parts.append(f"{short}={text}")
  return " ".join(parts)


class ProgressBar:
  """A console progress bar over training steps (tqdm, on stderr by default).

  Args:
    total_steps: the last step.
    initial_step: the step training starts from (a resumed run starts part-way).
    enabled: False (e.g. processes other than 0) shows nothing.
    file: where to draw (default sys.stderr).

  When the output is not a terminal, or CI is set, the bar redraws at most every 30 seconds so logs
  are not flooded.
  """

  def __init__(self, total_steps: int, initial_step: int = 0, enabled: bool = True,
               file: TextIO | None = None):
    import tqdm  # pylint: disable=g-import-not-at-top
    file = file if file is not None else sys.stderr
    is_tty = hasattr(file, "isatty") and file.isatty()
    quiet = os.environ.get("CI", "").lower() in ("1", "true", "yes") or not is_tty
    self._bar = tqdm.tqdm(
        total=total_steps, initial=initial_step, disable=not enabled, file=file,
        dynamic_ncols=is_tty, mininterval=30.0 if quiet else 0.2, unit="step",
        smoothing=0.1, leave=True)
    self.step = initial_step
    self.enabled = enabled

  def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> None:
    """Moves the bar to `step` and shows `metrics` (see `format_metrics`) as its postfix."""
    if metrics:
      self._bar.set_postfix_str(format_metrics(metrics), refresh=False)
    if step > self.step:
      self._bar.update(step - self.step)
    self.step = max(self.step, step)

  def write(self, message: str) -> None:
    """Prints a line (e.g. eval results) above the bar without breaking it."""
    if self.enabled:
      self._bar.write(message, file=self._bar.fp)

  def close(self) -> None:
    self._bar.close()

  def __enter__(self) -> ProgressBar:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
