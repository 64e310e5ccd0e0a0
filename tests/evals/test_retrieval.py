"""Retrieval Recall@K: hand-built cases with known answers and a brute-force reference."""

from __future__ import annotations


import ml_collections
import numpy as np
import pytest

from clip_jax.data import EvalSet
from clip_jax.evals import make_evaluators, retrieval_recalls
from clip_jax.evals.retrieval import image_to_text_ranks, text_to_image_ranks


def scores_as_embeddings(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Embeddings whose dot products are exactly `sim` [N, M]: images one-hot, texts = sim.T."""
  return np.eye(sim.shape[0], dtype=np.float32), np.asarray(sim.T, np.float32)


def unit(v):
  return v / np.linalg.norm(v, axis=1, keepdims=True)


def brute_force_recalls(image_emb, text_emb, text_image, ks):
  """Reference: sort every query's candidates and look at the top K (no ties in random data)."""
  sim = image_emb.astype(np.float64) @ text_emb.astype(np.float64).T
  out = {}
  for k in ks:
    hits = []
    for i in range(len(image_emb)):
      mine = [t for t in range(len(text_emb)) if text_image[t] == i]
      if not mine:
        continue
      top = sorted(range(len(text_emb)), key=lambda t: -sim[i, t])[:k]
      hits.append(any(t in top for t in mine))
    out[f"i2t_recall@{k}"] = sum(hits) / len(hits)
  for k in ks:
    hits = []
    for t in range(len(text_emb)):
      top = sorted(range(len(image_emb)), key=lambda i: -sim[i, t])[:k]
      hits.append(text_image[t] in top)
    out[f"t2i_recall@{k}"] = sum(hits) / len(hits)
  return out


def test_identity_matching_is_perfect():
  emb = np.eye(12, dtype=np.float32)
  r = retrieval_recalls(emb, emb, np.arange(12))
  assert r == {f"{d}_recall@{k}": 1.0 for d in ("i2t", "t2i") for k in (1, 5, 10)}


def test_correct_text_ranked_third():
  n = 12
  sim = np.zeros((n, n), np.float32)
  for i in range(n):
    sim[i, i] = 0.5
    sim[i, (i + 1) % n] = 0.9
    sim[i, (i + 2) % n] = 0.8
  image_emb, text_emb = scores_as_embeddings(sim)
  r = retrieval_recalls(image_emb, text_emb, np.arange(n), ks=(1, 2, 3, 5))
  assert [r[f"i2t_recall@{k}"] for k in (1, 2, 3, 5)] == [0.0, 0.0, 1.0, 1.0]
  # Text t is described by image t; column t holds 0.5 (own), 0.9 from image t-1, 0.8 from t-2.
  assert [r[f"t2i_recall@{k}"] for k in (1, 2, 3, 5)] == [0.0, 0.0, 1.0, 1.0]
  ranks, has_text = image_to_text_ranks(image_emb, text_emb, np.arange(n))
  np.testing.assert_array_equal(ranks, np.full(n, 2))
  assert has_text.all()


def test_multiple_texts_any_hit_counts():
  # 4 images, 3 texts each (text t describes image t // 3).
  text_image = np.repeat(np.arange(4), 3)
  sim = np.zeros((4, 12), np.float32)
  # Image 0: one of its texts is top, its other two are ranked last: still an i2t hit at 1.
  sim[0] = -1.0
  sim[0, 1] = 1.0
  sim[0, 3:] = 0.0
  # Image 1: its best text is behind 5 wrong texts: miss at 5, hit at 10.
  sim[1] = 0.0
  sim[1, 3:6] = [0.1, 0.3, 0.2]
  sim[1, [0, 1, 2, 6, 7]] = 0.5
  # Images 2 and 3: own texts top.
  sim[2, 6:9] = 1.0
  sim[3, 9:12] = 1.0
  image_emb, text_emb = scores_as_embeddings(sim)
  ranks, _ = image_to_text_ranks(image_emb, text_emb, text_image)
  np.testing.assert_array_equal(ranks, [0, 5, 0, 0])
  r = retrieval_recalls(image_emb, text_emb, text_image)
  assert r["i2t_recall@1"] == 0.75
  assert r["i2t_recall@5"] == 0.75
  assert r["i2t_recall@10"] == 1.0


def test_ties_count_against_the_model():
  n = 15
  image_emb, text_emb = scores_as_embeddings(np.full((n, n), 0.3, np.float32))
  r = retrieval_recalls(image_emb, text_emb, np.arange(n))
  assert all(v == 0.0 for v in r.values()), r
  # Collapsed embeddings (all rows equal) are a constant similarity matrix too.
  same = np.ones((n, 4), np.float32) / 2
  r = retrieval_recalls(same, same, np.arange(n))
  assert all(v == 0.0 for v in r.values()), r
  # A tie with one wrong candidate only: rank 1, so a miss at 1 and a hit at 2.
  sim = np.eye(n, dtype=np.float32)
  sim[0, 1] = 1.0
  image_emb, text_emb = scores_as_embeddings(sim)
  r = retrieval_recalls(image_emb, text_emb, np.arange(n), ks=(1, 2))
  assert r["i2t_recall@1"] == (n - 1) / n and r["i2t_recall@2"] == 1.0
  # A tie between two texts of the SAME image is not a penalty.
  r = retrieval_recalls(np.eye(2, dtype=np.float32), np.array([[1, 0], [1, 0], [0, 1]], np.float32),
                        np.array([0, 0, 1]), ks=(1,))
  assert r["i2t_recall@1"] == 1.0


def test_nan_embeddings_score_zero():
  emb = np.full((12, 3), np.nan, np.float32)
  r = retrieval_recalls(emb, emb, np.arange(12))
  assert all(v == 0.0 for v in r.values()), r


@pytest.mark.parametrize("chunk_size", [5, 4096])
def test_matches_brute_force_on_random_data(chunk_size):
  rng = np.random.default_rng(0)
  n, d = 23, 6
  text_image = np.concatenate([np.arange(n), rng.integers(0, n, size=40)])  # 1-4 texts per image
  rng.shuffle(text_image)
  # Correlated embeddings so the recalls are neither 0 nor 1.
  image_emb = rng.normal(size=(n, d)).astype(np.float32)
  noise = rng.normal(size=(len(text_image), d))
  text_emb = (image_emb[text_image] + 1.5 * noise).astype(np.float32)
  image_emb /= np.linalg.norm(image_emb, axis=1, keepdims=True)
  text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
  ks = (1, 3, 5, 10)
  got = retrieval_recalls(image_emb, text_emb, text_image, ks=ks, chunk_size=chunk_size)
  want = brute_force_recalls(image_emb, text_emb, text_image, ks)
  assert got.keys() == want.keys()
  for key in want:
    assert got[key] == pytest.approx(want[key], abs=1e-9), key
  assert 0 < got["i2t_recall@1"] < 1 and 0 < got["t2i_recall@1"] < 1
  t2i = text_to_image_ranks(image_emb, text_emb, text_image, chunk_size)
  assert t2i.shape == (len(text_image),) and t2i.min() >= 0 and t2i.max() < n


def test_images_without_texts_are_left_out_of_i2t():
  emb = np.eye(4, dtype=np.float32)
  r = retrieval_recalls(emb, emb[:2], np.array([0, 1]), ks=(1,))
  assert r["i2t_recall@1"] == 1.0  # images 2 and 3 have no text
  assert r["t2i_recall@1"] == 1.0


def test_bad_text_image_raises():
  emb = np.eye(3, dtype=np.float32)
  with pytest.raises(ValueError, match="text_image"):
    retrieval_recalls(emb, emb, np.array([0, 1, 3]))
  with pytest.raises(ValueError, match="text_image"):
    retrieval_recalls(emb, emb, np.array([0, 1]))


class FakeTokenizer:
  """Token ids [M, 1]: one id per distinct string, 1-based (0 is padding)."""

  def __init__(self):
    self.vocab: dict[str, int] = {}

  def encode(self, texts):
    return np.array([[self.vocab.setdefault(t, len(self.vocab) + 1)] for t in texts], np.int32)


def test_retrieval_evaluator_end_to_end():
  rng = np.random.default_rng(1)
  n, d = 10, 8
  images = rng.uniform(-1, 1, size=(n, 4, 4, 3)).astype(np.float32)
  text_image = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 3], np.int32)
  texts = [f"caption {i}" for i in range(len(text_image))]
  eval_set = EvalSet(images, texts, text_image, {})
  tokenizer = FakeTokenizer()
  # Image i embeds to a random unit vector v_i (looked up by its pixels), text t to a noisy copy
  # of its image's vector; the expected recalls come from the standalone function.
  image_vecs = rng.normal(size=(n, d)).astype(np.float32)
  text_vecs = image_vecs[text_image] + 0.8 * rng.normal(size=(len(texts), d)).astype(np.float32)
  calls = []

  def embed(modality, inputs):
    calls.append(modality)
    if modality == "image":
      idx = [int(np.argmin(np.abs(images - x).sum(axis=(1, 2, 3)))) for x in inputs]
      v = image_vecs[idx]
    else:
      assert inputs.dtype == np.int32 and inputs.shape == (len(texts), 1)
      v = text_vecs[inputs[:, 0] - 1]  # the tokenizer's ids follow first-seen order
    return v / np.linalg.norm(v, axis=1, keepdims=True)

  config = {"evals": {"heldout": {"name": "retrieval", "split": "heldout"}}}
  loaded = []

  def load_split(split):
    loaded.append(split)
    return eval_set

  evaluators = make_evaluators(ml_collections.ConfigDict(config), tokenizer, load_split=load_split)
  metrics = evaluators["heldout"](embed)
  assert loaded == ["heldout"] and sorted(calls) == ["image", "text"]
  want = retrieval_recalls(unit(image_vecs), unit(text_vecs), text_image)
  expected_keys = {f"heldout/{k}" for k in want} | {
      "heldout/mean_recall", "heldout/num_images", "heldout/num_texts"}
  assert set(metrics) == expected_keys
  for k, v in want.items():
    assert metrics[f"heldout/{k}"] == pytest.approx(v)
  assert metrics["heldout/mean_recall"] == pytest.approx(np.mean(list(want.values())))
  assert metrics["heldout/num_images"] == n and metrics["heldout/num_texts"] == len(texts)
  assert all(isinstance(v, float) for v in metrics.values())


def test_embed_with_wrong_row_count_raises():
  eval_set = EvalSet(np.zeros((3, 2, 2, 3), np.float32), ["a", "b", "c"], np.arange(3), {})
  config = ml_collections.ConfigDict({"evals": {"r": {"name": "retrieval", "split": "x"}}})
  ev = make_evaluators(config, FakeTokenizer(), load_split=lambda s: eval_set)["r"]
  with pytest.raises(ValueError, match=r"returned shape \(2, 4\)"):
    ev(lambda modality, x: np.ones((2, 4), np.float32))
