"""clip_jax.evals.fewshot: the ridge probe against numpy's least squares, and the evaluator."""

from __future__ import annotations

import types

import ml_collections
import numpy as np
import pytest

from clip_jax.evals import fewshot, make_evaluators
from clip_jax.evals.fewshot import fewshot_accuracy, ridge_fit
from clip_jax.registry import ConfigError


def test_ridge_fit_equals_augmented_least_squares():
  rng = np.random.default_rng(0)
  x, y, lam = rng.normal(size=(12, 5)), rng.normal(size=(12, 3)), 0.7
  w, b = ridge_fit(x, y, lam)
  # min ||x w + 1 b - y||^2 + lam ||w||^2 (bias unpenalised) as one least-squares problem.
  a = np.block([[x, np.ones((12, 1))], [np.sqrt(lam) * np.eye(5), np.zeros((5, 1))]])
  sol = np.linalg.lstsq(a, np.vstack([y, np.zeros((5, 3))]), rcond=None)[0]
  np.testing.assert_allclose(w, sol[:5], rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(b, sol[5], rtol=1e-10, atol=1e-12)


def clusters(rng, labels, num_classes, d=8, noise=0.05):
  centres = np.eye(num_classes, d)
  x = centres[labels] + noise * rng.normal(size=(len(labels), d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_separable_classes_are_learnt_from_few_shots():
  rng = np.random.default_rng(1)
  train_labels, test_labels = rng.integers(0, 4, 200), rng.integers(0, 4, 100)
  train, test = clusters(rng, train_labels, 4), clusters(rng, test_labels, 4)
  assert fewshot_accuracy(train, train_labels, test, test_labels, 4, 1, 1e-3,
                          np.random.default_rng(0)) == 1.0
  # Labels shuffled against the embeddings: chance, not 1.
  shuffled = fewshot_accuracy(train, rng.permutation(train_labels), test, test_labels, 4, 25,
                              1.0, np.random.default_rng(0))
  assert shuffled < 0.6


def test_each_class_gives_k_shots_or_all_it_has(monkeypatch):
  rng = np.random.default_rng(3)
  labels = np.array([0] * 9 + [1] * 2 + [2] * 7)  # class 1 has only 2 images
  emb = clusters(rng, labels, 3)
  fitted = []

  def recording_fit(x, y, l2_reg):
    fitted.append(np.argmax(y, axis=1))
    return ridge_fit(x, y, l2_reg)

  monkeypatch.setattr(fewshot, "ridge_fit", recording_fit)
  fewshot_accuracy(emb, labels, emb, labels, 3, 5, 1.0, np.random.default_rng(0))
  assert np.bincount(fitted[0], minlength=3).tolist() == [5, 2, 5]


def split(images, labels, names):
  return types.SimpleNamespace(images=images, texts=[], text_image=np.zeros(0, np.int32),
                               labels={"kind": (labels, names)})


def test_evaluator_from_config():
  rng = np.random.default_rng(2)
  train_labels = np.repeat(np.arange(3), 10)
  test_labels = np.array([0, 1, 2, -1, 2])  # -1: an unlabelled image, left out
  splits = {"train": split(train_labels.astype(np.float32)[:, None], train_labels, ["a", "b", "c"]),
            "heldout": split(test_labels.astype(np.float32)[:, None], test_labels, ["a", "b", "c"])}
  centres = clusters(rng, np.arange(3), 3)

  def embed(modality, inputs):
    assert modality == "image"
    return centres[inputs[:, 0].astype(int)]

  config = ml_collections.ConfigDict({"evals": {"probe": dict(
      name="fewshot_linear", test_split="heldout", label="kind", shots=(1, 5), seeds=2)}})
  metrics = make_evaluators(config, None, load_split=splits.__getitem__)["probe"](embed)
  assert metrics == {"probe/1shot_top1": 1.0, "probe/5shot_top1": 1.0, "probe/num_classes": 3.0,
                     "probe/num_train_images": 30.0, "probe/num_test_images": 4.0}
  bad = ml_collections.ConfigDict({"evals": {"probe": dict(
      name="fewshot_linear", test_split="heldout", label="colour")}})
  with pytest.raises(ConfigError, match=r"config\.evals\.probe\.label = 'colour' .*kind"):
    make_evaluators(bad, None, load_split=splits.__getitem__)
  bad.evals.probe.update(label="kind", shots=(5, 5))
  with pytest.raises(ConfigError, match=r"config\.evals\.probe\.shots must be distinct"):
    make_evaluators(bad, None, load_split=splits.__getitem__)
