"""make_evaluators: the demo config, split caching, and config errors that name the field."""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections
import numpy as np
import pytest

from clip_jax.data import EvalSet
from clip_jax.evals import (EVALUATORS, RetrievalEvaluator, ZeroShotClassificationEvaluator,
                            make_evaluators)
from clip_jax.registry import ConfigError

DEMO_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "demo" / "emoji.py"


class FakeTokenizer:
  def encode(self, texts):
    return np.array([[len(t) + 1, 1] for t in texts], np.int32)


def fake_set(n=6):
  rng = np.random.default_rng(0)
  return EvalSet(
      images=rng.uniform(-1, 1, size=(n, 4, 4, 3)).astype(np.float32),
      texts=[f"emoji {i}" for i in range(n)],
      text_image=np.arange(n, dtype=np.int32),
      labels={"category": (np.arange(n, dtype=np.int32) % 3, ["Animals", "Food", "Flags"]),
              "subcategory": (np.zeros(n, np.int32), ["misc"])})


class CountingLoader:
  def __init__(self):
    self.calls = []

  def __call__(self, split):
    self.calls.append(split)
    return fake_set()


def config_with(**evals):
  return ml_collections.ConfigDict({"evals": evals})


def random_embed(modality, inputs):
  rng = np.random.default_rng(len(inputs))
  v = rng.normal(size=(len(inputs), 8)).astype(np.float32)
  return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_registered_names():
  assert {"retrieval", "zeroshot_classification"} <= set(EVALUATORS.names())


def test_demo_config_builds_and_loads_split_once():
  spec = importlib.util.spec_from_file_location("emoji_demo_config", DEMO_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  loader = CountingLoader()
  evaluators = make_evaluators(config, FakeTokenizer(), load_split=loader)
  assert list(evaluators) == list(config.evals.keys())
  assert isinstance(evaluators["heldout"], RetrievalEvaluator)
  assert isinstance(evaluators["heldout_categories"], ZeroShotClassificationEvaluator)
  assert loader.calls == ["heldout"]  # both evals share the split
  metrics = {}
  for ev in evaluators.values():
    metrics.update(ev(random_embed))
  assert metrics["heldout/num_images"] == 6 and metrics["heldout_categories/num_classes"] == 3
  assert all(isinstance(v, float) for v in metrics.values())
  assert all(0 <= v for k, v in metrics.items() if "/uniformity_" not in k)  # uniformity: a log
  assert all(v <= 0 for k, v in metrics.items() if "/uniformity_" in k)


def test_no_evals():
  assert make_evaluators(ml_collections.ConfigDict({"seed": 0}), FakeTokenizer(),
                         load_split=CountingLoader()) == {}


def test_default_loader_calls_load_eval_split(monkeypatch):
  import sys
  import types
  seen = []
  fake_data = types.ModuleType("clip_jax.data")

  def load_eval_split(data_config, split):
    seen.append((data_config.name, split))
    return fake_set()

  fake_data.load_eval_split = load_eval_split
  monkeypatch.setitem(sys.modules, "clip_jax.data", fake_data)
  config = config_with(r={"name": "retrieval", "split": "heldout"})
  config.data = ml_collections.ConfigDict({"name": "emoji"})
  make_evaluators(config, FakeTokenizer())
  assert seen == [("emoji", "heldout")]


@pytest.mark.parametrize("eval_cfg, pattern", [
    ({"name": "retreival", "split": "heldout"},
     r"config\.evals\.ev\.name = 'retreival'.*retrieval.*zeroshot_classification"),
    ({"split": "heldout"}, r"config\.evals\.ev\.name is missing.*retrieval"),
    ({"name": "zeroshot_classification", "split": "heldout", "label": "colour"},
     r"config\.evals\.ev\.label = 'colour'.*category, subcategory"),
    ({"name": "zeroshot_classification", "split": "heldout", "label": "category",
      "templates": "emojis"},
     r"config\.evals\.ev\.templates = 'emojis'.*emoji.*photo"),
    ({"name": "zeroshot_classification", "split": "heldout", "label": "category",
      "templates": ("no slot",)},
     r"config\.evals\.ev\.templates contains 'no slot'"),
    ({"name": "zeroshot_classification", "split": "heldout"},
     r"config\.evals\.ev\.label is required"),
    ({"name": "retrieval"}, r"config\.evals\.ev\.split is required"),
    ({"name": "retrieval", "split": "heldout", "image_modaltiy": "image"},
     r"config\.evals\.ev\.image_modaltiy is not a field.*image_modality.*text_modality"),
])
def test_config_errors_name_the_field(eval_cfg, pattern):
  with pytest.raises(ConfigError, match=pattern):
    make_evaluators(config_with(ev=eval_cfg), FakeTokenizer(), load_split=CountingLoader())


def test_template_error_raised_before_loading_data():
  loader = CountingLoader()
  with pytest.raises(ConfigError, match="templates"):
    make_evaluators(config_with(ev={"name": "zeroshot_classification", "split": "heldout",
                                    "label": "category", "templates": "nope"}),
                    FakeTokenizer(), load_split=loader)
  assert loader.calls == []
