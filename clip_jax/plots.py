"""PNG plots of a run's metrics.jsonl: training loss and learning rate, and each eval's metrics,
against step (`plot_metrics`); a mini paper table's runs side by side (`plot_table`, for
`clip_jax.tables`). Paths may be local or on object storage, through `clip_jax.fs`.
"""

from __future__ import annotations

import io
import math
from typing import Any, Mapping, Sequence

import numpy as np

from clip_jax import fs
from clip_jax.metrics import read_metrics

_LOSS_KEYS = ("loss", "train/loss", "train_loss")
_LR_KEYS = ("learning_rate", "train/learning_rate", "lr", "train/lr")
_TRAIN_PREFIXES = ("train",)


def _series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
  pts = [(r["step"], r[key]) for r in records if key in r]
  pts.sort(key=lambda p: p[0])
  steps = np.array([p[0] for p in pts], np.float64)
  values = np.array([p[1] for p in pts], np.float64)
  return steps, values


def _eval_groups(records: list[dict[str, Any]],
                 train_keys: set[str] | frozenset[str] = frozenset()) -> dict[str, list[str]]:
  """{eval_name: [metric keys]} for keys "<eval_name>/<metric>".

  Keys that occur on training lines (`train_keys`, e.g. a composite loss's "loss/<term>"), a
  "train/" prefix, and counts ("num_*") are left out.
  """
  groups: dict[str, list[str]] = {}
  for r in records:
    for key in r:
      if "/" not in key or key in train_keys or key in _LOSS_KEYS or key in _LR_KEYS:
        continue
      group, metric = key.split("/", 1)
      if group in _TRAIN_PREFIXES or metric.startswith("num_"):
        continue
      keys = groups.setdefault(group, [])
      if key not in keys:
        keys.append(key)
  return groups


def _panels(records: list[dict[str, Any]]
            ) -> tuple[str | None, list[str], str | None, dict[str, list[str]]]:
  """What to draw: (loss key, per-term loss keys, learning-rate key, eval groups)."""
  loss_key = next((k for k in _LOSS_KEYS if any(k in r for r in records)), None)
  lr_key = next((k for k in _LR_KEYS if any(k in r for r in records)), None)
  # Training lines carry the loss or the learning rate; eval lines are written separately.
  train_keys = {k for r in records if (loss_key in r or lr_key in r) for k in r}
  groups = _eval_groups(records, train_keys)
  # Per-term losses of a composite objective ("loss/<term>") share the loss panel.
  term_keys = sorted(k for k in train_keys if loss_key and k.startswith("loss/"))
  return loss_key, term_keys, lr_key, groups


def plot_metrics(metrics_path: str, out_path: str) -> str:
  """Plots a metrics.jsonl file to a PNG.

  Panels: training loss vs step (with a composite objective's "loss/<term>" curves); learning
  rate vs step (a short panel, if logged); one panel per eval name with each of its metrics
  ("<eval_name>/<metric>" on lines without the training loss; counts like num_images left out)
  vs step. Works with training lines only, eval lines only, or a single point (drawn as a marker).

  Args:
    metrics_path: a metrics.jsonl file or a workdir containing one (local or object storage).
    out_path: the PNG to write (with `fs.write_atomic`: locally a temporary file, then renamed).

  Returns:
    out_path.
  """
  # The object-oriented API with an Agg canvas: no pyplot, no global backend switch.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  records = read_metrics(metrics_path)
  loss_key, term_keys, lr_key, groups = _panels(records)

  ncols = min(3, max(1, len(groups)))
  eval_rows = math.ceil(len(groups) / ncols)
  heights = [3.0] + ([1.4] if lr_key else []) + [3.0] * eval_rows
  fig = Figure(figsize=(5.0 * ncols if groups else 7.0, sum(heights) + 0.8))
  FigureCanvasAgg(fig)
  grid = fig.add_gridspec(len(heights), ncols, height_ratios=heights)

  def style(ax, n_points):
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("step")
    return dict(marker="o" if n_points <= 20 else None, markersize=3, linewidth=1.2)

  ax = fig.add_subplot(grid[0, :])
  if loss_key:
    for j, key in enumerate([loss_key] + term_keys):
      steps, values = _series(records, key)
      ax.plot(steps, values, color=f"C{(2 * j) % 10}", label=key, **style(ax, len(steps)))
    ax.set_ylabel("loss")
    ax.set_title(f"training {loss_key}")
    if term_keys:
      ax.legend(fontsize="small", loc="best")
  else:
    ax.set_axis_off()
    ax.text(0.5, 0.5, "no training loss logged" if records else f"no metrics in {metrics_path}",
            ha="center", va="center", transform=ax.transAxes)
  row = 1
  if lr_key:
    ax = fig.add_subplot(grid[row, :])
    steps, values = _series(records, lr_key)
    ax.plot(steps, values, color="C1", **style(ax, len(steps)))
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    row += 1
  for i, (group, keys) in enumerate(sorted(groups.items())):
    ax = fig.add_subplot(grid[row + i // ncols, i % ncols])
    for j, key in enumerate(keys):
      steps, values = _series(records, key)
      ax.plot(steps, values, label=key.split("/", 1)[1], color=f"C{j % 10}",
              **style(ax, len(steps)))
    ax.set_title(f"eval: {group}")
    ax.legend(fontsize="small", loc="best")
  return _save(fig, out_path)


def _save(fig: Any, out_path: str) -> str:
  """Lays out `fig` and writes it as a PNG to `out_path` (`fs.write_atomic`); returns out_path."""
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=100)
  fs.makedirs(fs.dirname(fs.resolve(out_path)))
  fs.write_atomic(out_path, png.getvalue())
  return out_path


def plot_table(rows: Sequence[tuple[str, str, float | None, Mapping[str, float]]],
               columns: Sequence[tuple[str, str]], out_path: str, *, title: str = "",
               x_label: str = "") -> str:
  """Plots a mini paper table (`clip_jax.tables`) to a PNG.

  When every row has an x value: one panel per column, one line per series over x (log-scale
  x, the x values as ticks). Otherwise one panel of grouped bars: a group per column, a bar per
  row.

  Args:
    rows: (label, series, x or None, {metric key: value}) per run, in table order.
    columns: (metric key, header) of the values to draw; a row lacking a key draws no point.
    out_path: the PNG to write (local or object storage, written atomically).
    title: the figure's title.
    x_label: the x axis's name (plots over x).

  Returns:
    out_path.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  over_x = bool(rows) and all(x is not None for _, _, x, _ in rows)
  if over_x:
    ncols = min(4, max(1, len(columns)))
    nrows = math.ceil(len(columns) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.2 * nrows + 0.6))
    FigureCanvasAgg(fig)
    series = list(dict.fromkeys(s for _, s, _, _ in rows))
    xs = sorted({x for _, _, x, _ in rows})
    for i, (key, header) in enumerate(columns):
      ax = fig.add_subplot(nrows, ncols, i + 1)
      for j, name in enumerate(series):
        pts = sorted((x, m[key]) for _, s, x, m in rows if s == name and key in m)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=4,
                color=f"C{j % 10}", label=name)
      ax.set_xscale("log", base=2)
      ax.set_xticks(xs, [f"{x:g}" for x in xs])
      ax.set_xlabel(x_label)
      ax.set_title(header, fontsize="medium")
      ax.grid(True, alpha=0.3)
      ax.legend(fontsize="small", loc="best")
  else:
    fig = Figure(figsize=(max(6.0, 1.2 * len(columns) * max(1, len(rows)) / 2 + 2), 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(rows))
    for j, (label, _, _, m) in enumerate(rows):
      positions = [i + (j - (len(rows) - 1) / 2) * width for i in range(len(columns))]
      ax.bar(positions, [m.get(key, np.nan) for key, _ in columns], width, label=label,
             color=f"C{j % 10}")
    ax.set_xticks(range(len(columns)), [h for _, h in columns], fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="best")
  if title:
    fig.suptitle(title)
  return _save(fig, out_path)
