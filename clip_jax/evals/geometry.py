"""The geometry of a two-modality embedding space: modality gap, alignment and uniformity.

For L2-normalised image embeddings x_i [N, d] and text embeddings y_t [M, d], with caption t
describing image p(t):

  modality_gap   = || mean_i x_i - mean_t y_t ||_2
                   (the distance between the two modalities' centres; Liang et al. 2022, "Mind
                   the Gap", and the gap measure of Fahim et al. 2024, "It's Not a Modality Gap")
  alignment      = mean_t || x_{p(t)} - y_t ||_2^2
                   (the paired term of Wang & Isola 2020, "Understanding Contrastive
                   Representation Learning through Alignment and Uniformity", alpha = 2)
  uniformity(z)  = log mean_{i < j} exp(-2 || z_i - z_j ||_2^2)
                   (Wang & Isola 2020, t = 2), for each modality on its own.

Lower alignment is better (paired embeddings coincide at 0); lower uniformity is more uniform
(for unit vectors it is at least -2 mean ||z_i - z_j||^2 >= -4 n / (n - 1), by Jensen; 0 when
all points coincide). With identical embeddings in both modalities the gap is 0.

Uniformity is O(n^2 d): over at most `UNIFORMITY_ROWS` rows, a fixed subset (the first rows of a
permutation seeded by `seed`) when a modality has more, so that a COCO-size split costs seconds.
Every sum is taken in float64.
"""

from __future__ import annotations

import numpy as np

UNIFORMITY_ROWS = 4096  # rows of one modality that uniformity is computed over (a fixed subset)
_BLOCK_ROWS = 1024


def modality_gap(image_emb: np.ndarray, text_emb: np.ndarray) -> float:
  """|| mean(image_emb) - mean(text_emb) ||_2 for [N, d] and [M, d] embeddings."""
  x = np.asarray(image_emb, np.float64)
  y = np.asarray(text_emb, np.float64)
  return float(np.linalg.norm(x.mean(axis=0) - y.mean(axis=0)))


def alignment(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray) -> float:
  """mean_t || image_emb[text_image[t]] - text_emb[t] ||^2 over the M captions.

  Args:
    image_emb: [N, d]; text_emb: [M, d]; text_image: int [M], the image each caption describes.
  """
  x = np.asarray(image_emb, np.float64)[np.asarray(text_image)]
  y = np.asarray(text_emb, np.float64)
  return float(np.mean(np.sum(np.square(x - y), axis=1)))


def uniformity(emb: np.ndarray, max_rows: int = UNIFORMITY_ROWS, seed: int = 0) -> float:
  """log mean_{i < j} exp(-2 || z_i - z_j ||^2) over the rows of `emb` [n, d], n >= 2.

  Over a fixed subset of `max_rows` rows (seeded by `seed`) when there are more. Computed in
  blocks of rows as a log-sum-exp, in float64.

  Raises:
    ValueError: fewer than 2 rows.
  """
  z = np.asarray(emb, np.float64)
  if len(z) < 2:
    raise ValueError(f"uniformity needs at least 2 embeddings; got {len(z)}")
  if len(z) > max_rows:
    z = z[np.random.default_rng(seed).permutation(len(z))[:max_rows]]
  n = len(z)
  sq = np.sum(np.square(z), axis=1)
  # Running log-sum-exp of -2 ||z_i - z_j||^2 over the pairs i < j.
  total, shift = 0.0, None
  for start in range(0, n, _BLOCK_ROWS):
    rows = slice(start, min(start + _BLOCK_ROWS, n))
    d2 = np.maximum(sq[rows, None] + sq[None, :] - 2.0 * z[rows] @ z.T, 0.0)
    upper = np.arange(n)[None, :] > np.arange(rows.start, rows.stop)[:, None]
    logits = -2.0 * d2[upper]
    if logits.size == 0:
      continue
    block_max = float(np.max(logits))
    if shift is None or block_max > shift:
      total = total * np.exp(shift - block_max) if shift is not None else 0.0
      shift = block_max
    total += float(np.sum(np.exp(logits - shift)))
  return float(shift + np.log(total) - np.log(n * (n - 1) / 2))


def geometry(image_emb: np.ndarray, text_emb: np.ndarray,
             text_image: np.ndarray) -> dict[str, float]:
  """{"modality_gap", "alignment", "uniformity_image", "uniformity_text"} (see the module
  docstring); uniformity is NaN for a modality with fewer than 2 embeddings."""
  def uniform(emb):
    return uniformity(emb) if len(emb) >= 2 else float("nan")

  return {"modality_gap": modality_gap(image_emb, text_emb),
          "alignment": alignment(image_emb, text_emb, text_image),
          "uniformity_image": uniform(image_emb), "uniformity_text": uniform(text_emb)}
