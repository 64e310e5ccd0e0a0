"""Zero-shot image-text retrieval: Recall@K in both directions, duplicates as equivalent answers.

Equivalence. Items with identical content are interchangeable answers: images whose pixel arrays
are byte-identical form one image class, texts with identical strings one text class (`I(i)` and
`T(t)` below). A text class B describes an image class A when some text of B describes (via
`text_image`) some image of A. An eval split may repeat content, and no embedder can tell
identical inputs apart, so counting a copy of the right answer as wrong would cap every model
below 1 (the synthetic held-out split has 128 images but 35 distinct captions, 8 of them used once;
counted by index, no model could exceed i2t R@1 = 8/128 or t2i R@1 = 35/128 there).

- image -> text: for image i, the correct texts C(i) are the texts whose class describes I(i),
  i.e. the texts equal to a caption of any image byte-identical to i. Images whose class no text
  describes are left out of the image->text average.
- text -> image: for text t, the correct images C(t) are the images whose class T(t) describes,
  i.e. the images byte-identical to an image that any copy of the string t describes.

Ties are counted against the model (pessimistic), but only ties with WRONG items: with s(q, x) the
similarity and best(q) = max over x in C(q) of s(q, x),

  rank(q) = |{x not in C(q) : s(q, x) >= best(q)}|,    R@K = mean over queries of [rank(q) < K],

i.e. query q is a hit at K iff a correct item is in the top K under every ordering of tied items.
Correct items tying with each other never hurt, so an oracle embedder (identical content ->
identical vectors, each query's correct items scored above its wrong ones) scores 1. Ties with
wrong items still do, so a degenerate model (e.g. all embeddings equal, a constant similarity
matrix) scores 0 wherever a query has at least K wrong candidates, never 1. NaN similarities are
treated as -inf (so a diverged model scores 0, not 1). The result does not depend on the order of
the data. Without duplicates this is the usual CLIP protocol (one image may have several
captions; image i is a hit if ANY of its texts is in the top K).

Difference from open_clip and CLIP_benchmark: they treat every index as a distinct answer (only
the captions listed for image i are right for it, and only image text_image[t] is right for text
t, even when another item is an exact copy) and they break ties by sort order (torch.topk /
argsort) rather than against the model. Without duplicates and ties the numbers agree; with
duplicates, a copy of the answer scored above it is a miss there and a hit here.

Similarities are computed in float32 numpy, a block of query rows at a time, so memory stays
bounded for large N x M: the N x M matrix is never held, only a block of at most
`MAX_BLOCK_ELEMENTS` similarities (`row_blocks`). With several JAX processes the evaluator shares
the query rows of each direction among them (`answer_ranks_across_processes`: process p ranks
rows [Q p / P, Q (p + 1) / P) against all candidates, and the ranks are gathered to every
process), so P hosts rank a COCO-scale split about P times faster than one.

Where this differs from CLIP_benchmark's numbers: ties (counted against the model here, broken by
sort order there), duplicates (equivalent answers here, distinct indices there), and uncaptioned
images (left out of image->text here; CLIP_benchmark's COCO loader has none).
"""

from __future__ import annotations

import hashlib
from typing import Any, Hashable, Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from clip_jax.evals.base import (EmbedFn, Evaluator, LoadSplitFn, SplitFields, Tokenizer,
                                embed_checked)
from clip_jax.evals import pictures
from clip_jax.evals.geometry import geometry
from clip_jax.evals.registry import EVALUATORS

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
CHUNK_ROWS = 4096  # query rows per similarity block
MAX_BLOCK_ELEMENTS = 1 << 26  # cap a block at 64M similarities (256 MiB float32)
GRID_QUERIES = 4  # text queries in the retrieval grid picture


def row_blocks(num_rows: int, num_cols: int, chunk_size: int = CHUNK_ROWS) -> Iterator[slice]:
  """Slices of at most `chunk_size` rows, fewer if a [rows, num_cols] block would be too large."""
  rows = max(1, min(chunk_size, MAX_BLOCK_ELEMENTS // max(num_cols, 1)))
  for start in range(0, num_rows, rows):
    yield slice(start, min(start + rows, num_rows))


def _similarity(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
  """float32 [q, d] x [k, d] -> [q, k] dot products, NaN replaced by -inf."""
  sim = np.asarray(queries, np.float32) @ np.asarray(keys, np.float32).T
  return np.where(np.isnan(sim), -np.inf, sim)


def image_classes(images: np.ndarray) -> np.ndarray:
  """Image equivalence classes: byte-identical pixel arrays share a class.

  Args:
    images: array [N, ...] of any dtype; image i is images[i].

  Returns:
    int64 [N] class ids in [0, number of distinct images), numbered in first-seen order. Images
    are compared by the SHA-256 digest of their bytes, so only a digest per image is kept.
  """
  return _first_seen_ids(hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()
                         for image in images)


def text_classes(texts: Sequence[str]) -> np.ndarray:
  """Text equivalence classes: int64 [M] ids, equal for identical strings, first-seen order."""
  return _first_seen_ids(texts)


def _first_seen_ids(keys: Iterable[Hashable]) -> np.ndarray:
  ids: dict[Hashable, int] = {}
  return np.array([ids.setdefault(key, len(ids)) for key in keys], np.int64)


def _answers(query_class: np.ndarray, answer_class: np.ndarray, num_query_classes: int,
             candidate_class: np.ndarray) -> list[np.ndarray]:
  """The correct candidates of every query class.

  Args:
    query_class, answer_class: int64 [P], the matching (query class, candidate class) pairs.
    num_query_classes: the number of query classes.
    candidate_class: int64 [X], the class of each candidate.

  Returns:
    num_query_classes int64 arrays: entry q holds the indices of the candidates whose class is
    paired with q (empty if none).
  """
  pairs = np.unique(np.stack([query_class, answer_class], axis=1), axis=0)  # sorted by query
  paired = np.split(pairs[:, 1], np.searchsorted(pairs[:, 0], np.arange(1, num_query_classes)))
  order = np.argsort(candidate_class, kind="stable")  # candidate indices grouped by class
  members = np.split(order, np.searchsorted(candidate_class[order],
                                            np.arange(1, candidate_class.max(initial=0) + 1)))

  def union(classes: np.ndarray) -> np.ndarray:
    if len(classes) == 1:  # the common case: a view of `order`, not a copy
      return members[classes[0]]
    return np.concatenate([members[c] for c in classes] or [np.zeros(0, np.int64)])

  return [union(classes) for classes in paired]


def answer_ranks(query_emb: np.ndarray, candidate_emb: np.ndarray, query_class: np.ndarray,
                 answers: Sequence[np.ndarray],
                 chunk_size: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
  """Rank of each query's best-scoring correct candidate among the wrong candidates.

  Args:
    query_emb: float [Q, d] query embeddings (scores are plain dot products).
    candidate_emb: float [X, d] candidate embeddings.
    query_class: int64 [Q], each query's class, in [0, len(answers)).
    answers: per query class, int64 array of the candidates (indices into candidate_emb) that
      answer it correctly, C(q) below.
    chunk_size: query rows per similarity block.

  Returns:
    (ranks int64 [Q], has_answer bool [Q]). ranks[q] = number of candidates NOT in C(q) whose
    score is >= the best score in C(q); meaningless where has_answer[q] is False (C(q) empty).
  """
  ranks = np.zeros(len(query_emb), np.int64)
  has_answer = np.zeros(len(query_emb), bool)
  for rows in row_blocks(len(query_emb), len(candidate_emb), chunk_size):
    sim = _similarity(query_emb[rows], candidate_emb)  # [c, X]
    correct = [answers[q] for q in query_class[rows]]
    counts = np.array([len(c) for c in correct], np.int64)  # [c]
    row = np.repeat(np.arange(len(correct)), counts)  # [P], the block row of each correct pair
    score = sim[row, np.concatenate(correct)]  # [P]
    best = np.full(len(correct), -np.inf, np.float32)
    np.maximum.at(best, row, score)  # [c], best correct score (-inf if none)
    at_best = np.bincount(row[score >= best[row]], minlength=len(correct))  # correct items >= best
    ranks[rows] = np.sum(sim >= best[:, None], axis=1) - at_best
    has_answer[rows] = counts > 0
  return ranks, has_answer


def process_share(num_rows: int, index: int, count: int) -> slice:
  """Process `index` of `count`'s contiguous share of `num_rows` query rows:
  [num_rows * index // count, num_rows * (index + 1) // count)."""
  return slice(num_rows * index // count, num_rows * (index + 1) // count)


def answer_ranks_across_processes(query_emb: np.ndarray, candidate_emb: np.ndarray,
                                  query_class: np.ndarray, answers: Sequence[np.ndarray],
                                  chunk_size: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
  """`answer_ranks`, with the query rows shared among the JAX processes: each ranks its
  `process_share` of them (block by block) and the shares are gathered to every process
  (`multihost_utils.process_allgather`). Every process must call it with the same arguments; with
  one process it is `answer_ranks`."""
  count = jax.process_count()
  if count == 1:
    return answer_ranks(query_emb, candidate_emb, query_class, answers, chunk_size)
  rows = process_share(len(query_emb), jax.process_index(), count)
  ranks, has_answer = answer_ranks(query_emb[rows], candidate_emb, query_class[rows], answers,
                                   chunk_size)
  longest = -(-len(query_emb) // count)
  mine = np.zeros((2, longest), np.int32)  # ranks < 2**31: the candidates of one host
  mine[0, :len(ranks)], mine[1, :len(ranks)] = ranks, has_answer
  shares = np.asarray(multihost_utils.process_allgather(mine))  # [count, 2, longest]
  sizes = [process_share(len(query_emb), p, count) for p in range(count)]
  gathered = np.concatenate([shares[p, :, :s.stop - s.start] for p, s in enumerate(sizes)], 1)
  return gathered[0].astype(np.int64), gathered[1].astype(bool)


def image_to_text_ranks(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
                        chunk_size: int = CHUNK_ROWS, *, image_class: np.ndarray | None = None,
                        text_class: np.ndarray | None = None,
                        across_processes: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Image -> text ranks: `answer_ranks` with the images as queries.

  Args: as `retrieval_recalls`; chunk_size is in image rows.

  Returns:
    (ranks int64 [N], has_text bool [N]): ranks[i] = number of texts not correct for image i
    (module docstring) whose score is >= the best score among its correct texts; has_text[i] is
    False where no text is correct for image i (then ranks[i] is meaningless).
  """
  image_class, text_class, described = _checked_classes(text_image, image_class, text_class,
                                                 len(image_emb), len(text_emb))
  answers = _answers(described, text_class, int(image_class.max(initial=-1)) + 1, text_class)
  rank = answer_ranks_across_processes if across_processes else answer_ranks
  return rank(image_emb, text_emb, image_class, answers, chunk_size)


def text_to_image_ranks(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
                        chunk_size: int = CHUNK_ROWS, *, image_class: np.ndarray | None = None,
                        text_class: np.ndarray | None = None,
                        across_processes: bool = False) -> np.ndarray:
  """Text -> image ranks: `answer_ranks` with the texts as queries.

  Args: as `retrieval_recalls`; chunk_size is in text rows.

  Returns:
    ranks int64 [M]: ranks[t] = number of images not correct for text t (module docstring) whose
    score is >= the best score among its correct images (every text has one: its own image).
  """
  image_class, text_class, described = _checked_classes(text_image, image_class, text_class,
                                                 len(image_emb), len(text_emb))
  answers = _answers(text_class, described, int(text_class.max(initial=-1)) + 1, image_class)
  rank = answer_ranks_across_processes if across_processes else answer_ranks
  return rank(text_emb, image_emb, text_class, answers, chunk_size)[0]


def check_text_image(text_image: np.ndarray, num_images: int, num_texts: int) -> np.ndarray:
  """Validates the text -> image index array; returns it as int64 [M]."""
  text_image = np.asarray(text_image)
  if text_image.shape != (num_texts,):
    raise ValueError(f"text_image has shape {text_image.shape}; expected ({num_texts},), one "
                     "image index per text")
  if not np.issubdtype(text_image.dtype, np.integer):
    raise ValueError(f"text_image must hold integer image indices, got dtype {text_image.dtype}")
  if num_texts and (text_image.min() < 0 or text_image.max() >= num_images):
    raise ValueError(f"text_image values must lie in [0, {num_images}); got range "
                     f"[{text_image.min()}, {text_image.max()}]")
  return text_image.astype(np.int64)


def _check_classes(classes: np.ndarray | None, num_items: int, name: str) -> np.ndarray:
  """int64 [n] class ids renumbered to [0, distinct); None -> every item its own class."""
  if classes is None:
    return np.arange(num_items, dtype=np.int64)
  classes = np.asarray(classes)
  if classes.shape != (num_items,) or not np.issubdtype(classes.dtype, np.integer):
    raise ValueError(f"{name} has shape {classes.shape} and dtype {classes.dtype}; expected "
                     f"integers of shape ({num_items},), one class id per item")
  return np.unique(classes, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _checked_classes(text_image: np.ndarray, image_class: np.ndarray | None,
             text_class: np.ndarray | None, num_images: int,
             num_texts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Checked (image_class int64 [N], text_class int64 [M], class of each text's image [M])."""
  text_image = check_text_image(text_image, num_images, num_texts)
  image_class = _check_classes(image_class, num_images, "image_class")
  text_class = _check_classes(text_class, num_texts, "text_class")
  return image_class, text_class, image_class[text_image]


def retrieval_ranks(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
                    chunk_size: int = CHUNK_ROWS, *, image_class: np.ndarray | None = None,
                    text_class: np.ndarray | None = None,
                    across_processes: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """The 0-based rank of every query (module docstring: ties with wrong items count against
  the model; duplicates are equivalent answers).

  Args:
    image_emb: float [N, d] image embeddings; scores are dot products, so pass unit-norm rows for
      cosine similarity.
    text_emb: float [M, d] text embeddings.
    text_image: int [M], the image each text describes.
    chunk_size: query rows per similarity block.
    image_class: int [N], equal for images with identical content (`image_classes(images)`), or
      None: every image distinct.
    text_class: int [M], equal for identical texts (`text_classes(texts)`), or None: every text
      distinct. With both None this is the index-based protocol of open_clip / CLIP_benchmark
      (but with ties still counted against the model).
    across_processes: share the query rows among the JAX processes, each ranking its share, and
      gather the ranks to all (`answer_ranks_across_processes`; every process must call this).

  Returns:
    (i2t int [N'] over the N' images that have at least one correct text, t2i int [M]).

  Raises:
    ValueError: mismatched shapes, or text_image / a class array of the wrong shape or dtype.
  """
  image_emb = np.asarray(image_emb)
  text_emb = np.asarray(text_emb)
  if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
    raise ValueError(f"expected image_emb [N, d] and text_emb [M, d], got {image_emb.shape} and "
                     f"{text_emb.shape}")
  classes = dict(image_class=image_class, text_class=text_class,
                 across_processes=across_processes)
  i2t, has_text = image_to_text_ranks(image_emb, text_emb, text_image, chunk_size, **classes)
  t2i = text_to_image_ranks(image_emb, text_emb, text_image, chunk_size, **classes)
  return i2t[has_text], t2i


def recalls_at(i2t: np.ndarray, t2i: np.ndarray,
               ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
  """{"i2t_recall@K", "t2i_recall@K" for K in ks} from 0-based ranks: the share of queries
  ranked below K (NaN for no queries)."""
  out = {}
  for direction, ranks in (("i2t", i2t), ("t2i", t2i)):
    for k in ks:
      out[f"{direction}_recall@{k}"] = float(np.mean(ranks < k)) if len(ranks) else float("nan")
  return out


def rank_summary(i2t: np.ndarray, t2i: np.ndarray) -> dict[str, float]:
  """{"i2t_mean_rank", "i2t_median_rank", "t2i_mean_rank", "t2i_median_rank"}: 1-based ranks
  of the first correct answer (1 = top), as open_clip's retrieval metrics report them; NaN for
  no queries."""
  out = {}
  for direction, ranks in (("i2t", i2t), ("t2i", t2i)):
    one_based = np.asarray(ranks, np.float64) + 1
    out[f"{direction}_mean_rank"] = float(np.mean(one_based)) if len(ranks) else float("nan")
    out[f"{direction}_median_rank"] = (float(np.median(one_based)) if len(ranks)
                                       else float("nan"))
  return out


def retrieval_recalls(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
                      ks: Sequence[int] = DEFAULT_KS, chunk_size: int = CHUNK_ROWS, *,
                      image_class: np.ndarray | None = None,
                      text_class: np.ndarray | None = None) -> dict[str, float]:
  """Image->text and text->image Recall@K with duplicates as equivalent answers (module
  docstring); arguments as `retrieval_ranks`.

  Returns:
    {"i2t_recall@K": float, "t2i_recall@K": float for K in ks}. i2t averages over the images that
    have at least one correct text (NaN if none do).
  """
  i2t, t2i = retrieval_ranks(image_emb, text_emb, text_image, chunk_size,
                             image_class=image_class, text_class=text_class)
  return recalls_at(i2t, t2i, ks)


@EVALUATORS.register("retrieval")
class RetrievalEvaluator(Evaluator):
  """Zero-shot retrieval between an image-like and a text-like modality on one eval split.

  Byte-identical images and identical caption strings of the split are equivalent answers (see
  the module docstring for the rule and how it differs from open_clip / CLIP_benchmark).

  Config fields (`config.evals.<eval_name>`): name ("retrieval") and `SplitFields` (split,
  image_modality, text_modality).

  Metrics: `<eval_name>/i2t_recall@{1,5,10}`, `<eval_name>/t2i_recall@{1,5,10}`,
  `<eval_name>/mean_recall` (the mean of those six), `<eval_name>/{i2t,t2i}_{mean,median}_rank`
  (1-based), `<eval_name>/num_images`, `<eval_name>/num_texts`, and the geometry of the
  embeddings (`clip_jax.evals.geometry`): `<eval_name>/modality_gap`, `<eval_name>/alignment` (over the caption-image pairs),
  `<eval_name>/uniformity_image`, `<eval_name>/uniformity_text`.
  """

  Fields = SplitFields

  def __init__(self, cfg: Mapping[str, Any], *, eval_name: str, tokenizer: Tokenizer,
               load_split: LoadSplitFn):
    super().__init__(cfg, eval_name=eval_name)
    split = self.fields.split
    eval_set = load_split(split)
    self.images = np.asarray(eval_set.images)  # [N, H, W, 3]
    texts = list(eval_set.texts)
    if len(self.images) == 0 or not texts:
      raise ValueError(f"eval split {split!r} (for config.evals.{eval_name}) has "
                       f"{len(self.images)} images and {len(texts)} texts; need at least one of "
                       "each")
    self.text_image = check_text_image(eval_set.text_image, len(self.images), len(texts))
    self.image_class = image_classes(self.images)  # int64 [N]: byte-identical images share one
    self.text_class = text_classes(texts)  # int64 [M]: identical strings share one
    self.texts = texts
    self.tokens = np.asarray(tokenizer.encode(texts))  # [M, L]
    self._embeddings: tuple[np.ndarray, np.ndarray] | None = None  # of the last call
    if len(self.tokens) != len(texts):
      raise ValueError(f"tokenizer.encode returned {len(self.tokens)} rows for {len(texts)} texts")

  @property
  def num_images(self) -> int:
    return len(self.images)

  @property
  def num_texts(self) -> int:
    return len(self.tokens)

  def __call__(self, embed: EmbedFn) -> dict[str, float]:
    image_emb = embed_checked(embed, self.fields.image_modality, self.images, "images")
    text_emb = embed_checked(embed, self.fields.text_modality, self.tokens, "token ids")
    self._embeddings = image_emb, text_emb
    i2t, t2i = retrieval_ranks(image_emb, text_emb, self.text_image,
                               image_class=self.image_class, text_class=self.text_class,
                               across_processes=True)
    recalls = recalls_at(i2t, t2i)
    out = {f"{self.eval_name}/{k}": v for k, v in recalls.items()}
    out[f"{self.eval_name}/mean_recall"] = float(np.mean(list(recalls.values())))
    out.update((f"{self.eval_name}/{k}", v) for k, v in rank_summary(i2t, t2i).items())
    out[f"{self.eval_name}/num_images"] = float(self.num_images)
    out[f"{self.eval_name}/num_texts"] = float(self.num_texts)
    out.update((f"{self.eval_name}/{k}", v)
               for k, v in geometry(image_emb, text_emb, self.text_image).items())
    return out

  def pictures(self) -> dict[str, bytes]:
    """After a call: "grid", `GRID_QUERIES` texts spread over the split with their top-5 images
    (a hit: the text's image or a byte-identical copy), and "projection", both modalities on
    their first two principal components (`clip_jax.evals.pictures`)."""
    if self._embeddings is None:
      return {}
    image_emb, text_emb = self._embeddings
    queries = np.unique(np.linspace(0, len(self.texts) - 1, GRID_QUERIES).round().astype(int))
    k = min(5, self.num_images)
    top = np.argsort(-(text_emb[queries] @ image_emb.T), axis=1, kind="stable")[:, :k]
    hits = self.image_class[top] == self.image_class[self.text_image[queries]][:, None]
    return {"grid": pictures.retrieval_grid([self.texts[q] for q in queries], self.images, top,
                                            hits),
            "projection": pictures.projection_png(image_emb, text_emb, self.text_image,
                                                  title=self.eval_name)}
