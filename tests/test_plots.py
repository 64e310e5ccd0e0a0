"""PNG plots of metrics.jsonl."""

import json
import math
import os

import pytest

from clip_jax import plots
from clip_jax.metrics import MetricsWriter, read_metrics
from clip_jax.plots import plot_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path):
  data = open(path, "rb").read()
  assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_plot_metrics_full(tmp_path):
  with MetricsWriter(str(tmp_path)) as w:
    for s in range(0, 101, 5):
      loss = 2.0 * math.exp(-s / 50)
      # A composite objective's training keys contain "/" too; they are not an eval.
      w.write(s, {"loss": loss, "loss/sigmoid": loss / 2, "sigmoid/scale": 10.0,
                  "learning_rate": 1e-3 * min(1, s / 20)})
      if s % 50 == 0:
        w.write(s, {"heldout/i2t_recall@1": s / 200, "heldout/t2i_recall@1": s / 250,
                    "heldout/num_images": 100.0, "cats/top1": s / 120, "cats/top5": s / 100})
  out = plot_metrics(str(tmp_path / "metrics.jsonl"), str(tmp_path / "plots" / "metrics.png"))
  assert out == str(tmp_path / "plots" / "metrics.png")
  _check_png(out)
  loss_key, term_keys, lr_key, groups = plots._panels(read_metrics(str(tmp_path)))
  assert (loss_key, term_keys, lr_key) == ("loss", ["loss/sigmoid"], "learning_rate")
  assert groups == {"heldout": ["heldout/i2t_recall@1", "heldout/t2i_recall@1"],
                    "cats": ["cats/top1", "cats/top5"]}


@pytest.mark.parametrize("lines", [
    [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9}],  # training only, no lr
    [{"step": 10, "heldout/top1": 0.5}],  # a single eval point, no training lines
    [],  # empty file
])
def test_plot_metrics_partial_files(tmp_path, lines):
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in lines))
  _check_png(plot_metrics(str(path), str(tmp_path / "out.png")))
  assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "out.png"]


@pytest.mark.parametrize("over_x", [True, False], ids=["lines over x", "bars"])
def test_plot_table(tmp_path, over_x):
  rows = [(f"{s}, {x}", s, x if over_x else None, {"r@1": x / 1000, "gap": 0.5})
          for s in ("sigmoid", "softmax") for x in (32, 256, 1024)]
  rows[0] = rows[0][:3] + ({"gap": 0.4},)  # a missing metric draws no point
  out = plots.plot_table(rows, [("r@1", "R@1"), ("gap", "modality gap")],
                         str(tmp_path / "t" / "table.png"), title="T", x_label="batch size")
  _check_png(out)
