"""Tests for clip_jax.models.layers and clip_jax.models.pooling."""

from __future__ import annotations

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_jax.models import layers, pooling


def _reference_attention(params, queries, keys_values, mask, num_heads):
  """Per-example, per-head attention in float64 numpy, from the module's params."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  q = queries.astype(np.float64) @ p["query"]["kernel"] + p["query"]["bias"]
  k = keys_values.astype(np.float64) @ p["key"]["kernel"]  # the key projection has no bias
  assert "bias" not in p["key"]
  v = keys_values.astype(np.float64) @ p["value"]["kernel"] + p["value"]["bias"]
  batch, length, width = q.shape
  head_dim = width // num_heads
  out = np.zeros_like(q)
  for b in range(batch):
    for h in range(num_heads):
      cols = slice(h * head_dim, (h + 1) * head_dim)
      logits = q[b, :, cols] @ k[b, :, cols].T / np.sqrt(head_dim)  # [L, S]
      logits = np.where(mask[b], logits, -np.inf)
      weights = np.exp(logits - logits.max(-1, keepdims=True))
      weights /= weights.sum(-1, keepdims=True)
      out[b, :, cols] = weights @ v[b, :, cols]
  return out @ p["out"]["kernel"] + p["out"]["bias"]


def test_attention_matches_reference_and_ignores_masked_keys():
  rng = np.random.default_rng(0)
  queries = rng.normal(size=(2, 3, 8)).astype(np.float32)
  keys_values = rng.normal(size=(2, 5, 8)).astype(np.float32)
  key_mask = np.array([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0]], bool)
  mask = np.broadcast_to(key_mask[:, None, :], (2, 3, 5))  # [B, L, S]
  attn = layers.MultiHeadAttention(8, num_heads=2, dtype=jnp.float32, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(attn))
  apply = jax.jit(lambda kv: attn(queries, kv, mask[:, None]))

  out = np.asarray(apply(keys_values))
  np.testing.assert_allclose(
      out, _reference_attention(params, queries, keys_values, mask, 2), rtol=1e-4, atol=1e-5)

  # Changing masked keys/values changes nothing; changing an attended one changes the output.
  masked_changed = keys_values.copy()
  masked_changed[~key_mask] += 10.0
  np.testing.assert_array_equal(np.asarray(apply(masked_changed)), out)
  attended_changed = keys_values.copy()
  attended_changed[0, 1] += 1.0
  assert not np.allclose(np.asarray(apply(attended_changed))[0], out[0], atol=1e-3)


def test_causal_self_attention_matches_reference():
  """`is_causal` with a key mask (the text towers' attention) is softmax(QK^T / sqrt(d)) V over
  the keys j <= i that the mask keeps, by mask, by key lengths, and with attention_impl "xla"."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 5, 8)).astype(np.float32)
  key_mask = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], bool)
  attn = layers.MultiHeadAttention(8, num_heads=2, dtype=jnp.float32, rngs=nnx.Rngs(0))
  out = attn(x, x, key_mask[:, None, None, :], is_causal=True)
  mask = key_mask[:, None, :] & np.tril(np.ones((5, 5), bool))[None]  # [B, L, S]
  np.testing.assert_allclose(np.asarray(out), _reference_attention(
      nnx.to_pure_dict(nnx.state(attn)), x, x, mask, 2), rtol=1e-4, atol=1e-5)
  # The trailing keys masked by length (the text towers' form, which cuDNN takes), and
  # attention_impl "xla" (JAX's default): the same numbers.
  lengths = jnp.array([4, 2], jnp.int32)
  by_length = attn(x, x, is_causal=True, key_lengths=lengths)
  np.testing.assert_array_equal(np.asarray(by_length), np.asarray(out))
  attn_xla = layers.MultiHeadAttention(8, num_heads=2, dtype=jnp.float32, attention_impl="xla",
                                       rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(
      np.asarray(attn_xla(x, x, is_causal=True, key_lengths=lengths)), np.asarray(out))


def test_attention_with_all_keys_masked_is_finite():
  x = jnp.ones((1, 2, 8))
  attn = layers.MultiHeadAttention(8, num_heads=2, dtype=jnp.float32, rngs=nnx.Rngs(0))
  out = attn(x, x, jnp.zeros((1, 1, 2, 2), bool))
  assert np.all(np.isfinite(np.asarray(out)))


def test_last_token_and_masked_mean_match_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(4, 6, 3)).astype(np.float32)
  lengths = np.array([6, 1, 3, 0])
  tokens = np.zeros((4, 6), np.int32)
  for row, n in enumerate(lengths):
    tokens[row, :n] = rng.integers(1, 50, size=n)

  expected_index = np.maximum(lengths - 1, 0)
  np.testing.assert_array_equal(np.asarray(pooling.last_token_index(tokens)), expected_index)
  np.testing.assert_array_equal(np.asarray(pooling.last_token(x, tokens)),
                                x[np.arange(4), expected_index])

  mean = np.asarray(pooling.masked_mean(x, tokens != 0))
  for row, n in enumerate(lengths):
    expected = x[row, :n].mean(0) if n else np.zeros(3, np.float32)
    np.testing.assert_allclose(mean[row], expected, rtol=1e-6, atol=1e-6)


def test_map_head_pools_to_one_vector_and_respects_mask():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 5, 8)).astype(np.float32)
  head = pooling.MAPHead(8, num_heads=2, mlp_dim=16, dtype=jnp.float32, rngs=nnx.Rngs(0))
  assert head.probe.shape == (1, 1, 8)
  assert float(jnp.std(head.probe[...])) > 0  # not zero-initialised
  out = head(x)
  assert out.shape == (2, 8) and out.dtype == jnp.float32

  mask = np.array([[1, 1, 1, 0, 0]] * 2, bool)
  masked_out = head(x, mask)
  changed = x.copy()
  changed[:, 3:] += 5.0
  np.testing.assert_array_equal(np.asarray(head(changed, mask)), np.asarray(masked_out))
  assert not np.allclose(np.asarray(head(changed)), np.asarray(out), atol=1e-3)


def test_remat_policies_save_what_they_name(capsys):
  """What a rematerialised block keeps for the backward pass, by policy: "full" only its input,
  "attention" the q/k/v and attention outputs, "attention_mlp" those and the MLP hidden layer;
  "dots" more than "dots_no_batch" (the attention's batched matmuls too). Tracing only: the
  gradients of "full" and "attention_mlp" are checked in test_model.py's remat test."""
  x = jnp.zeros((2, 6, 16))
  lengths = jnp.array([6, 3], jnp.int32)
  saved = {}
  for policy in layers.REMAT_POLICIES:
    model = layers.Transformer(16, 1, 2, 24, jnp.float32, True, remat_policy=policy,
                               rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    jax.ad_checkpoint.print_saved_residuals(
        lambda p: jnp.sum(nnx.merge(graphdef, p)(x, lengths, True) ** 2), params)
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line and "from the argument" not in line]
    saved[policy] = (len(lines), collections.Counter(re.findall(r"named '(\w+)'",
                                                                "\n".join(lines))))
  assert saved["full"][1] == {}
  assert saved["attention"][1] == {layers.QKV: 3, layers.ATTENTION_OUT: 1}
  assert saved["attention_mlp"][1] == {layers.QKV: 3, layers.ATTENTION_OUT: 1,
                                       layers.MLP_HIDDEN: 1}
  assert saved["full"][0] < saved["dots_no_batch"][0] < saved["dots"][0], saved
