"""Zero-shot classification: prompt ensembles and top-K on constructed embeddings."""

from __future__ import annotations


import ml_collections
import numpy as np
import pytest

from clip_jax.data import EvalSet
from clip_jax.evals import TEMPLATE_SETS, classification_metrics, make_evaluators
from clip_jax.evals.zeroshot import build_prompts, ensemble_class_embeddings, true_class_ranks

C, D = 8, 16
CLASSNAMES = [f"Class{chr(ord('A') + c)}" for c in range(C)]  # mixed case: prompts lowercase it


class FakeTokenizer:
  """Token ids [M, 1]: one id per distinct string, 1-based (0 is padding)."""

  def __init__(self):
    self.vocab: dict[str, int] = {}

  def encode(self, texts):
    return np.array([[self.vocab.setdefault(t, len(self.vocab) + 1)] for t in texts], np.int32)

  def decode_id(self, token_id):
    return {v: k for k, v in self.vocab.items()}[token_id]


def unit(v):
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def prompt_table(template_sets):
  """prompt string -> its (unnormalised) text vector.

  Template t of a set with T templates embeds class c as e_c + 2 * s_t * e_{c+1}, s_t = +1 for
  even t and -1 for odd t. A single "+" template ranks class c above class c+1 for images of class
  c+1 (wrong); averaging an even number of templates cancels the offsets and leaves e_c exactly.
  The same string always gets the same vector ("{}" is template 0 of both sets used here).
  """
  eye = np.eye(D, dtype=np.float32)
  table = {}
  for templates in template_sets:
    for t, template in enumerate(templates):
      sign = 1.0 if t % 2 == 0 else -1.0
      for c, name in enumerate(CLASSNAMES):
        vec = eye[c] + 2 * sign * eye[(c + 1) % C]
        prompt = template.format(name.lower())
        assert prompt not in table or np.array_equal(table[prompt], vec)
        table[prompt] = vec
  return table


def image_vector(label, rank):
  """A unit vector whose cosine with e_label is beaten by exactly `rank` other classes."""
  eye = np.eye(D, dtype=np.float32)
  v = 0.5 * eye[label] + 0.1 * eye[C]  # a component outside the class space
  for j in range(1, rank + 1):
    v = v + 0.9 * eye[(label + j) % C]
  return unit(v)


def make_fake(labels_and_ranks, templates_used):
  """Builds an eval set, tokenizer and embed function for images with designed true-class ranks."""
  n = len(labels_and_ranks)
  images = np.zeros((n, 2, 2, 3), np.float32) + np.arange(n, dtype=np.float32)[:, None, None,
                                                                                 None] / 100
  labels = np.array([y for y, _ in labels_and_ranks], np.int32)
  image_vecs = np.stack([image_vector(y, r) if y >= 0 else image_vector(0, 0)
                         for y, r in labels_and_ranks])
  eval_set = EvalSet(images=images, texts=["unused"], text_image=np.zeros(1, np.int32),
                         labels={"category": (labels, list(CLASSNAMES)),
                                 "other": (np.zeros(n, np.int32), ["x"])})
  tokenizer = FakeTokenizer()
  table = prompt_table(templates_used)
  calls = []

  def embed(modality, inputs):
    calls.append((modality, len(inputs)))
    if modality == "image":
      return image_vecs[np.rint(inputs[:, 0, 0, 0] * 100).astype(int)]
    return unit(np.stack([table[tokenizer.decode_id(int(i))] for i in inputs[:, 0]]))

  return eval_set, tokenizer, embed, calls


def build(eval_cfg, eval_set, tokenizer):
  config = ml_collections.ConfigDict({"evals": {"cats": eval_cfg}})
  return make_evaluators(config, tokenizer, load_split=lambda split: eval_set)["cats"]


# (label, rank of the true class): top1 hits where rank == 0, top5 hits where rank < 5.
DESIGN = [(0, 0), (1, 0), (2, 0), (3, 1), (4, 2), (5, 4), (6, 5), (7, 6), (0, 7), (1, 3)]


def test_known_top1_top5_with_template_ensemble():
  eval_set, tokenizer, embed, calls = make_fake(DESIGN, [TEMPLATE_SETS["emoji"]])
  ev = build({"name": "zeroshot_classification", "split": "heldout", "label": "category"},
             eval_set, tokenizer)
  assert len(TEMPLATE_SETS["emoji"]) % 2 == 0  # the construction needs an even ensemble
  metrics = ev(embed)
  ranks = np.array([r for _, r in DESIGN])
  labels = np.array([y for y, _ in DESIGN])
  assert metrics["cats/top1"] == pytest.approx(np.mean(ranks == 0))  # 0.3
  assert metrics["cats/top5"] == pytest.approx(np.mean(ranks < 5))  # 0.7
  per_class = [np.mean(ranks[labels == c] == 0) for c in range(C)]
  assert metrics["cats/mean_per_class_recall"] == pytest.approx(np.mean(per_class))  # 0.25
  assert metrics["cats/num_classes"] == C and metrics["cats/num_images"] == len(DESIGN)
  assert set(metrics) == {"cats/top1", "cats/top5", "cats/mean_per_class_recall",
                          "cats/num_classes", "cats/num_images"}
  # One text call with every prompt of every class, one image call.
  assert sorted(calls) == [("image", len(DESIGN)), ("text", C * len(TEMPLATE_SETS["emoji"]))]
  # The ensemble's class embeddings are exactly the class axes.
  np.testing.assert_allclose(ev.class_embeddings(embed), np.eye(C, D), atol=1e-6)


def test_single_template_differs_from_ensemble():
  # Perfectly separable images: the ensemble gets all right; the lone "{}" template (whose
  # offset points at the next class) gets all wrong, so the ensemble average is really used.
  design = [(c, 0) for c in range(C)]
  eval_set, tokenizer, embed, _ = make_fake(design, [TEMPLATE_SETS["emoji"], ("{}",)])
  base = {"name": "zeroshot_classification", "split": "heldout", "label": "category"}
  ensemble = build(dict(base, templates="emoji"), eval_set, tokenizer)(embed)
  single = build(dict(base, templates="name"), eval_set, tokenizer)(embed)
  assert ensemble["cats/top1"] == 1.0
  assert single["cats/top1"] == 0.0
  custom = build(dict(base, templates=("{}", "an emoji of {}.")), eval_set, tokenizer)(embed)
  assert custom["cats/top1"] == 1.0


def test_unlabelled_images_are_skipped():
  design = [(0, 0), (-1, 0), (2, 1), (-1, 0)]
  eval_set, tokenizer, embed, calls = make_fake(design, [TEMPLATE_SETS["emoji"]])
  ev = build({"name": "zeroshot_classification", "split": "s", "label": "category"},
             eval_set, tokenizer)
  metrics = ev(embed)
  assert metrics["cats/num_images"] == 2 and metrics["cats/top1"] == 0.5
  assert ("image", 2) in calls


def test_topk_capped_at_num_classes():
  rng = np.random.default_rng(0)
  class_emb = unit(rng.normal(size=(3, 5)))
  image_emb = unit(rng.normal(size=(20, 5)))
  labels = rng.integers(0, 3, size=20)
  m = classification_metrics(image_emb, class_emb, labels, ks=(1, 5))
  assert m["top5"] == 1.0
  assert 0 < m["top1"] < 1


def test_ranks_match_argsort_reference():
  rng = np.random.default_rng(1)
  class_emb = unit(rng.normal(size=(7, 6)))
  image_emb = unit(rng.normal(size=(50, 6)))
  labels = rng.integers(0, 7, size=50)
  ranks = true_class_ranks(image_emb, class_emb, labels, chunk_size=8)
  order = np.argsort(-(image_emb @ class_emb.T), axis=1)
  want = [int(np.where(order[i] == labels[i])[0][0]) for i in range(50)]
  np.testing.assert_array_equal(ranks, want)
  m = classification_metrics(image_emb, class_emb, labels, ks=(1, 3))
  assert m["top1"] == pytest.approx(np.mean(order[:, 0] == labels))
  assert m["top3"] == pytest.approx(np.mean([labels[i] in order[i, :3] for i in range(50)]))


def test_constant_scores_are_not_all_correct():
  m = classification_metrics(np.ones((6, 4), np.float32) / 2, np.ones((3, 4), np.float32) / 2,
                             np.array([0, 1, 2, 0, 1, 2]), ks=(1, 2))
  assert m["top1"] == 0.0 and m["top2"] == 0.0


def test_prompts_and_ensemble_helpers():
  assert build_prompts(["Red Apple", "DOG"], ("{}", "a {}.")) == ["red apple", "a red apple.",
                                                                   "dog", "a dog."]
  prompt_emb = np.array([[3, 0], [0, 2], [0, 5], [0, 1]], np.float32)  # C=2, T=2, unnormalised
  np.testing.assert_allclose(ensemble_class_embeddings(prompt_emb, 2),
                             [[2 ** -0.5, 2 ** -0.5], [0, 1]], atol=1e-6)


def test_nan_scores_count_as_minus_inf():
  # C = 3 axis classes. Images 0 and 1 are clean hits; image 2 (label 1) and image 3 (label 2)
  # have NaN embeddings; class 2's embedding is NaN, so image 4 (label 2, aimed at class 2) can
  # only rank last, and image 5 (label 0) wins because the NaN class 2 cannot beat it.
  eye = np.eye(3, dtype=np.float32)
  class_emb = eye.copy()
  class_emb[2] = np.nan
  image_emb = np.stack([eye[0], eye[1], np.full(3, np.nan), np.full(3, np.nan), eye[2],
                        unit(np.array([0.6, 0.0, 0.8], np.float32))])
  labels = np.array([0, 1, 1, 2, 2, 0])
  np.testing.assert_array_equal(true_class_ranks(image_emb, class_emb, labels),
                                [0, 0, 2, 2, 2, 0])
  m = classification_metrics(image_emb, class_emb, labels, ks=(1, 2, 3))
  assert m == {"top1": 0.5, "top2": 0.5, "top3": 1.0,
               "mean_per_class_recall": pytest.approx((1.0 + 0.5 + 0.0) / 3)}


def test_all_nan_embeddings_score_zero():
  nan = np.full((4, 2), np.nan, np.float32)
  m = classification_metrics(nan, np.eye(3, 2, dtype=np.float32), np.array([0, 1, 2, 0]))
  assert m == {"top1": 0.0, "top5": 1.0, "mean_per_class_recall": 0.0}


def test_mean_per_class_recall_averages_over_present_classes():
  # 5 class names, but only classes 0 and 3 have labelled images: class 0 has 3 images of which
  # 1 is right, class 3 has 1 image, right. Recall (1/3 + 1) / 2 = 2/3; averaging over all 5
  # names would give 4/15, the image-weighted top-1 is 2/4.
  class_emb = np.eye(5, dtype=np.float32)
  image_emb = np.eye(5, dtype=np.float32)[[0, 1, 2, 3, 4]]
  labels = np.array([0, 0, 0, 3, -1])  # the last image is unlabelled
  m = classification_metrics(image_emb, class_emb, labels, ks=(1,))
  assert m["top1"] == 0.5
  assert m["mean_per_class_recall"] == pytest.approx(2 / 3, abs=1e-12)
