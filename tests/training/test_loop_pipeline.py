"""The step loop's order (`clip_jax.training.loop._train`) with a fake trainer, data and outputs,
so nothing compiles: the next batch goes to the devices right after a step is dispatched, a
step's results are read only once the next step is dispatched (except at the steps that log,
evaluate or checkpoint), and a checkpoint saves the data position after its own step's batch
(not after the batch fetched ahead)."""

from __future__ import annotations

import types

import ml_collections

from clip_jax.metrics import ProgressBar
from clip_jax.training.loop import _Run, _train


class _Result:
  """A scalar result of step `step` on the devices: converting it to a Python number (what a
  device -> host read does) is recorded as ("read", step)."""

  def __init__(self, events: list, step: int, value: float):
    self.events, self.step, self.value = events, step, value

  def __float__(self) -> float:
    self.events.append(("read", self.step))
    return float(self.value)

  def __int__(self) -> int:
    self.events.append(("read", self.step))
    return int(self.value)


class _Trainer:
  """Records ("put", k) when host batch k goes to the devices and ("step", k) when step k is
  dispatched; the state is {"step": k, ...}."""

  def __init__(self, config: ml_collections.ConfigDict, events: list):
    self.config, self.events = config, events
    self.mesh = types.SimpleNamespace(size=8)
    self.embed = None

  def global_batch(self, local: dict) -> int:
    self.events.append(("put", local["index"]))
    return local["index"]

  def train_step(self, state: dict, batch: int) -> tuple[dict, dict]:
    step = state["step"] + 1
    assert batch == step, (batch, step)
    self.events.append(("step", step))
    return dict(state, step=step), {"bad_steps": _Result(self.events, step, 0),
                                    "loss": _Result(self.events, step, 1.0)}


class _Data:
  """Host batches {"index": 1, 2, ...}; its state is the number of batches drawn."""

  def __init__(self):
    self.drawn = 0
    self.source = types.SimpleNamespace(skipped={})

  def __next__(self) -> dict:
    self.drawn += 1
    return {"index": self.drawn}

  def get_state(self) -> dict:
    return {"drawn": self.drawn}


class _Outputs:
  """The checkpointer and the metrics writer: records ("save", step, data state) and
  ("write", step)."""

  def __init__(self, events: list):
    self.events, self.directory = events, "ckpt"

  def save(self, step: int, state: dict, data_state: dict, force: bool, wait: bool) -> bool:
    self.events.append(("save", step, data_state["drawn"]))
    return True

  def latest_step(self) -> int:
    return 0

  def write(self, step: int, values: dict) -> None:
    self.events.append(("write", step))

  def sync(self) -> None:
    pass


def test_the_loop_overlaps_the_next_batch_and_reads_results_one_step_late():
  config = ml_collections.ConfigDict(dict(
      total_steps=7, batch_size=4, log_every_steps=3, eval_every_steps=100, ckpt_every_steps=2,
      max_bad_steps=5))
  events = []
  outputs = _Outputs(events)
  run = _Run(_Trainer(config, events), outputs, _Data(), {}, outputs,
             ProgressBar(config.total_steps, enabled=False), 0)
  step, _ = _train(run, {"step": 0, "params": {"model": None}}, 0)
  assert step == 7
  dispatched = {e[1]: i for i, e in enumerate(events) if e[0] == "step"}
  for k, i in dispatched.items():
    if k < 7:  # batch k + 1 is sent as soon as step k is dispatched, before any read
      assert events[i + 1] == ("put", k + 1), (k, events)
    reads = [j for j, e in enumerate(events) if e == ("read", k)]
    waits = k in (2, 3, 4, 6, 7)  # it logs (3, 6, 7: the last) or checkpoints (2, 4, 6, 7)
    assert reads and (waits or min(reads) > dispatched[k + 1]), (k, events)
  # Each checkpoint saves the data position after its own step's batch.
  assert [e for e in events if e[0] == "save"] == [("save", k, k) for k in (2, 4, 6, 7)]
  assert [e[1] for e in events if e[0] == "write"] == [3, 6, 7, 7]  # training lines, the eval
