"""Few-shot linear probes: closed-form ridge regression on frozen image embeddings.

For K shots, K labelled images of each class are drawn from a training split, a linear map from
their embeddings to the class targets is fitted in closed form, and the images of a test split
are classified by its largest output (the few-shot evaluation of Zhai et al. 2022, "Scaling
Vision Transformers", and of big_vision; the CLIP paper's full logistic-regression probe is a
different, iterative protocol).

With the n drawn embeddings X [n, d] (centred: X~ = X - mu, mu their mean), targets
Y = 2 * onehot(label) - 1 [n, C] and the ridge penalty lambda:

  W = (X~^T X~ + lambda I)^-1 X~^T Y,   b = mean(Y) - mu W,   predict argmax_c (x W + b)_c.

A class with fewer than K training images contributes all it has; a class with none can never be
predicted, so its test images count as errors. Each K is drawn `seeds` times (seeded, the same
draws on every call) and the accuracies are averaged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from clip_jax import schema
from clip_jax.evals.base import EmbedFn, ProbeEvaluator, ProbeFields
from clip_jax.evals.registry import EVALUATORS
from clip_jax.registry import ConfigError


def _shots(value: Any, path: str) -> tuple[int, ...]:
  """A tuple of distinct positive shot counts (a single int is a tuple of one)."""
  shots = (value,) if isinstance(value, int) else tuple(value)
  for k in shots:
    schema.integer(low=1)(k, path)
  if not shots or len(set(shots)) != len(shots):
    raise ConfigError(f"{path} must be distinct positive shot counts, e.g. (1, 5, 10, 25); "
                      f"got {value!r}")
  return shots


def ridge_fit(features: np.ndarray, targets: np.ndarray,
              l2_reg: float) -> tuple[np.ndarray, np.ndarray]:
  """(W [d, C], b [C]) of ridge regression with an unpenalised bias (module docstring), float64.

  Args:
    features: [n, d]; targets: [n, C]; l2_reg: lambda >= 0 (> 0 when n <= d).
  """
  x = np.asarray(features, np.float64)
  y = np.asarray(targets, np.float64)
  mu = x.mean(axis=0)
  xc = x - mu
  w = np.linalg.solve(xc.T @ xc + l2_reg * np.eye(x.shape[1]), xc.T @ y)
  return w, y.mean(axis=0) - mu @ w


def fewshot_accuracy(train_emb: np.ndarray, train_labels: np.ndarray, test_emb: np.ndarray,
                     test_labels: np.ndarray, num_classes: int, shots: int, l2_reg: float,
                     rng: np.random.Generator) -> float:
  """Test accuracy of the ridge probe fitted on `shots` images per class drawn with `rng`.

  Args:
    train_emb: [N, d] and train_labels int [N] in [0, num_classes): the pool to draw from.
    test_emb: [M, d] and test_labels int [M].
  """
  picks = []
  for c in range(num_classes):
    members = np.flatnonzero(train_labels == c)
    picks.append(rng.permutation(members)[:shots])
  chosen = np.concatenate(picks)
  targets = 2.0 * np.eye(num_classes)[train_labels[chosen]] - 1.0
  w, b = ridge_fit(train_emb[chosen], targets, l2_reg)
  predicted = np.argmax(np.asarray(test_emb, np.float64) @ w + b, axis=1)
  return float(np.mean(predicted == test_labels))


@dataclasses.dataclass(frozen=True, kw_only=True)
class FewShotFields(ProbeFields):
  """The fields of "fewshot_linear" (`config.evals.<eval_name>`): `ProbeFields` and

  Attributes:
    shots: the K values, e.g. (1, 5, 10, 25).
    l2_reg: the ridge penalty lambda (>= 0).
    seeds: draws per K, averaged (>= 1).
  """

  shots: Any = schema.field((1, 5, 10, 25), _shots)
  l2_reg: float = schema.field(1.0, schema.number(low=0.0))
  seeds: int = schema.field(3, schema.integer(low=1))


@EVALUATORS.register("fewshot_linear")
class FewShotLinearEvaluator(ProbeEvaluator):
  """Few-shot ridge probes on frozen image embeddings (module docstring).

  Config fields: name ("fewshot_linear") and `FewShotFields`.

  Metrics: `<eval_name>/<K>shot_top1` for each K (averaged over `seeds` draws),
  `<eval_name>/num_classes`, `<eval_name>/num_train_images`, `<eval_name>/num_test_images`.

  Raises:
    ConfigError: a label set that a split lacks, or splits whose class names differ.
  """

  Fields = FewShotFields

  def __call__(self, embed: EmbedFn) -> dict[str, float]:
    f = self.fields
    train_emb, test_emb = self.embed_splits(embed)
    out = {}
    for k in f.shots:
      accuracies = [fewshot_accuracy(train_emb, self.train_labels, test_emb, self.test_labels,
                                     self.num_classes, k, f.l2_reg,
                                     np.random.default_rng([seed, k]))
                    for seed in range(f.seeds)]
      out[f"{self.eval_name}/{k}shot_top1"] = float(np.mean(accuracies))
    return {**out, **self.counts()}
