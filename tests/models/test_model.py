"""Tests for clip_jax.models.model: make_model, MultiTower, config validation."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from jax.sharding import PartitionSpec as P

from clip_jax.models import (TOWERS, MultiTower, layers, make_model, parse_model_config,
                             split_params)
from clip_jax.models.registry import REQUIRED, ConfigError


@TOWERS.register("_test_mean_tower", fields=dict(width=REQUIRED))
class _MeanTower(nnx.Module):
  """A minimal tower registered by this test only: mean over time, then Linear.

  [B, T, F] -> [B, width].
  """

  def __init__(self, inputs, *, width, dtype=jnp.float32, remat=False, remat_policy="full",
               attention_impl=None, rngs):
    del remat, remat_policy, attention_impl
    self.out_features = width
    self.dense = nnx.Linear(inputs.shape[-1], width, dtype=dtype, rngs=rngs)

  def __call__(self, x, *, rngs=None):
    del rngs
    return self.dense(x.mean(axis=1)).astype(jnp.float32)


def _build(config, batch):
  """(graphdef, params) of the model of `config` for `batch`'s shapes."""
  return split_params(make_model(config, batch, rngs=nnx.Rngs(0)))


def _apply(graphdef, params, batch, **kwargs):
  return nnx.merge(graphdef, params)(batch, **kwargs)


def _assert_embeddings(out, modalities, batch_size, embed_dim):
  assert set(out) == set(modalities)
  for modality, emb in out.items():
    assert emb.shape == (batch_size, embed_dim) and emb.dtype == jnp.float32, modality
    np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("image_pooling,text_pooling,causal",
                         [("map", "eos", False), ("cls", "mean", True), ("gap", "last", True)])
def test_outputs_and_params_layout(tiny, batch, image_pooling, text_pooling, causal):
  config = tiny.model_config()
  config.towers.image.pooling = image_pooling
  config.towers.text.pooling = text_pooling
  config.towers.text.causal = causal
  model = make_model(config, batch, rngs=nnx.Rngs(0))
  assert isinstance(model, MultiTower)
  graphdef, params = split_params(model)

  assert set(params) == {"image", "text"}
  for modality in ("image", "text"):
    assert set(params[modality]) == {"encoder", "projection"}
    assert set(params[modality]["projection"]) == {"kernel"}
    assert params[modality]["projection"]["kernel"].shape == (tiny.width, tiny.embed_dim)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  image_encoder = params["image"]["encoder"]
  assert ("cls" in image_encoder) == (image_pooling == "cls")
  assert ("map_head" in image_encoder) == (image_pooling == "map")
  num_tokens = (tiny.image_size // 4) ** 2 + (image_pooling == "cls")
  assert image_encoder["pos_embedding"].shape == (num_tokens, tiny.width)

  out = _apply(graphdef, params, batch, rng=jax.random.key(1))  # "instance_id" is ignored
  _assert_embeddings(out, ("image", "text"), tiny.batch, tiny.embed_dim)
  for modality in ("image", "text"):
    emb = nnx.merge(graphdef, params).embed(batch[modality], modality)
    np.testing.assert_allclose(np.asarray(emb), np.asarray(out[modality]), rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_is_close_to_float32(tiny, batch):
  model16, params = _build(tiny.model_config(dtype="bfloat16"), batch)
  model32, params32 = jax.eval_shape(lambda: _build(tiny.model_config(), batch))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  assert jax.tree.structure(params) == jax.tree.structure(params32)

  jaxpr = str(jax.make_jaxpr(lambda p: _apply(model16, p, batch))(params))
  assert re.search(r"dot_general.*bf16|bf16.*dot_general", jaxpr), "no bfloat16 matmuls"
  out16 = _apply(model16, params, batch)
  out32 = _apply(model32, params, batch)
  _assert_embeddings(out16, ("image", "text"), tiny.batch, tiny.embed_dim)
  for modality in out32:
    a, b = np.asarray(out16[modality]), np.asarray(out32[modality])
    assert not np.array_equal(a, b)  # really computed in a different precision
    np.testing.assert_allclose(a, b, atol=0.05)
    assert np.min(np.sum(a * b, axis=-1)) > 0.995  # cosine similarity


def test_remat_gives_same_outputs_and_gradients(tiny, batch):
  """Remat gives the outputs and gradients of no remat, with the default policy "full" (text
  tower) and with one that saves named outputs, "attention_mlp" (set for the image tower)."""
  config = tiny.model_config()
  config.towers.image.depth = config.towers.text.depth = 1  # compile time; remat is per block
  model, params = _build(config, batch)
  config.remat = True
  config.towers.image.remat_policy = "attention_mlp"
  model_remat, params_remat = jax.eval_shape(lambda: _build(config, batch))
  assert jax.tree.structure(params) == jax.tree.structure(params_remat)

  def loss(m, p):
    out = _apply(m, p, batch, rng=jax.random.key(1))
    return jnp.sum(out["image"] @ out["text"].T * jnp.arange(tiny.batch)), out

  assert re.search(r"remat|checkpoint", str(jax.make_jaxpr(lambda p: loss(model_remat, p))(params)))
  (l1, out1), g1 = jax.jit(jax.value_and_grad(lambda p: loss(model, p), has_aux=True))(params)
  (l2, out2), g2 = jax.jit(
      jax.value_and_grad(lambda p: loss(model_remat, p), has_aux=True))(params)
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(out1), jax.tree.leaves(out2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert jax.tree.structure(g1) == jax.tree.structure(g2)
  for (path, a), b in zip(jax.tree.leaves_with_path(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  # The gradient reaches every tower parameter.
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g1))


def test_attention_impl_reaches_every_attention_and_cudnn_needs_a_gpu(tiny, batch):
  """config.model.attention_impl reaches every attention (ViT blocks, MAP head, text blocks);
  "cudnn" on a CPU is a ConfigError at build, not a failure inside XLA."""
  config = tiny.model_config(attention_impl="xla")
  model = nnx.eval_shape(lambda: make_model(config, batch, rngs=nnx.Rngs(0)))
  impls = [m.attention_impl for _, m in nnx.iter_graph(model)
           if isinstance(m, layers.MultiHeadAttention)]
  assert impls == ["xla"] * (config.towers.image.depth + 1 + config.towers.text.depth)

  config.dtype, config.attention_impl = "bfloat16", "cudnn"
  with pytest.raises(ConfigError, match=r"config\.model\.towers\.image\.attention_impl = "
                                        r"'cudnn' \(or config\.model\.attention_impl\) needs "
                                        r"a GPU; JAX's backend here is 'cpu'"):
    make_model(config, batch, rngs=nnx.Rngs(0))


def test_third_tower_by_config_only(tiny, batch):
  config = tiny.model_config()
  config.towers.audio = ml_collections.ConfigDict(dict(
      name="vit", patch_size=4, width=24, depth=1, num_heads=2, pooling="gap"))
  config.towers.sensor = ml_collections.ConfigDict(dict(name="_test_mean_tower", width=8))
  rng = np.random.default_rng(3)
  batch = dict(batch, audio=rng.normal(size=(tiny.batch, 8, 8, 3)).astype(np.float32),
               sensor=rng.normal(size=(tiny.batch, 5, 3)).astype(np.float32))
  model, params = _build(config, batch)
  assert set(params) == {"image", "text", "audio", "sensor"}
  assert params["audio"]["projection"]["kernel"].shape == (24, tiny.embed_dim)
  assert params["sensor"]["projection"]["kernel"].shape == (8, tiny.embed_dim)
  out = _apply(model, params, batch)
  _assert_embeddings(out, ("image", "text", "audio", "sensor"), tiny.batch, tiny.embed_dim)

  with pytest.raises(ConfigError, match=r"'audio'"):  # a configured modality missing from the batch
    _apply(model, params, {k: v for k, v in batch.items() if k != "audio"})


def _set(path: str, value):
  """Sets a field as a config file would (bypassing ConfigDict's type checks)."""
  def edit(config):
    *parents, leaf = path.split(".")
    if not parents:
      updated = config.to_dict()
      updated[leaf] = value
      return ml_collections.ConfigDict(updated)
    node = config
    for key in parents[:-1]:
      node = node[key]
    updated = node[parents[-1]].to_dict()
    updated[leaf] = value
    node[parents[-1]] = ml_collections.ConfigDict(updated)
    return config
  return edit


def _remove(path: str):
  def edit(config):
    node = config
    *parents, leaf = path.split(".")
    for key in parents:
      node = node[key]
    del node[leaf]
    return config
  return edit


def _typo(config):
  config.towers.image.widht = config.towers.image.width
  del config.towers.image["width"]
  return config


@pytest.mark.parametrize("edit,pattern", [
    (_set("towers.image.name", "vitt"),
     r"config\.model\.towers\.image\.name = 'vitt' .*text_transformer.*vit"),
    (_set("towers.text.name", "gpt"), r"config\.model\.towers\.text\.name = 'gpt'"),
    (_set("towers.image.pooling", "max"),
     r"config\.model\.towers\.image\.pooling must be one of 'cls', 'gap', 'map'; got 'max'"),
    (_set("towers.text.pooling", "cls"),
     r"config\.model\.towers\.text\.pooling must be one of 'eos', 'last', 'mean', 'last_position'; got 'cls'"),
    (_typo,
     r"config\.model\.towers\.image\.widht is not a field of tower 'vit'; did you mean 'width'"),
    (_set("towers.image.width", 30),
     r"config\.model\.towers\.image\.width = 30 .*config\.model\.towers\.image\.num_heads = 4"),
    (_set("remat_policy", "dots"),
     r"config\.model\.remat_policy = 'dots' applies only to rematerialised blocks, but "
     r"config\.model\.remat = False; set config\.model\.remat = True"),
    (_set("towers.image.remat_policy", "qkv"),
     r"config\.model\.towers\.image\.remat_policy must be one of 'full', 'dots'"),
    (_set("towers.text.attention_impl", "cudnn"),
     r"config\.model\.towers\.text\.attention_impl = 'cudnn' needs a bfloat16 compute dtype"
     r".*config\.model\.dtype = 'float32'; set it to 'bfloat16'"),
    (_set("attention_impl", "flash"),
     r"config\.model\.attention_impl must be one of 'xla', 'cudnn'; got 'flash'"),
    (_set("towers.image.dtype", "float16"),
     r"config\.model\.towers\.image\.dtype = 'float16' .*'float32', 'bfloat16'"),
    (_set("dtype", "fp16"), r"config\.model\.dtype = 'fp16' .*'float32', 'bfloat16'"),
    (_set("towers.text.activation", "relu"),
     r"config\.model\.towers\.text\.activation must be one of 'gelu_tanh', 'gelu', "
     r"'quick_gelu'; got 'relu'"),
    (_set("towers.image.norm_eps", 0.0),
     r"config\.model\.towers\.image\.norm_eps must be > 0; got 0\.0"),
    (_set("towers.text.causal", "yes"),
     r"config\.model\.towers\.text\.causal must be True or False; got 'yes'"),
    (_set("towers.image.depth", 0), r"config\.model\.towers\.image\.depth must be >= 1; got 0"),
    (_remove("towers.image.depth"), r"missing .*config\.model\.towers\.image\.depth"),
    (_remove("towers.image.name"), r"config\.model\.towers\.image\.name is missing"),
    (_set("embed_dim", -1), r"config\.model\.embed_dim must be >= 1; got -1"),
])
def test_config_errors_name_the_field(tiny, edit, pattern):
  config = edit(tiny.model_config())
  with pytest.raises(ConfigError, match=pattern):
    parse_model_config(config)


def test_towers_take_dtype_and_remat_from_the_model_unless_they_set_their_own(tiny):
  config = tiny.model_config()
  config.dtype, config.remat, config.remat_policy = "bfloat16", True, "dots"
  config.attention_impl = "xla"
  # A tower registered with a plain mapping of fields takes them too.
  config.towers.sensor = ml_collections.ConfigDict(dict(
      name="_test_mean_tower", width=8, remat_policy="attention", attention_impl="cudnn"))
  config.towers.text.dtype = "float32"  # "xla" takes float32
  towers = parse_model_config(config).towers

  def model_wide(modality):
    return tuple(towers[modality].kwargs[key]
                 for key in ("dtype", "remat", "remat_policy", "attention_impl"))

  assert model_wide("image") == (jnp.bfloat16, True, "dots", "xla")
  assert model_wide("text") == (jnp.float32, True, "dots", "xla")
  assert model_wide("sensor") == (jnp.bfloat16, True, "attention", "cudnn")
  config.towers.sensor.remat = "no"
  with pytest.raises(ConfigError,
                     match=r"config\.model\.towers\.sensor\.remat must be True or False"):
    parse_model_config(config)


def test_a_tower_schema_must_extend_tower_fields():
  @dataclasses.dataclass(frozen=True, kw_only=True)
  class LooseFields:
    width: int = 8

  with pytest.raises(TypeError, match=r"LooseFields\) must extend TowerFields"):
    TOWERS.register("_test_loose_tower", fields=LooseFields)(_MeanTower)
  assert "_test_loose_tower" not in TOWERS


def test_input_shape_errors_at_init_name_the_field(tiny, batch):
  config = tiny.model_config()
  config.towers.image.patch_size = 2 * batch["image"].shape[1]  # larger than the image
  spec = parse_model_config(config)  # valid on its own: the image size is only known at build
  with pytest.raises(ConfigError, match=r"config\.model\.towers\.image\.patch_size = \d+ is "
                                        r"larger than the input size"):
    MultiTower(spec, batch, rngs=nnx.Rngs(0))

  config = tiny.model_config()
  config.towers.text.context_length = 6
  with pytest.raises(ConfigError,
                     match=r"config\.data\.max_len .*config\.model\.towers\.text\.context_length"):
    make_model(config, batch, rngs=nnx.Rngs(0))


def test_batch_sharded_over_explicit_mesh_axes(tiny, batch):
  """Under jit with the batch sharded over explicit ("data", "fsdp") axes and replicated params,
  the model needs no extra annotations and matches the unsharded result."""
  config = tiny.model_config()
  config.towers.audio = ml_collections.ConfigDict(dict(
      name="vit", patch_size=4, width=16, depth=1, num_heads=2, pooling="cls"))
  batch = {"image": batch["image"], "text": batch["text"], "audio": batch["image"][:, :8, :8]}
  model, params = _build(config, batch)
  expected = _apply(model, params, batch)

  mesh = jax.make_mesh((2, 2), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Explicit,) * 2,
                       devices=jax.devices()[:4])
  with jax.set_mesh(mesh):
    sharded_batch = jax.device_put(batch, jax.sharding.NamedSharding(mesh, P(("data", "fsdp"))))
    replicated = jax.device_put(params, jax.sharding.NamedSharding(mesh, P()))
    out = jax.jit(lambda p, b: _apply(model, p, b))(replicated, sharded_batch)
  for modality, emb in expected.items():
    assert out[modality].sharding.spec[0] == ("data", "fsdp"), modality
    np.testing.assert_allclose(np.asarray(out[modality]), np.asarray(emb), rtol=1e-4, atol=1e-5)
