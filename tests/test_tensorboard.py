"""The TensorBoard events that MetricsWriter writes next to metrics.jsonl."""

from __future__ import annotations

import os
import struct

import pytest
from tensorboardX.proto import event_pb2

from clip_jax.metrics import MetricsWriter, read_metrics


def read_events(directory):
  """[(file, event)] of every event file in `directory` (TFRecord framing: length, its CRC,
  data, its CRC), files in name order (they are named by creation time)."""
  out = []
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[pos + 12:pos + 12 + length])
      out.append((name, event))
      pos += 12 + length + 4
  return out


def scalars(events):
  return [(e.step, v.tag, v.simple_value) for _, e in events for v in e.summary.value]


def test_every_scalar_goes_to_tensorboard_and_a_resume_purges_later_points(tmp_path):
  with MetricsWriter(str(tmp_path)) as writer:
    for step in (1, 2, 3):
      writer.write(step, {"loss": 1.0 / step, "heldout/i2t_recall@5": 0.25 * step})
  events = read_events(tmp_path / "tensorboard")
  # TensorBoard tags allow [A-Za-z0-9_./-]: "@" becomes "_".
  assert scalars(events) == [(s, tag, pytest.approx(v)) for s in (1, 2, 3)
                             for tag, v in (("loss", 1.0 / s), ("heldout/i2t_recall_5", 0.25 * s))]

  with MetricsWriter(str(tmp_path), resume_step=2) as writer:  # a run resumed from step 2
    writer.write(3, {"loss": 0.5})
  assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2, 3]
  files = sorted({name for name, _ in read_events(tmp_path / "tensorboard")})
  assert len(files) == 2
  second = [e for name, e in read_events(tmp_path / "tensorboard") if name == files[1]]
  # TensorBoard drops the first file's points from step 3 on: a START session log at step 3.
  starts = [e.step for e in second if e.session_log.status == event_pb2.SessionLog.START]
  assert starts == [3]
  assert scalars([(files[1], e) for e in second]) == [(3, "loss", 0.5)]


def test_a_disabled_writer_writes_nothing(tmp_path):
  with MetricsWriter(str(tmp_path / "run"), enabled=False) as writer:
    writer.write(1, {"loss": 1.0})
  assert not (tmp_path / "run").exists()
