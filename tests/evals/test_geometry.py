"""clip_jax.evals.geometry against direct numpy sums over every pair."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from clip_jax.evals.geometry import alignment, geometry, modality_gap, uniformity


def unit_rows(rng, n, d=16):
  v = rng.normal(size=(n, d))
  return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def reference_uniformity(z):
  z = np.asarray(z, np.float64)
  terms = [math.exp(-2 * float(np.sum((z[i] - z[j]) ** 2)))
           for i, j in itertools.combinations(range(len(z)), 2)]
  return math.log(sum(terms) / len(terms))


def test_metrics_equal_direct_sums():
  rng = np.random.default_rng(0)
  images, texts = unit_rows(rng, 40), unit_rows(rng, 57)
  text_image = rng.integers(0, 40, size=57)
  want_gap = float(np.linalg.norm(images.astype(np.float64).mean(0)
                                 - texts.astype(np.float64).mean(0)))
  want_align = float(np.mean([np.sum((images[text_image[t]].astype(np.float64) - texts[t]) ** 2)
                              for t in range(57)]))
  got = geometry(images, texts, text_image)
  assert got["modality_gap"] == pytest.approx(want_gap, rel=1e-12)
  assert got["alignment"] == pytest.approx(want_align, rel=1e-12)
  assert got["uniformity_image"] == pytest.approx(reference_uniformity(images), rel=1e-9)
  assert got["uniformity_text"] == pytest.approx(reference_uniformity(texts), rel=1e-9)


def test_uniformity_across_blocks_and_its_bounds(monkeypatch):
  rng = np.random.default_rng(1)
  z = unit_rows(rng, 300, d=3)
  want = reference_uniformity(z)
  monkeypatch.setattr("clip_jax.evals.geometry._BLOCK_ROWS", 7)  # many blocks, a short last one
  assert uniformity(z) == pytest.approx(want, rel=1e-9)
  assert -4 * 300 / 299 <= want < 0
  assert uniformity(np.repeat(z[:1], 5, axis=0)) == pytest.approx(0.0, abs=1e-12)
  # Above max_rows, a fixed subset: the same value on every call.
  assert uniformity(z, max_rows=50) == uniformity(z, max_rows=50) == pytest.approx(
      reference_uniformity(z[np.random.default_rng(0).permutation(300)[:50]]), rel=1e-9)
  with pytest.raises(ValueError, match="at least 2"):
    uniformity(z[:1])


def test_identical_modalities_have_no_gap_and_perfect_alignment():
  z = unit_rows(np.random.default_rng(2), 10)
  assert modality_gap(z, z) == pytest.approx(0.0, abs=1e-12)
  assert alignment(z, z, np.arange(10)) == pytest.approx(0.0, abs=1e-12)
  # Opposite modalities: the gap is twice the norm of the mean.
  assert modality_gap(z, -z) == pytest.approx(2 * np.linalg.norm(z.astype(np.float64).mean(0)))
