"""clip_jax.evals.pictures: the numbers behind the pictures, and that each draws a PNG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from sklearn.decomposition import PCA

from clip_jax.evals import pictures


def png_size(data: bytes) -> tuple[int, int]:
  with Image.open(io.BytesIO(data)) as image:
    assert image.format == "PNG"
    return image.size


def test_confusion_counts_true_by_predicted():
  labels, predicted = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2])
  want = np.zeros((3, 3), int)
  for t, p in zip(labels, predicted):
    want[t, p] += 1
  np.testing.assert_array_equal(pictures.confusion(labels, predicted, 3), want)
  assert png_size(pictures.confusion_png(want, ["a", "b", "c"]))[0] > 200


def test_principal_plane_equals_pca_up_to_sign():
  x = np.random.default_rng(0).normal(size=(50, 6)) * [5, 3, 1, 1, 1, 1]
  ours, ref = pictures.principal_plane(x), PCA(n_components=2).fit_transform(x)
  np.testing.assert_allclose(np.abs(ours), np.abs(ref), atol=1e-9)
  assert pictures.principal_plane(np.ones((3, 1))).shape == (3, 2)  # one dimension: zeros added


def test_projection_and_grid_draw():
  rng = np.random.default_rng(1)
  image_emb, text_emb = rng.normal(size=(20, 8)), rng.normal(size=(30, 8)) + 2.0
  assert png_size(pictures.projection_png(image_emb, text_emb, np.arange(30) % 20)) == (600, 550)
  images = rng.uniform(-1, 1, size=(10, 8, 8, 3))
  top = np.array([[0, 1, 2], [3, 4, 5]])
  width, height = png_size(pictures.retrieval_grid(["a cat", "a dog"], images, top,
                                                   top % 2 == 0))
  assert width > height > 0
  flat = pictures.displayable(np.full((2, 2, 3), 7.0))
  assert np.all(flat == 0.5)
  np.testing.assert_allclose(pictures.displayable(np.array([[[-1.0, 0.0, 1.0]]])), [[[0, 0.5, 1]]])
