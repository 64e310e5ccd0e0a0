"""metrics.jsonl writer and progress bar formatting."""

from __future__ import annotations

import io
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from clip_jax import metrics as metrics_lib
from clip_jax.metrics import MetricsWriter, ProgressBar, format_metrics, read_metrics


def test_write_read_round_trip(tmp_path):
  workdir = tmp_path / "run"
  with MetricsWriter(str(workdir)) as w:
    w.write(1, {"loss": 0.5, "learning_rate": np.float32(1e-3), "scale": jnp.asarray(2.5),
                "count": np.int64(7), "one_elem": np.array([3.0])})
    w.write(2, {"loss": float("nan")})
    w.write(2, {"heldout/i2t_recall@1": 0.25})
  records = read_metrics(str(workdir / "metrics.jsonl"))
  assert records[0] == {"step": 1, "loss": 0.5, "learning_rate": pytest.approx(1e-3),
                        "scale": 2.5, "count": 7.0, "one_elem": 3.0}
  assert all(isinstance(v, float) for k, v in records[0].items() if k != "step")
  assert records[1]["step"] == 2 and math.isnan(records[1]["loss"])
  assert records[2] == {"step": 2, "heldout/i2t_recall@1": 0.25}
  # A workdir path reads the same file.
  assert [r["step"] for r in read_metrics(str(workdir))] == [1, 2, 2]
  # Each line is standalone JSON with the step first.
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 3 and all(line.startswith('{"step": ') for line in lines)


def test_each_write_is_flushed(tmp_path):
  w = MetricsWriter(str(tmp_path))
  w.write(5, {"loss": 1.0})
  # Visible to a reader before close (a crash would not lose it).
  assert read_metrics(str(tmp_path)) == [{"step": 5, "loss": 1.0}]
  w.close()


def test_bad_values_raise(tmp_path):
  with MetricsWriter(str(tmp_path)) as w:
    with pytest.raises(TypeError, match="'vec'"):
      w.write(1, {"vec": np.ones(3)})
    with pytest.raises(TypeError, match="'name'"):
      w.write(1, {"name": "text"})
    with pytest.raises(ValueError, match="step"):
      w.write(1, {"step": 3})


def _write_steps(workdir, steps):
  with MetricsWriter(str(workdir)) as w:
    for s in steps:
      w.write(s, {"loss": 1.0 / s})
      if s % 20 == 0:
        w.write(s, {"heldout/top1": s / 100})


def test_resume_truncates_later_steps(tmp_path):
  _write_steps(tmp_path, range(10, 101, 10))
  with MetricsWriter(str(tmp_path), resume_step=40) as w:
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [10, 20, 20, 30, 40, 40]
    for s in (50, 60):
      w.write(s, {"loss": 0.0})
  steps = [r["step"] for r in read_metrics(str(tmp_path))]
  assert steps == [10, 20, 20, 30, 40, 40, 50, 60]
  assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "tensorboard"]  # no temp file left


def test_resume_none_appends(tmp_path):
  _write_steps(tmp_path, [10, 20])
  with MetricsWriter(str(tmp_path)) as w:
    w.write(30, {"loss": 3.0})
  assert [r["step"] for r in read_metrics(str(tmp_path))] == [10, 20, 20, 30]


def test_resume_rewrite_is_atomic(tmp_path, monkeypatch):
  _write_steps(tmp_path, range(10, 61, 10))
  before = (tmp_path / "metrics.jsonl").read_bytes()

  def failing_replace(src, dst):
    raise OSError("simulated crash before the rename")

  monkeypatch.setattr(metrics_lib.os, "replace", failing_replace)
  with pytest.raises(OSError, match="simulated"):
    MetricsWriter(str(tmp_path), resume_step=20)
  # The old file is untouched and the temporary file is gone.
  assert (tmp_path / "metrics.jsonl").read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "tensorboard"]


def test_torn_last_line_is_dropped(tmp_path):
  _write_steps(tmp_path, [10, 20])
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 30, "lo')  # a write cut off by a crash
  assert [r["step"] for r in read_metrics(str(tmp_path))] == [10, 20, 20]
  with MetricsWriter(str(tmp_path)) as w:
    w.write(30, {"loss": 3.0})
  assert [r["step"] for r in read_metrics(str(tmp_path))] == [10, 20, 20, 30]


def test_corrupt_middle_line_raises(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
  with pytest.raises(ValueError, match=":2: not a JSON line"):
    read_metrics(str(tmp_path))


def test_disabled_writes_nothing(tmp_path):
  workdir = tmp_path / "not_created"
  with MetricsWriter(str(workdir), enabled=False) as w:
    w.write(1, {"loss": 1.0})
  assert not workdir.exists()
  # Disabled with resume_step leaves an existing file alone.
  _write_steps(tmp_path, [10, 20, 30])
  before = (tmp_path / "metrics.jsonl").read_bytes()
  with MetricsWriter(str(tmp_path), resume_step=10, enabled=False) as w:
    w.write(11, {"loss": 1.0})
  assert (tmp_path / "metrics.jsonl").read_bytes() == before


def test_format_metrics_is_compact():
  text = format_metrics({"train/loss": np.float32(0.693147), "learning_rate": 0.00125,
                         "examples_per_sec": 12345.6, "grad_norm": jnp.asarray(1.5)})
  assert text == "loss=0.6931 lr=1.25e-03 ex/s=12.3k gnorm=1.5"
  assert format_metrics({"loss": float("nan")}) == "loss=nan"
  # The loss, rate, throughput and MFU come first, whatever the order of the step's metrics.
  text = format_metrics({"bad_steps": 0, "bias": -10.0, "grad_norm": 1.5, "learning_rate": 1e-3,
                         "loss": 0.5, "scale": 10.0, "examples_per_sec": 900.0, "mfu": 0.4123})
  assert text == "loss=0.5 lr=1.00e-03 ex/s=900 mfu=41.2% bad_steps=0 bias=-10"


def test_progress_bar_updates_and_disables():
  out = io.StringIO()
  bar = ProgressBar(total_steps=100, initial_step=10, file=out)
  bar.update(50, {"loss": 0.25})
  bar.update(50)  # no movement, no error
  bar.write("eval: top1=0.5")
  bar.close()
  text = out.getvalue()
  assert "50/100" in text and "loss=0.25" in text and "eval: top1=0.5" in text
  out = io.StringIO()
  bar = ProgressBar(total_steps=100, enabled=False, file=out)
  bar.update(10, {"loss": 1.0})
  bar.write("hidden")
  bar.close()
  assert out.getvalue() == ""
