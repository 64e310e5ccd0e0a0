"""Tests for the "vit" and "text_transformer" towers (clip_jax.models.vit / .text)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from clip_jax.models import TOWERS
from clip_jax.models.model import resolve_tower
from clip_jax.models.registry import ConfigError
from clip_jax.models.text import TextTransformer


def _tower(config, inputs_shape, dtype=np.float32) -> nnx.Module:
  """The tower of `config` (a tower section) built, checks included, as the model builds it."""
  inputs = jax.ShapeDtypeStruct(inputs_shape, dtype)
  return resolve_tower("x", config).build(inputs, nnx.Rngs(0))


def _text_tower(tiny, length=8, **overrides) -> TextTransformer:
  return _tower(tiny.text_tower(**overrides), (1, length), np.int32)


def test_registered_names():
  assert {"vit", "text_transformer"} <= set(TOWERS.names())


def test_vit_drops_the_remainder_of_a_side_the_patch_does_not_divide(tiny):
  # As a stride-p convolution without padding (HF's and big_vision's patch embedding; SigLIP
  # So400m/14 at 384 px): 18 x 19 px with 4 px patches sees the top-left 16 x 16.
  tower = _tower(tiny.image_tower(patch_size=4), (2, 18, 19, 3))
  assert tower.pos_embedding[...].shape[0] == 4 * 4 + (tower.pooling == "cls")
  images = np.random.default_rng(0).normal(size=(2, 18, 19, 3)).astype(np.float32)
  cropped = _tower(tiny.image_tower(patch_size=4), (2, 16, 16, 3))
  nnx.update(cropped, nnx.state(tower))
  np.testing.assert_array_equal(tower(images), cropped(images[:, :16, :16]))
  with pytest.raises(ConfigError, match=r"patch_size = 5 is larger than .*4x16.*image_size"):
    _tower(tiny.image_tower(patch_size=5), (1, 4, 16, 3))


@pytest.mark.parametrize("causal", [True, False])
def test_text_mask_causal_vs_bidirectional(tiny, causal):
  tower = _text_tower(tiny, causal=causal)
  tokens = np.arange(1, 9, dtype=np.int32)[None]  # [1, 8], no padding
  features = jax.jit(tower.token_features)
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
  features = np.asarray(tower.token_features(tokens))
  for k in (3, 8):
    pooled = np.asarray(tower(tokens[:, :k]))
    np.testing.assert_allclose(pooled, features[:, k - 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling,causal", [("eos", False), ("last", True), ("mean", True)])
def test_text_pooling_ignores_padding(tiny, pooling, causal):
  tower = _text_tower(tiny, length=5, causal=causal, pooling=pooling)
  rng = np.random.default_rng(1)
  tokens = tiny.random_tokens(rng, length=5)  # [B, 5], rows padded to different lengths
  pooled = np.asarray(tower(tokens))
  assert pooled.shape == (tiny.batch, tiny.width) and pooled.dtype == np.float32

  # Appending pad tokens (up to context_length) does not change the pooled features.
  padded = np.pad(tokens, ((0, 0), (0, 3)))
  np.testing.assert_allclose(np.asarray(tower(padded)), pooled,
                             rtol=1e-5, atol=1e-5)

  # The pooled features are the EOS features / the mean over the non-pad tokens.
  features = np.asarray(tower.token_features(tokens))
  lengths = (tokens != 0).sum(1)
  for row, n in enumerate(lengths):
    expected = features[row, n - 1] if pooling != "mean" else features[row, :n].mean(0)
    np.testing.assert_allclose(pooled[row], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling", ["eos", "mean"])
def test_text_pad_id_inside_the_text_is_a_token(tiny, pooling):
  """CLIP's vocabulary gives "!" the pad id 0: a 0 before the last non-pad token is a token
  (attended to, pooled over, EOS found after it); only the trailing zeros are padding. The row
  must give what it gives with that 0 spelled as another id of the same embedding."""
  tower = _text_tower(tiny, length=8, causal=False, pooling=pooling)
  spare = tiny.vocab - 1
  table = tower.token_embedding[...]
  tower.token_embedding[...] = table.at[spare].set(table[0])
  with_zero = np.array([[9, 5, 0, 7, 3, 0, 0, 0]], np.int32)  # [BOS, a, "!", b, EOS, pad...]
  spelled = np.where(np.arange(8) == 2, spare, with_zero).astype(np.int32)
  np.testing.assert_allclose(np.asarray(tower(with_zero)), np.asarray(tower(spelled)),
                             rtol=1e-5, atol=1e-5)


def test_text_all_padding_row_is_finite(tiny):
  tower = _text_tower(tiny, length=4, pooling="mean")
  tokens = np.array([[5, 6, 0, 0], [0, 0, 0, 0]], np.int32)
  assert np.all(np.isfinite(np.asarray(tower(tokens))))


def test_text_rejects_too_long_inputs_and_bad_ids(tiny):
  with pytest.raises(ConfigError, match=r"config\.data\.max_len .*9.*context_length = 8"):
    _text_tower(tiny, length=9)
  tower = _text_tower(tiny)
  with pytest.raises(ConfigError, match=r"vocab_size = 64"):
    tower(np.full((1, 4), 64, np.int32))


def _param_count(tower_config: dict, inputs: jax.ShapeDtypeStruct) -> int:
  """Parameters of the tower, built abstractly (nnx.eval_shape: nothing is allocated)."""
  spec = resolve_tower("x", tower_config)
  tower = nnx.eval_shape(lambda: spec.build(inputs, nnx.Rngs(0)))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(tower)))


IMAGES_224 = jax.ShapeDtypeStruct((1, 224, 224, 3), np.float32)
CLIP_TOKENS = jax.ShapeDtypeStruct((1, 77), np.int32)
CLIP_TEXT = dict(name="text_transformer", vocab_size=49408, context_length=77)


@pytest.mark.parametrize("tower_config,inputs,expected,rtol", [
    # timm's ImageNet ViT-B/16 (class token) without its 1000-class head, less the key biases
    # this attention leaves out (depth x width): 86,567,656 - 769,000 - 12 x 768.
    (dict(name="vit", variant="B/16", pooling="cls"), IMAGES_224, 85_789_440, 0),
    # SigLIP So400m/14 image tower with its attention-pooling head: 427.68 M, less 28 x 1152.
    (dict(name="vit", variant="So400m/14"), IMAGES_224, 427.68e6 - 28 * 1152, 1e-4),
    # CLIP's text tower for ViT-B (Radford et al. 2021): 63 M.
    (dict(CLIP_TEXT, variant="B"), CLIP_TOKENS, 63e6, 0.01),
])
def test_named_sizes_have_the_published_parameter_counts(tower_config, inputs, expected, rtol):
  assert _param_count(tower_config, inputs) == pytest.approx(expected, rel=rtol, abs=0)


def test_named_size_fields_can_be_overridden_and_unknown_sizes_are_named():
  spec = resolve_tower("image", dict(name="vit", variant="B/16", depth=2, pooling="gap"))
  tower = nnx.eval_shape(lambda: spec.build(IMAGES_224, nnx.Rngs(0)))
  assert tower.out_features == 768 and tower.patch_size == 16
  assert [n for n in vars(tower.transformer) if n.startswith("block_")] == ["block_0", "block_1"]
  assert tower.transformer.block_0.mlp.fc1.kernel.shape == (768, 3072)
  with pytest.raises(ConfigError, match=r"config\.model\.towers\.image\.variant = 'B' is not "
                                        r"'<size>/<patch size>' .*Ti, S, M, B, L, H, g, G, So400m"):
    resolve_tower("image", dict(name="vit", variant="B"))
  with pytest.raises(ConfigError, match=r"config\.model\.towers\.text\.variant = 'Ti' .*S, M, B"):
    resolve_tower("text", dict(CLIP_TEXT, variant="Ti"))
