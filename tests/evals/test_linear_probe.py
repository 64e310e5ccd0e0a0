"""clip_jax.evals.linear_probe: the logistic-regression probe learns separable classes, picks C on
the held-out part as a plain scikit-learn sweep does, and counts an unseen class as wrong."""

from __future__ import annotations

import types

import ml_collections
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from clip_jax.evals import make_evaluators
from clip_jax.evals.linear_probe import class_scores, fit_logistic
from clip_jax.registry import ConfigError


def split(features, labels, names=("a", "b", "c")):
  """An eval split whose "images" are the feature vectors themselves ([n, d, 1, 1])."""
  return types.SimpleNamespace(images=np.asarray(features, np.float32)[:, :, None, None],
                               texts=[], text_image=np.zeros(0, np.int32),
                               labels={"kind": (np.asarray(labels), list(names))})


def embed(modality, inputs):
  assert modality == "image"
  return inputs[:, :, 0, 0]


def probe(splits, **fields):
  config = ml_collections.ConfigDict({"evals": {"lp": dict(
      name="linear_probe", test_split="heldout", label="kind", **fields)}})
  return make_evaluators(config, None, load_split=splits.__getitem__)["lp"]


def test_separable_classes_are_classified_perfectly():
  rng = np.random.default_rng(0)
  centres = np.eye(3, 6)
  train_y, test_y = rng.integers(0, 3, 90), np.array([0, 1, 2, 2, -1])  # -1: unlabelled
  train_x = centres[train_y] + 0.1 * rng.normal(size=(90, 6))
  test_x = centres[np.maximum(test_y, 0)] + 0.1 * rng.normal(size=(5, 6))
  metrics = probe({"train": split(train_x, train_y), "heldout": split(test_x, test_y)})(embed)
  assert metrics["lp/top1"] == 1.0 and metrics["lp/mean_per_class_recall"] == 1.0
  assert metrics["lp/num_test_images"] == 4.0 and metrics["lp/num_train_images"] == 90.0
  # Labels shuffled against the features: chance on new points, not 1.
  new_y = rng.integers(0, 3, 300)
  new_x = centres[new_y] + 0.1 * rng.normal(size=(300, 6))
  shuffled = probe({"train": split(train_x, rng.permutation(train_y)),
                    "heldout": split(new_x, new_y)})(embed)
  assert shuffled["lp/top1"] < 0.6


def test_c_is_picked_on_the_held_out_part_as_a_plain_sweep_picks_it():
  rng = np.random.default_rng(1)
  n, d = 120, 10
  y = rng.integers(0, 3, n)
  x = rng.normal(size=(n, d)) + 0.8 * np.eye(3, d)[y]  # overlapping classes: C matters
  x /= np.linalg.norm(x, axis=1, keepdims=True)  # unit-norm, as the probe sees embeddings
  c_values = (0.001, 0.01, 0.1, 1.0, 10.0)
  metrics = probe({"train": split(x, y), "heldout": split(x[:30], y[:30]),
                   "val": split(x[:40], y[:40])}, val_split="val", c_values=c_values)(embed)
  # The same selection written out with scikit-learn alone.
  val_acc = [LogisticRegression(C=c, max_iter=1000, tol=1e-6).fit(x, y).score(x[:40], y[:40])
             for c in c_values]
  assert metrics["lp/best_c"] == c_values[int(np.argmax(val_acc))]
  assert metrics["lp/val_top1"] == pytest.approx(max(val_acc))
  best = LogisticRegression(C=metrics["lp/best_c"], max_iter=1000, tol=1e-6).fit(x, y)
  assert metrics["lp/top1"] == pytest.approx(best.score(x[:30], y[:30]))


def test_a_class_missing_from_training_is_never_predicted():
  x = np.array([[1.0, 0.0], [1.1, 0.1], [0.0, 1.0], [0.1, 1.1]])
  y = np.array([0, 0, 2, 2])  # class 1 has no training image
  scores = class_scores(fit_logistic(x, y, 10.0, 100), x, num_classes=3)
  assert np.all(np.isneginf(scores[:, 1])) and np.argmax(scores, 1).tolist() == [0, 0, 2, 2]


def test_config_errors():
  splits = {"train": split(np.eye(3), [0, 1, 2]), "heldout": split(np.eye(3), [0, 1, 2])}
  with pytest.raises(ConfigError, match=r"evals\.lp\.c_values must be > 0.0"):
    probe(splits, c_values=(1.0, 0.0))
  with pytest.raises(ConfigError, match=r"evals\.lp\.label = 'kind' is not a label set of split "
                     "'val'"):
    probe({**splits, "val": types.SimpleNamespace(images=np.zeros((1, 3, 1, 1)), labels={})},
          val_split="val")
