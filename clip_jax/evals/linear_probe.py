"""The CLIP paper's linear probe: L2-regularised logistic regression on frozen image embeddings.

Radford et al. 2021 ("Learning Transferable Visual Models From Natural Language Supervision",
appendix A.3) fit scikit-learn's L-BFGS logistic regression on the image features of a dataset's
training split and pick the regularisation on a validation split. Here: the labelled training
images are embedded, a validation part is held out (`val_split`, or a seeded `val_fraction` of the
training images), every inverse regularisation strength C in `c_values` (C = 1 / lambda) is
fitted on the rest and scored on the validation part, the best C (the smallest on ties: the
strongest regularisation) is refitted on all training images, and the test split is classified:

  minimise_W,b  sum_i -log softmax(x_i W + b)_{y_i} + ||W||^2 / (2 C)

The CLIP paper sweeps lambda from 1e-6 to 1e6 in 96 log-spaced steps with a search; a short
log-spaced list of C is the default here (the embeddings are unit-norm, so useful C are large).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from clip_jax import schema
from clip_jax.evals.base import (EmbedFn, ProbeEvaluator, ProbeFields, embed_checked,
                                 labelled_images)
from clip_jax.evals.registry import EVALUATORS
from clip_jax.evals.zeroshot import rank_metrics
from clip_jax.registry import ConfigError

DEFAULT_C_VALUES = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


def _c_values(value: Any, path: str) -> tuple[float, ...]:
  values = (value,) if isinstance(value, (int, float)) else tuple(value)
  for c in values:
    schema.number(low=0.0, low_open=True)(c, path)
  if not values:
    raise ConfigError(f"{path} must list at least one inverse regularisation strength C > 0")
  return tuple(sorted(float(c) for c in values))


def fit_logistic(features: np.ndarray, labels: np.ndarray, c: float, max_iter: int) -> Any:
  """scikit-learn's multinomial L-BFGS logistic regression with inverse L2 strength `c`."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  model = LogisticRegression(C=c, max_iter=max_iter, tol=1e-6)
  return model.fit(np.asarray(features, np.float64), labels)


def class_scores(model: Any, features: np.ndarray, num_classes: int) -> np.ndarray:
  """float64 [n, num_classes] decision scores; a class absent from the fit scores -inf."""
  scores = np.full((len(features), num_classes), -np.inf)
  raw = model.decision_function(np.asarray(features, np.float64))
  if raw.ndim == 1:  # two classes seen: one score for classes_[1]
    raw = np.stack([-raw, raw], axis=1)
  scores[:, model.classes_] = raw
  return scores


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinearProbeFields(ProbeFields):
  """The fields of "linear_probe" (`config.evals.<eval_name>`): `ProbeFields` and

  Attributes:
    val_split: a split to pick C on ("" = hold out `val_fraction` of the training images).
    val_fraction: the share of the training images held out to pick C, in (0, 1).
    c_values: the inverse regularisation strengths C tried.
    max_iter: L-BFGS iterations per fit.
    seed: the seed of the held-out draw.
  """

  val_split: str = ""
  val_fraction: float = schema.field(0.2, schema.number(0.0, 1.0, low_open=True, high_open=True))
  c_values: Any = schema.field(DEFAULT_C_VALUES, _c_values)
  max_iter: int = schema.field(1000, schema.integer(low=1))
  seed: int = 0


@EVALUATORS.register("linear_probe")
class LinearProbeEvaluator(ProbeEvaluator):
  """The CLIP paper's logistic-regression probe (module docstring).

  Config fields: name ("linear_probe") and `LinearProbeFields`.

  Metrics: `<eval_name>/top1`, `top5` (capped at the number of classes),
  `mean_per_class_recall`, `best_c`, `val_top1` (at the best C), and the counts
  (`num_classes`, `num_train_images`, `num_test_images`).
  """

  Fields = LinearProbeFields

  def __init__(self, cfg: Any, *, eval_name: str, tokenizer: Any, load_split: Any):
    super().__init__(cfg, eval_name=eval_name, tokenizer=tokenizer, load_split=load_split)
    self.val_images = None
    if self.fields.val_split:
      split = self.fields.val_split
      self.val_images, self.val_labels, _ = labelled_images(
          load_split(split), self.fields.label, split, self.field_path("label"))

  def _validation(self, embed: EmbedFn, train_emb: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fit features, fit labels, validation features, validation labels)."""
    f = self.fields
    if self.val_images is not None:
      val_emb = embed_checked(embed, f.image_modality, self.val_images, "images")
      return train_emb, self.train_labels, val_emb, self.val_labels
    order = np.random.default_rng(f.seed).permutation(len(train_emb))
    cut = max(1, int(round(f.val_fraction * len(order))))
    val, fit = order[:cut], order[cut:]
    return train_emb[fit], self.train_labels[fit], train_emb[val], self.train_labels[val]

  def __call__(self, embed: EmbedFn) -> dict[str, float]:
    f = self.fields
    train_emb, test_emb = self.embed_splits(embed)
    fit_x, fit_y, val_x, val_y = self._validation(embed, train_emb)
    val_top1 = []
    for c in f.c_values:
      model = fit_logistic(fit_x, fit_y, c, f.max_iter)
      val_top1.append(float(np.mean(np.argmax(class_scores(model, val_x, self.num_classes), 1)
                                    == val_y)))
    best = int(np.argmax(val_top1))  # the first maximum: the smallest C
    # Refit at the best C on every training image (the held-out part included).
    model = fit_logistic(train_emb, self.train_labels, f.c_values[best], f.max_iter)
    scores = class_scores(model, test_emb, self.num_classes)
    own = scores[np.arange(len(scores)), self.test_labels]
    ranks = np.sum(scores >= own[:, None], axis=1) - 1  # ties count against the probe
    metrics = rank_metrics(ranks, self.test_labels, self.num_classes)
    out = {f"{self.eval_name}/{k}": v for k, v in metrics.items()}
    out[f"{self.eval_name}/best_c"] = f.c_values[best]
    out[f"{self.eval_name}/val_top1"] = val_top1[best]
    return {**out, **self.counts()}
