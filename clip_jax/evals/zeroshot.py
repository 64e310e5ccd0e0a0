"""Zero-shot classification with a prompt ensemble.

Each class c gets one text embedding: every template of the ensemble is filled with the lowercased
class name, the prompts are embedded, and the class embedding is the re-normalised mean of the
unit-norm prompt embeddings,

  w_c = normalise( (1/T) * sum_t normalise(f_text(template_t.format(name_c))) ).

An image is classified by the largest cosine similarity <f_image(x), w_c>. Top-K accuracy counts an
image as correct if its true class is among the K best classes, with ties counted against the model
(the true class's rank is the number of OTHER classes scoring >= it; correct iff rank < K), and K
capped at the number of classes. NaN scores count as -inf. Images whose label is negative are
treated as unlabelled and skipped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from clip_jax import schema
from clip_jax.evals import pictures, prompt_sets
from clip_jax.evals.base import (EmbedFn, Evaluator, LoadSplitFn, SplitFields, Tokenizer,
                                embed_checked)
from clip_jax.evals.registry import EVALUATORS
from clip_jax.evals.retrieval import row_blocks
from clip_jax.evals.templates import get_templates
from clip_jax.registry import ConfigError

DEFAULT_KS: tuple[int, ...] = (1, 5)
MAX_CONFUSION_CLASSES = 100  # larger label sets get no confusion-matrix picture


def build_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
  """Fills every template with every lowercased class name.

  Returns:
    C * T prompts, class-major: prompt [c * T + t] = templates[t].format(classnames[c].lower()).
  """
  return [t.format(name.lower()) for name in classnames for t in templates]


def ensemble_class_embeddings(prompt_emb: np.ndarray, num_templates: int) -> np.ndarray:
  """Averages prompt embeddings over the template ensemble.

  Args:
    prompt_emb: float [C * T, d], class-major (as `build_prompts` orders them).
    num_templates: T.

  Returns:
    float32 [C, d]: per class, the re-normalised mean of the L2-normalised prompt embeddings.
  """
  prompt_emb = np.asarray(prompt_emb, np.float32)
  if prompt_emb.ndim != 2 or len(prompt_emb) % num_templates:
    raise ValueError(f"prompt_emb has shape {prompt_emb.shape}; expected [C * {num_templates}, d]")
  prompt_emb = prompt_emb / np.maximum(np.linalg.norm(prompt_emb, axis=-1, keepdims=True), 1e-12)
  mean = prompt_emb.reshape(-1, num_templates, prompt_emb.shape[-1]).mean(axis=1)
  return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def true_class_ranks(image_emb: np.ndarray, class_emb: np.ndarray, labels: np.ndarray,
                     chunk_size: int = 4096) -> np.ndarray:
  """Rank of each image's true class: the number of other classes scoring >= it.

  Args:
    image_emb: float [N, d]; class_emb: float [C, d]; labels: int [N] in [0, C).

  Returns:
    int64 [N] ranks in [0, C).
  """
  ranks = np.zeros(len(image_emb), np.int64)
  for rows in row_blocks(len(image_emb), len(class_emb), chunk_size):
    sim = np.asarray(image_emb[rows], np.float32) @ np.asarray(class_emb, np.float32).T  # [c, C]
    sim = np.where(np.isnan(sim), -np.inf, sim)
    own = sim[np.arange(rows.stop - rows.start), labels[rows]]
    ranks[rows] = np.sum(sim >= own[:, None], axis=1) - 1  # minus the true class itself
  return ranks


def classification_metrics(image_emb: np.ndarray, class_emb: np.ndarray, labels: np.ndarray,
                           ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
  """Top-K accuracy and mean per-class recall (balanced top-1 accuracy).

  Args:
    image_emb: float [N, d] image embeddings (scores are dot products).
    class_emb: float [C, d] class embeddings.
    labels: int [N] true class per image, in [0, C), or negative for "unlabelled" (skipped).
    ks: the K values; each is capped at C for the computation, the key keeps the asked K.

  Returns:
    {"top{K}": float for K in ks, "mean_per_class_recall": the mean over the classes present in
    `labels` of the fraction of their images classified correctly at top-1}.
  """
  labels = np.asarray(labels)
  num_classes = len(class_emb)
  keep = labels >= 0
  if np.any(labels[keep] >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}) (or be negative for unlabelled); "
                     f"got max {labels.max()}")
  image_emb, labels = np.asarray(image_emb)[keep], labels[keep].astype(np.int64)
  if len(labels) == 0:
    return {**{f"top{k}": float("nan") for k in ks}, "mean_per_class_recall": float("nan")}
  return rank_metrics(true_class_ranks(image_emb, class_emb, labels), labels, num_classes, ks)


def rank_metrics(ranks: np.ndarray, labels: np.ndarray, num_classes: int,
                 ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
  """Top-K accuracy and mean per-class recall from the rank of each image's true class.

  Args:
    ranks: int [N] in [0, num_classes): the number of other classes scoring >= the true one.
    labels: int [N] true classes in [0, num_classes) (no unlabelled images).
    num_classes: C; each K is capped at C, the key keeps the asked K.
    ks: the K values.

  Returns:
    As `classification_metrics`.
  """
  out = {f"top{k}": float(np.mean(ranks < min(k, num_classes))) for k in ks}
  hit = (ranks == 0).astype(np.float64)
  counts = np.bincount(labels, minlength=num_classes)
  present = counts > 0
  per_class = np.bincount(labels, weights=hit, minlength=num_classes)[present] / counts[present]
  out["mean_per_class_recall"] = float(per_class.mean())
  return out


def get_classnames(spec: Any, field: str) -> tuple[str, ...]:
  """The `classnames` field: a standard set's name, a .txt file (one name per line, blank lines
  skipped) or a sequence of names -> a non-empty tuple of names.

  Raises:
    ConfigError: naming `field`: an unknown set, a missing file, or an empty or non-string list.
  """
  if isinstance(spec, str) and spec.endswith(".txt"):
    path = Path(spec).expanduser()
    if not path.is_file():
      raise ConfigError(f"{field} = {spec!r}: no such file; give a .txt file with one class name "
                        "per line")
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    names = tuple(n for n in names if n)
  elif isinstance(spec, str):
    names = prompt_sets.classnames(spec, field)
  else:
    names = tuple(spec) if isinstance(spec, (list, tuple)) else ()
  if not names or not all(isinstance(n, str) and n for n in names):
    raise ConfigError(f"{field} = {spec!r} must name a class-name set or a .txt file, or list "
                      "the class names (non-empty strings)")
  return names


@dataclasses.dataclass(frozen=True, kw_only=True)
class ZeroShotFields(SplitFields):
  """The fields of "zeroshot_classification": `SplitFields` plus

  Attributes:
    label: which label set of the split to classify by (a key of `eval_set.labels`).
    templates: a template set name (`clip_jax.evals.templates`: "emoji", "photo", "name", or a
      standard set such as the CLIP paper's 80 "openai_imagenet" prompts), or a tuple of format
      strings with one "{}"; parsed into the tuple of templates.
    classnames: the names the prompts use for the label set's classes, in label order: None (the
      split's own names), a standard set ("imagenet1k", "clip_benchmark/<dataset>";
      `clip_jax.evals.prompt_sets`), a .txt file with one name per line, or the names.
  """

  label: str = schema.field(check=schema.string(nonempty=True))
  templates: Any = schema.field("emoji", get_templates)
  classnames: Any = schema.field(None, get_classnames)


@EVALUATORS.register("zeroshot_classification")
class ZeroShotClassificationEvaluator(Evaluator):
  """Zero-shot classification of an eval split's images by one of its label sets.

  Config fields (`config.evals.<eval_name>`): name ("zeroshot_classification") and
  `ZeroShotFields`.

  Metrics: `<eval_name>/top1`, `<eval_name>/top5` (K capped at the number of classes),
  `<eval_name>/mean_per_class_recall`, `<eval_name>/num_classes`, `<eval_name>/num_images` (the
  labelled images).
  """

  Fields = ZeroShotFields

  def __init__(self, cfg: Mapping[str, Any], *, eval_name: str, tokenizer: Tokenizer,
               load_split: LoadSplitFn):
    super().__init__(cfg, eval_name=eval_name)
    self.templates = self.fields.templates
    split = self.fields.split
    eval_set = load_split(split)
    label = self.fields.label
    available = dict(eval_set.labels)
    if label not in available:
      raise ConfigError(
          f"{self.field_path('label')} = {label!r} is not a label set of split {split!r}; choose "
          f"one of: {', '.join(sorted(available)) or '(the split has no labels)'}")
    labels, classnames = available[label]
    if self.fields.classnames is not None:
      if len(self.fields.classnames) != len(classnames):
        raise ConfigError(
            f"{self.field_path('classnames')} has {len(self.fields.classnames)} names but label "
            f"set {label!r} of split {split!r} has {len(classnames)} classes; give one name per "
            "class, in label order")
      classnames = self.fields.classnames
    self.classnames = [str(c) for c in classnames]
    self.images = np.asarray(eval_set.images)  # [N, H, W, 3]
    self.labels = np.asarray(labels)
    if self.labels.shape != (len(self.images),):
      raise ValueError(f"labels {label!r} of split {split!r} have shape {self.labels.shape}; "
                       f"expected ({len(self.images)},)")
    if not self.classnames:
      raise ValueError(f"label set {label!r} of split {split!r} has no class names")
    if self.labels.max(initial=-1) >= len(self.classnames):
      raise ValueError(f"labels {label!r} of split {split!r} go up to {self.labels.max()} but "
                       f"there are only {len(self.classnames)} class names")
    self.prompts = build_prompts(self.classnames, self.templates)
    self.tokens = np.asarray(tokenizer.encode(self.prompts))  # [C * T, L]
    if len(self.tokens) != len(self.prompts):
      raise ValueError(f"tokenizer.encode returned {len(self.tokens)} rows for "
                       f"{len(self.prompts)} prompts")
    # Only labelled images are embedded.
    self._labelled = self.labels >= 0
    self._predicted: np.ndarray | None = None  # top-1 class of each labelled image, last call
    if not self._labelled.any():
      raise ValueError(f"split {split!r} has no image with a {label!r} label")

  @property
  def num_classes(self) -> int:
    return len(self.classnames)

  @property
  def num_images(self) -> int:
    return int(self._labelled.sum())

  def class_embeddings(self, embed: EmbedFn) -> np.ndarray:
    """float32 [C, d] prompt-ensemble class embeddings."""
    prompt_emb = embed_checked(embed, self.fields.text_modality, self.tokens, "prompt tokens")
    return ensemble_class_embeddings(prompt_emb, len(self.templates))

  def __call__(self, embed: EmbedFn) -> dict[str, float]:
    class_emb = self.class_embeddings(embed)
    images = self.images if self._labelled.all() else self.images[self._labelled]
    image_emb = embed_checked(embed, self.fields.image_modality, images, "images")
    self._predicted = np.argmax(image_emb @ class_emb.T, axis=1)
    metrics = classification_metrics(image_emb, class_emb, self.labels[self._labelled])
    out = {f"{self.eval_name}/{k}": v for k, v in metrics.items()}
    out[f"{self.eval_name}/num_classes"] = float(self.num_classes)
    out[f"{self.eval_name}/num_images"] = float(self.num_images)
    return out

  def pictures(self) -> dict[str, bytes]:
    """After a call, with at most `MAX_CONFUSION_CLASSES` classes: "confusion", the top-1
    confusion matrix of the labelled images (`clip_jax.evals.pictures`)."""
    if self._predicted is None or self.num_classes > MAX_CONFUSION_CLASSES:
      return {}
    matrix = pictures.confusion(self.labels[self._labelled], self._predicted, self.num_classes)
    return {"confusion": pictures.confusion_png(
        matrix, self.classnames, f"{self.eval_name}: zero-shot top-1 ({self.num_classes} classes)")}
