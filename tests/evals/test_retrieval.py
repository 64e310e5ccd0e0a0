"""Retrieval Recall@K: hand-built cases with known answers and a brute-force reference."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from clip_jax.data import EvalSet
from clip_jax.evals import make_evaluators, retrieval, retrieval_recalls
from clip_jax.evals.geometry import modality_gap
from clip_jax.evals.retrieval import (image_classes, image_to_text_ranks, rank_summary,
                                      retrieval_ranks, text_classes, text_to_image_ranks)


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


def equivalence_reference(images, texts, text_image, image_emb, text_emb, ks):
  """Reference for duplicates, straight from the definition on the raw content.

  (image i, text t) is a correct pair iff some text u with the same string as t describes an image
  with the same bytes as i. Each query's candidates are sorted by score with ties broken against
  the model (wrong before correct), and the query is a hit at K if a correct one is in the top K.
  """
  n, m = len(images), len(texts)
  same_image = [[images[a].tobytes() == images[b].tobytes() for b in range(n)] for a in range(n)]
  correct = np.array([[any(texts[u] == texts[t] and same_image[text_image[u]][i] for u in range(m))
                       for t in range(m)] for i in range(n)])
  sim = image_emb.astype(np.float64) @ text_emb.astype(np.float64).T

  def hit(scores, right, k):
    order = sorted(range(len(scores)), key=lambda x: (-scores[x], bool(right[x])))
    return any(right[x] for x in order[:k])

  out = {}
  for k in ks:
    hits = [hit(sim[i], correct[i], k) for i in range(n) if correct[i].any()]
    out[f"i2t_recall@{k}"] = float(np.mean(hits))
  for k in ks:
    out[f"t2i_recall@{k}"] = float(np.mean([hit(sim[:, t], correct[:, t], k) for t in range(m)]))
  return out


def split_with_duplicates():
  """An EvalSet with every kind of duplicate, and each item's "topic" (for an oracle embedder).

  Images 0, 1 are byte-identical with captions "a" and "b"; images 2, 3 differ but share the
  caption "c"; images 4, 5 are byte-identical with the same caption "d"; image 14 has the caption
  "f" twice; images 6..13 are distinct with distinct captions. Items of one topic are each
  other's correct answers, and no pair across topics is.
  """
  rng = np.random.default_rng(7)
  pool = rng.uniform(-1, 1, size=(13, 4, 4, 3)).astype(np.float32)  # distinct pixel arrays
  image_pool = [0, 0, 1, 2, 3, 3, *range(4, 12), 12]
  texts = ["a", "b", "c", "c", "d", "d", *(f"e{j}" for j in range(8)), "f", "f"]
  text_image = [0, 1, 2, 3, 4, 5, *range(6, 14), 14, 14]
  image_topic = [0, 0, 1, 1, 2, 2, *range(3, 11), 11]
  text_topic = [0, 0, 1, 1, 2, 2, *range(3, 11), 11, 11]
  return EvalSet(pool[image_pool], texts, np.array(text_image), {}), image_topic, text_topic


def evaluate_split(eval_set, embed):
  config = ml_collections.ConfigDict({"evals": {"h": {"name": "retrieval", "split": "heldout"}}})
  evaluator = make_evaluators(config, FakeTokenizer(), load_split=lambda split: eval_set)["h"]
  metrics = evaluator(embed)
  return {k.removeprefix("h/"): v for k, v in metrics.items() if "recall@" in k}


def content_embedder(eval_set, image_vecs, text_vecs):
  """embed(): each image looked up by its bytes, each text by its token id (i.e. its string)."""
  by_bytes = {image.tobytes(): image_vecs[i] for i, image in enumerate(eval_set.images)}
  by_string = {text: text_vecs[t] for t, text in enumerate(eval_set.texts)}
  strings = list(dict.fromkeys(eval_set.texts))  # FakeTokenizer's ids: first-seen order, 1-based

  def embed(modality, inputs):
    if modality == "image":
      return np.stack([by_bytes[np.asarray(x, np.float32).tobytes()] for x in inputs])
    return np.stack([by_string[strings[i - 1]] for i in inputs[:, 0]])

  return embed


def test_oracle_embedder_on_duplicates_scores_one():
  eval_set, image_topic, text_topic = split_with_duplicates()
  # Identical content -> identical vectors (one unit vector per topic), so correct items tie
  # with each other and every wrong item scores 0.
  topic_vecs = np.eye(12, dtype=np.float32)
  embed = content_embedder(eval_set, topic_vecs[image_topic], topic_vecs[text_topic])
  assert evaluate_split(eval_set, embed) == {
      f"{d}_recall@{k}": 1.0 for d in ("i2t", "t2i") for k in (1, 5, 10)}
  r = retrieval_recalls(topic_vecs[image_topic], topic_vecs[text_topic], eval_set.text_image,
                        ks=(1,), image_class=image_classes(eval_set.images),
                        text_class=text_classes(eval_set.texts))
  assert r == {"i2t_recall@1": 1.0, "t2i_recall@1": 1.0}
  # Treating every index as a distinct answer (the open_clip protocol) fails the same oracle.
  r = retrieval_recalls(topic_vecs[image_topic], topic_vecs[text_topic], eval_set.text_image,
                        ks=(1,))
  assert r["i2t_recall@1"] == 9 / 15 and r["t2i_recall@1"] == 10 / 16


def test_collapsed_embedder_on_duplicates_still_scores_the_tie_value():
  eval_set, _, _ = split_with_duplicates()
  # All vectors equal: every query ties with all of its >= 13 wrong candidates.
  r = evaluate_split(eval_set, lambda modality, x: np.full((len(x), 4), 0.5, np.float32))
  assert r == {f"{d}_recall@{k}": 0.0 for d in ("i2t", "t2i") for k in (1, 5, 10)}
  same_images, same_texts = np.full((15, 4), 0.5, np.float32), np.full((16, 4), 0.5, np.float32)
  assert retrieval_recalls(same_images, same_texts, eval_set.text_image) == r  # index-distinct
  # A query is a hit only once K exceeds its number of wrong candidates; duplicates of the answer
  # are not wrong, so images 0-5 and 14 (two correct texts each) have 14, the others 15.
  r = retrieval_recalls(same_images, same_texts, eval_set.text_image, ks=(14, 15, 16),
                        image_class=image_classes(eval_set.images),
                        text_class=text_classes(eval_set.texts))
  assert (r["i2t_recall@14"], r["i2t_recall@15"], r["i2t_recall@16"]) == (0.0, 7 / 15, 1.0)


def test_shared_caption_across_distinct_images():
  # Images 0, 1, 2 differ; texts 0 and 1 are both "a red circle" (for images 0 and 1), text 2
  # "a blue square" (image 2). For image 0, text 1 is as right as text 0; for text 0 ("a red
  # circle"), image 1 is as right as image 0. A tie with a wrong item still counts.
  texts = ["a red circle", "a red circle", "a blue square"]
  text_image = np.array([0, 1, 2])
  sim = np.array([[0.2, 0.9, 0.6],   # image 0: best text is text 1 (same string): hit at 1
                  [0.8, 0.3, 0.8],   # image 1: best correct 0.8 ties with text 2: miss at 1
                  [0.5, 0.5, 0.4]],  # image 2: both wrong texts above its own: rank 2
                 np.float32)
  image_emb, text_emb = scores_as_embeddings(sim)
  classes = dict(image_class=np.arange(3), text_class=text_classes(texts))
  ranks, has_text = image_to_text_ranks(image_emb, text_emb, text_image, **classes)
  np.testing.assert_array_equal(ranks, [0, 1, 2])
  assert has_text.all()
  # Columns: texts 0 and 1 accept images 0 and 1 (best 0.8 and 0.9: rank 0); text 2 accepts only
  # image 2 (0.4, behind 0.6 and 0.8: rank 2).
  np.testing.assert_array_equal(
      text_to_image_ranks(image_emb, text_emb, text_image, **classes), [0, 0, 2])
  r = retrieval_recalls(image_emb, text_emb, text_image, ks=(1, 2, 3), **classes)
  assert (r["i2t_recall@1"], r["i2t_recall@2"], r["i2t_recall@3"]) == (1 / 3, 2 / 3, 1.0)
  assert (r["t2i_recall@1"], r["t2i_recall@2"], r["t2i_recall@3"]) == (2 / 3, 2 / 3, 1.0)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("chunk_size", [3, 4096])
def test_matches_equivalence_reference_with_duplicates(seed, chunk_size):
  rng = np.random.default_rng(seed)
  n, m, d = int(rng.integers(4, 14)), int(rng.integers(4, 20)), 3
  pool = rng.uniform(-1, 1, size=(n, 2, 2, 3)).astype(np.float32)
  image_pool = rng.integers(0, max(2, n // 2), size=n)  # forced byte-identical images
  images = pool[image_pool]
  text_image = np.concatenate([np.arange(n), rng.integers(0, n, size=max(0, m - n))])[:m]
  rng.shuffle(text_image)
  # Mostly the caption of the image's content, sometimes another: strings repeat within and
  # across images.
  vocab = [f"caption {j}" for j in range(n)]
  texts = [vocab[image_pool[i]] if rng.random() < 0.7 else vocab[rng.integers(0, n)]
           for i in text_image]
  # Content-determined embeddings, small integers in odd seeds so that exact ties with wrong
  # items are common too.
  if seed % 2:
    pool_vecs = rng.integers(-1, 2, size=(n, d)).astype(np.float32)
    string_vecs = rng.integers(-1, 2, size=(n, d)).astype(np.float32)
  else:
    pool_vecs = rng.normal(size=(n, d)).astype(np.float32)
    string_vecs = (pool_vecs + rng.normal(size=(n, d))).astype(np.float32)
  image_emb = pool_vecs[image_pool]
  text_emb = string_vecs[[vocab.index(t) for t in texts]]
  ks = (1, 2, 3, 5)
  got = retrieval_recalls(image_emb, text_emb, text_image, ks=ks, chunk_size=chunk_size,
                          image_class=image_classes(images), text_class=text_classes(texts))
  want = equivalence_reference(images, texts, text_image, image_emb, text_emb, ks)
  assert got == pytest.approx(want, abs=1e-12)


def test_content_classes():
  images = np.zeros((4, 2, 2, 3), np.float32)
  images[1, 0, 0, 0] = np.nextafter(np.float32(0), np.float32(1))  # differs by one ulp
  images[3] = images[1]
  np.testing.assert_array_equal(image_classes(images), [0, 1, 0, 1])
  np.testing.assert_array_equal(text_classes(["x", "y", "x", "X"]), [0, 1, 0, 2])
  with pytest.raises(ValueError, match="image_class"):
    retrieval_recalls(np.eye(3), np.eye(3), np.arange(3), image_class=np.zeros(2, int))


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
      "heldout/mean_recall", "heldout/num_images", "heldout/num_texts", "heldout/modality_gap",
      "heldout/alignment", "heldout/uniformity_image", "heldout/uniformity_text",
      "heldout/i2t_mean_rank", "heldout/i2t_median_rank", "heldout/t2i_mean_rank",
      "heldout/t2i_median_rank"}
  assert set(metrics) == expected_keys
  for k, v in want.items():
    assert metrics[f"heldout/{k}"] == pytest.approx(v)
  assert metrics["heldout/mean_recall"] == pytest.approx(np.mean(list(want.values())))
  assert metrics["heldout/num_images"] == n and metrics["heldout/num_texts"] == len(texts)
  assert metrics["heldout/modality_gap"] == pytest.approx(modality_gap(unit(image_vecs),
                                                                       unit(text_vecs)))
  assert all(isinstance(v, float) for v in metrics.values())


def test_embed_with_wrong_row_count_raises():
  eval_set = EvalSet(np.zeros((3, 2, 2, 3), np.float32), ["a", "b", "c"], np.arange(3), {})
  config = ml_collections.ConfigDict({"evals": {"r": {"name": "retrieval", "split": "x"}}})
  ev = make_evaluators(config, FakeTokenizer(), load_split=lambda s: eval_set)["r"]
  with pytest.raises(ValueError, match=r"returned shape \(2, 4\)"):
    ev(lambda modality, x: np.ones((2, 4), np.float32))


def test_rank_summary_is_one_based_and_matches_the_recalls():
  assert rank_summary(np.array([0, 1, 5]), np.array([0, 0, 3, 2])) == {
      "i2t_mean_rank": 3.0, "i2t_median_rank": 2.0, "t2i_mean_rank": 2.25,
      "t2i_median_rank": 2.0}
  nan = rank_summary(np.array([], int), np.array([0]))
  assert np.isnan(nan["i2t_mean_rank"]) and nan["t2i_median_rank"] == 1.0
  # On random data the ranks are those behind the recalls: R@K = share of ranks below K.
  rng = np.random.default_rng(3)
  images, texts = rng.normal(size=(20, 8)), rng.normal(size=(30, 8))
  text_image = rng.integers(0, 20, size=30)
  i2t, t2i = retrieval_ranks(images, texts, text_image)
  recalls = retrieval_recalls(images, texts, text_image, ks=(1, 5))
  assert recalls["i2t_recall@5"] == np.mean(i2t < 5) and recalls["t2i_recall@1"] == np.mean(t2i < 1)


class _Gathered(Exception):
  """Carries one simulated process's contribution out of process_allgather."""


@pytest.mark.parametrize("num_processes", [2, 3])
def test_ranks_shared_among_processes_equal_one_process(monkeypatch, num_processes):
  # Each simulated process ranks its share of the queries; the gathered ranks must be the ranks
  # one process computes (the real 2-process run: tests/test_multihost.py).
  rng = np.random.default_rng(4)
  query, candidates = unit(rng.normal(size=(11, 5))), unit(rng.normal(size=(7, 5)))
  query_class = np.arange(11)
  answers = [np.array([q % 7]) if q % 4 else np.zeros(0, np.int64) for q in range(11)]
  want = retrieval.answer_ranks(query, candidates, query_class, answers, chunk_size=2)
  monkeypatch.setattr(retrieval.jax, "process_count", lambda: num_processes)
  shares = []

  def capture(mine):
    shares.append(np.array(mine))
    raise _Gathered

  monkeypatch.setattr(retrieval.multihost_utils, "process_allgather", capture)
  for index in range(num_processes):
    monkeypatch.setattr(retrieval.jax, "process_index", lambda index=index: index)
    with pytest.raises(_Gathered):
      retrieval.answer_ranks_across_processes(query, candidates, query_class, answers, 2)
  monkeypatch.setattr(retrieval.multihost_utils, "process_allgather",
                      lambda mine: np.stack(shares))
  got = retrieval.answer_ranks_across_processes(query, candidates, query_class, answers, 2)
  np.testing.assert_array_equal(got[0][want[1]], want[0][want[1]])  # ranks where meaningful
  np.testing.assert_array_equal(got[1], want[1])
