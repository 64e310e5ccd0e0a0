"""Tests for the "vit" and "text_transformer" towers (clip_jax.models.vit / .text)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from clip_jax.models import TOWERS
from clip_jax.models.registry import ConfigError
from clip_jax.models.text import TextTransformer


def _text_tower(tiny, **overrides) -> TextTransformer:
  kwargs = tiny.text_tower(**overrides).to_dict()
  return TOWERS.get(kwargs.pop("name"))(**kwargs, dtype="float32", remat=False)


def test_registered_names():
  assert {"vit", "text_transformer"} <= set(TOWERS.names())


def test_vit_rejects_image_size_not_divisible_by_patch(tiny):
  kwargs = tiny.image_tower(patch_size=5).to_dict()
  tower = TOWERS.get(kwargs.pop("name"))(**kwargs)
  with pytest.raises(ConfigError, match=r"patch_size = 5 .*16x16.*config\.data\.image_size"):
    tower.init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))


@pytest.mark.parametrize("causal", [True, False])
def test_text_mask_causal_vs_bidirectional(tiny, causal):
  tower = _text_tower(tiny, causal=causal)
  tokens = np.arange(1, 9, dtype=np.int32)[None]  # [1, 8], no padding
  variables = tower.init(jax.random.key(0), tokens)
  features = jax.jit(lambda t: tower.apply(variables, t, method=TextTransformer.token_features))
  changed = tokens.copy()
  changed[0, 5] = 40  # change a later token
  before, after = np.asarray(features(tokens)), np.asarray(features(changed))
  assert before.shape == (1, 8, tiny.width)
  # Positions from 5 on see the change either way.
  assert not np.allclose(before[0, 5:], after[0, 5:], atol=1e-4)
  if causal:  # Earlier positions do not see it ...
    np.testing.assert_allclose(before[0, :5], after[0, :5], rtol=1e-5, atol=1e-6)
  else:  # ... unless attention is bidirectional.
    assert not np.allclose(before[0, :5], after[0, :5], atol=1e-4)


def test_causal_last_pooling_on_prefixes_equals_token_features(tiny):
  tower = _text_tower(tiny, causal=True, pooling="last")
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, tiny.vocab, size=(2, 8)).astype(np.int32)
  variables = tower.init(jax.random.key(0), tokens)
  features = np.asarray(tower.apply(variables, tokens, method=TextTransformer.token_features))
  for k in (3, 8):
    pooled = np.asarray(tower.apply(variables, tokens[:, :k]))
    np.testing.assert_allclose(pooled, features[:, k - 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling,causal", [("eos", False), ("last", True), ("mean", True)])
def test_text_pooling_ignores_padding(tiny, pooling, causal):
  tower = _text_tower(tiny, causal=causal, pooling=pooling)
  rng = np.random.default_rng(1)
  tokens = tiny.random_tokens(rng, length=5)  # [B, 5], rows padded to different lengths
  variables = tower.init(jax.random.key(0), tokens)
  pooled = np.asarray(tower.apply(variables, tokens))
  assert pooled.shape == (tiny.batch, tiny.width) and pooled.dtype == np.float32

  # Appending pad tokens (up to context_length) does not change the pooled features.
  padded = np.pad(tokens, ((0, 0), (0, 3)))
  np.testing.assert_allclose(np.asarray(tower.apply(variables, padded)), pooled,
                             rtol=1e-5, atol=1e-5)

  # The pooled features are the EOS features / the mean over the non-pad tokens.
  features = np.asarray(tower.apply(variables, tokens, method=TextTransformer.token_features))
  lengths = (tokens != 0).sum(1)
  for row, n in enumerate(lengths):
    expected = features[row, n - 1] if pooling != "mean" else features[row, :n].mean(0)
    np.testing.assert_allclose(pooled[row], expected, rtol=1e-5, atol=1e-5)


def test_text_all_padding_row_is_finite(tiny):
  tower = _text_tower(tiny, pooling="mean")
  tokens = np.array([[5, 6, 0, 0], [0, 0, 0, 0]], np.int32)
  variables = tower.init(jax.random.key(0), tokens)
  assert np.all(np.isfinite(np.asarray(tower.apply(variables, tokens))))


def test_text_rejects_too_long_inputs_and_bad_ids(tiny):
  tower = _text_tower(tiny)
  with pytest.raises(ConfigError, match=r"config\.data\.max_len .*9.*context_length = 8"):
    tower.init(jax.random.key(0), np.ones((1, 9), np.int32))
  with pytest.raises(ConfigError, match=r"vocab_size = 64"):
    tower.init(jax.random.key(0), np.full((1, 4), 64, np.int32))
