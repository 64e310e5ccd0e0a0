"""PNG pictures of an evaluation, drawn with matplotlib's Agg canvas (no pyplot, no global state):

* `retrieval_grid`: a few text queries, each with its top-K images, a hit framed in green and a
  miss in red;
* `confusion_png`: the row-normalised confusion matrix of a classification (true class by row);
* `projection_png`: image and text embeddings projected on their first two principal components,
  with the two modalities' means and the modality gap ||mean(image) - mean(text)|| (in the full
  space) in the title, and a few image-text pairs joined by lines.

Each returns the PNG's bytes; `clip_jax.evaluate` writes them next to the evaluation's JSON.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

MAX_PAIR_LINES = 40
MAX_TICK_LABELS = 30


def _figure(width: float, height: float):
  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig


def _png(fig) -> bytes:
  out = io.BytesIO()
  fig.savefig(out, format="png", dpi=100)
  return out.getvalue()


def displayable(image: np.ndarray) -> np.ndarray:
  """A model-input image (float [H, W, 3], any normalisation) rescaled to [0, 1] by its own
  minimum and maximum (a flat image becomes mid-grey)."""
  image = np.asarray(image, np.float32)
  low, high = float(image.min()), float(image.max())
  return np.full_like(image, 0.5) if high <= low else (image - low) / (high - low)


def retrieval_grid(queries: Sequence[str], images: np.ndarray, top: np.ndarray,
                   hits: np.ndarray) -> bytes:
  """A row per text query: the query, then its top-K images (green frame: a right answer).

  Args:
    queries: Q texts.
    images: float [N, H, W, 3], the gallery (any normalisation, see `displayable`).
    top: int [Q, K], each query's best images, best first.
    hits: bool [Q, K], whether each is a right answer.
  """
  num_q, k = np.shape(top)
  fig = _figure(2.0 + 1.4 * k, 1.5 * num_q + 0.3)
  grid = fig.add_gridspec(num_q, k + 1, width_ratios=[2.0] + [1.0] * k)
  for q in range(num_q):
    ax = fig.add_subplot(grid[q, 0])
    ax.set_axis_off()
    ax.text(0.0, 0.5, queries[q][:80], ha="left", va="center", wrap=True, fontsize=8,
            transform=ax.transAxes)
    for j in range(k):
      ax = fig.add_subplot(grid[q, j + 1])
      ax.imshow(displayable(images[top[q, j]]))
      ax.set_xticks([])
      ax.set_yticks([])
      colour = "tab:green" if hits[q, j] else "tab:red"
      for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)
      if q == 0:
        ax.set_title(f"#{j + 1}", fontsize=8)
  fig.tight_layout()
  return _png(fig)


def confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
  """int64 [C, C]: entry [t, p] counts the images of true class t predicted as p."""
  out = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(out, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
  return out


def confusion_png(matrix: np.ndarray, classnames: Sequence[str], title: str = "") -> bytes:
  """The confusion matrix `matrix` [C, C] (true class by row), each row divided by its total;
  class names as tick labels when there are at most `MAX_TICK_LABELS` classes."""
  matrix = np.asarray(matrix, np.float64)
  rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1.0)
  c = len(matrix)
  side = min(12.0, 3.0 + 0.25 * c)
  fig = _figure(side + 1.5, side)
  ax = fig.add_subplot(1, 1, 1)
  shown = ax.imshow(rows, cmap="viridis", vmin=0.0, vmax=1.0)
  fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
  if c <= MAX_TICK_LABELS:
    ax.set_xticks(range(c), [str(n)[:20] for n in classnames], rotation=90, fontsize=7)
    ax.set_yticks(range(c), [str(n)[:20] for n in classnames], fontsize=7)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title or f"confusion matrix ({c} classes)")
  fig.tight_layout()
  return _png(fig)


def principal_plane(points: np.ndarray) -> np.ndarray:
  """float64 [n, 2]: `points` [n, d] centred and projected on their first two principal axes
  (zeros in a missing axis when d or n is below 2)."""
  x = np.asarray(points, np.float64)
  x = x - x.mean(axis=0)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  out = np.zeros((len(x), 2))
  out[:, :min(2, len(vt))] = x @ vt[:2].T
  return out


def projection_png(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
                   title: str = "") -> bytes:
  """Image and text embeddings ([N, d], [M, d]; text m describes image text_image[m]) on their
  joint first two principal components, with both means and the modality gap."""
  image_emb = np.asarray(image_emb, np.float64)
  text_emb = np.asarray(text_emb, np.float64)
  plane = principal_plane(np.concatenate([image_emb, text_emb]))
  img, txt = plane[:len(image_emb)], plane[len(image_emb):]
  gap = float(np.linalg.norm(image_emb.mean(axis=0) - text_emb.mean(axis=0)))
  fig = _figure(6.0, 5.5)
  ax = fig.add_subplot(1, 1, 1)
  step = max(1, len(text_image) // MAX_PAIR_LINES)
  for m in range(0, len(text_image), step):
    a, b = img[text_image[m]], txt[m]
    ax.plot([a[0], b[0]], [a[1], b[1]], color="0.75", linewidth=0.6, zorder=1)
  ax.scatter(img[:, 0], img[:, 1], s=8, color="tab:blue", label="images", zorder=2)
  ax.scatter(txt[:, 0], txt[:, 1], s=8, color="tab:orange", label="texts", zorder=2)
  for points, colour in ((img, "navy"), (txt, "darkorange")):
    mean = points.mean(axis=0)
    ax.scatter([mean[0]], [mean[1]], marker="X", s=120, color=colour, edgecolor="black",
               zorder=3)
  ax.set_xlabel("principal component 1")
  ax.set_ylabel("principal component 2")
  ax.legend(loc="best", fontsize="small")
  ax.set_title((title + "\n" if title else "") + f"modality gap {gap:.3f} (X: the means)")
  fig.tight_layout()
  return _png(fig)
