"""Zero-shot image-text retrieval: Recall@K in both directions.

Definitions (the usual CLIP retrieval protocol, one image may have several captions):

- image -> text: for image i, rank all M texts by cosine similarity. Image i is a hit at K if ANY
  text describing i is among the top K.
- text -> image: for text t, rank all N images. Text t is a hit at K if the image it describes is
  among the top K.

Ties are counted against the model (pessimistic): the rank of the answer is the number of WRONG
candidates whose similarity is >= the answer's, and a query is a hit at K iff that rank < K. The
result does not depend on the order of the data, and a degenerate model (e.g. all embeddings
equal, a constant similarity matrix) scores 0 wherever there are at least K wrong candidates,
never 1. Other captions of the same image never count against an image->text query. NaN
similarities are treated as -inf (so a diverged model scores 0, not 1). Images that no text
describes are left out of the image->text average.

Similarities are computed in float32 numpy, a block of query rows at a time, so memory stays
bounded for large N x M.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from clip_jax.evals.base import REQUIRED, EmbedFn, Evaluator, LoadSplitFn, Tokenizer, embed_checked
from clip_jax.evals.registry import EVALUATORS
from clip_jax.registry import ConfigError

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
CHUNK_ROWS = 4096  # query rows per similarity block
MAX_BLOCK_ELEMENTS = 1 << 26  # cap a block at 64M similarities (256 MiB float32)


def row_blocks(num_rows: int, num_cols: int, chunk_size: int = CHUNK_ROWS) -> Iterator[slice]:
  """Slices of at most `chunk_size` rows, fewer if a [rows, num_cols] block would be too large."""
  rows = max(1, min(chunk_size, MAX_BLOCK_ELEMENTS // max(num_cols, 1)))
  for start in range(0, num_rows, rows):
    yield slice(start, min(start + rows, num_rows))


def _similarity(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
  """float32 [q, d] x [k, d] -> [q, k] dot products, NaN replaced by -inf."""
  sim = np.asarray(queries, np.float32) @ np.asarray(keys, np.float32).T
  return np.where(np.isnan(sim), -np.inf, sim)


def image_to_text_ranks(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
                        chunk_size: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
  """Rank of each image's best-scoring caption among the wrong captions.

  Args:
    image_emb: float [N, d] image embeddings (scores are plain dot products).
    text_emb: float [M, d] text embeddings.
    text_image: int [M], the image index each text describes.
    chunk_size: image rows per similarity block.

  Returns:
    (ranks int64 [N], has_text bool [N]). ranks[i] = number of texts not describing image i whose
    score is >= the best score among image i's texts; meaningless where has_text[i] is False.
  """
  n, m = len(image_emb), len(text_emb)
  ranks = np.zeros(n, np.int64)
  has_text = np.zeros(n, bool)
  for rows in row_blocks(n, m, chunk_size):
    sim = _similarity(image_emb[rows], text_emb)  # [c, M]
    positive = text_image[None, :] == np.arange(rows.start, rows.stop)[:, None]  # [c, M]
    best = np.where(positive, sim, -np.inf).max(axis=1, initial=-np.inf)  # [c]
    ranks[rows] = np.sum((sim >= best[:, None]) & ~positive, axis=1)
    has_text[rows] = positive.any(axis=1)
  return ranks, has_text


def text_to_image_ranks(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
                        chunk_size: int = CHUNK_ROWS) -> np.ndarray:
  """Rank of each text's image among the other images.

  Args: as `image_to_text_ranks`; chunk_size is in text rows.

  Returns:
    ranks int64 [M]: ranks[t] = number of images other than text_image[t] whose score is >= the
    score of text_image[t].
  """
  n, m = len(image_emb), len(text_emb)
  ranks = np.zeros(m, np.int64)
  for rows in row_blocks(m, n, chunk_size):
    sim = _similarity(text_emb[rows], image_emb)  # [c, N]
    own = sim[np.arange(rows.stop - rows.start), text_image[rows]]  # [c]
    # The own image always satisfies sim >= own (no NaN after _similarity): subtract it.
    ranks[rows] = np.sum(sim >= own[:, None], axis=1) - 1
  return ranks


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


def retrieval_recalls(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
                      ks: Sequence[int] = DEFAULT_KS,
                      chunk_size: int = CHUNK_ROWS) -> dict[str, float]:
  """Image->text and text->image Recall@K (see the module docstring for the exact definition).

  Args:
    image_emb: float [N, d] image embeddings; scores are dot products, so pass unit-norm rows for
      cosine similarity.
    text_emb: float [M, d] text embeddings.
    text_image: int [M], the image each text describes.
    ks: the K values.
    chunk_size: query rows per similarity block.

  Returns:
    {"i2t_recall@K": float, "t2i_recall@K": float for K in ks}. i2t averages over the images that
    have at least one text (NaN if none do).
  """
  image_emb = np.asarray(image_emb)
  text_emb = np.asarray(text_emb)
  if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
    raise ValueError(f"expected image_emb [N, d] and text_emb [M, d], got {image_emb.shape} and "
                     f"{text_emb.shape}")
  text_image = check_text_image(text_image, len(image_emb), len(text_emb))
  i2t, has_text = image_to_text_ranks(image_emb, text_emb, text_image, chunk_size)
  i2t = i2t[has_text]
  t2i = text_to_image_ranks(image_emb, text_emb, text_image, chunk_size)
  out = {}
  for k in ks:
    out[f"i2t_recall@{k}"] = float(np.mean(i2t < k)) if len(i2t) else float("nan")
  for k in ks:
    out[f"t2i_recall@{k}"] = float(np.mean(t2i < k)) if len(t2i) else float("nan")
  return out


@EVALUATORS.register("retrieval")
class RetrievalEvaluator(Evaluator):
  """Zero-shot retrieval between an image-like and a text-like modality on one eval split.

  Config fields (`config.evals.<eval_name>`):
    name: "retrieval".
    split: the split passed to `load_eval_split` (e.g. "heldout").
    image_modality: the modality name `embed` gets the images under (default "image").
    text_modality: the modality name `embed` gets the token ids under (default "text").

  Metrics: `<eval_name>/i2t_recall@{1,5,10}`, `<eval_name>/t2i_recall@{1,5,10}`,
  `<eval_name>/mean_recall` (the mean of those six), `<eval_name>/num_images`,
  `<eval_name>/num_texts`.
  """

  FIELDS = {"name": REQUIRED, "split": REQUIRED, "image_modality": "image",
            "text_modality": "text"}

  def __init__(self, eval_name: str, cfg: Mapping[str, Any], *, tokenizer: Tokenizer,
               load_split: LoadSplitFn):
    super().__init__(eval_name, cfg)
    split = self.fields["split"]
    if not isinstance(split, str) or not split:
      raise ConfigError(f"{self.field_path('split')} = {split!r}; give the name of an eval split "
                        "(e.g. 'heldout')")
    eval_set = load_split(split)
    self.images = np.asarray(eval_set.images)  # [N, H, W, 3]
    texts = list(eval_set.texts)
    if len(self.images) == 0 or not texts:
      raise ValueError(f"eval split {split!r} (for config.evals.{eval_name}) has "
                       f"{len(self.images)} images and {len(texts)} texts; need at least one of "
                       "each")
    self.text_image = check_text_image(eval_set.text_image, len(self.images), len(texts))
    self.tokens = np.asarray(tokenizer.encode(texts))  # [M, L]
    if len(self.tokens) != len(texts):
      raise ValueError(f"tokenizer.encode returned {len(self.tokens)} rows for {len(texts)} texts")

  @property
  def num_images(self) -> int:
    return len(self.images)

  @property
  def num_texts(self) -> int:
    return len(self.tokens)

  def __call__(self, embed: EmbedFn) -> dict[str, float]:
    image_emb = embed_checked(embed, self.fields["image_modality"], self.images, "images")
    text_emb = embed_checked(embed, self.fields["text_modality"], self.tokens, "token ids")
    recalls = retrieval_recalls(image_emb, text_emb, self.text_image)
    out = {f"{self.eval_name}/{k}": v for k, v in recalls.items()}
    out[f"{self.eval_name}/mean_recall"] = float(np.mean(list(recalls.values())))
    out[f"{self.eval_name}/num_images"] = float(self.num_images)
    out[f"{self.eval_name}/num_texts"] = float(self.num_texts)
    return out
