"""big_vision SigLIP checkpoints: an `.npz` in big_vision's layout, loaded through
`pretrained.load("big_vision", ...)`, gives the embeddings of transformers' `SiglipModel` with
the same weights.

big_vision itself does not install here, so the reference is HF's port of its SigLIP: a random
`SiglipModel` (test_hf's `small_siglip`: 2 layers of width 64 per tower, 3 x 3 patches of 16 px,
16 text positions) whose state dict this test writes into big_vision's parameter tree with its
own mapping (`_to_big_vision`, from big_vision's Flax module names and kernel shapes), in the
plain ("encoderblock_<i>") and the scanned ("encoderblock", depth first) layouts. The
architecture is read from the file's shapes.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from clip_jax import convert, fs, pretrained
from clip_jax.checkpoint import load_params_from
from clip_jax.config import saved_config
from clip_jax.sharding import shardings_for
from clip_jax.registry import ConfigError
from tests.pretrained.test_hf import (  # noqa: F401  (transformers_lib: a fixture)
    _assert_same_embeddings, _randomise, siglip_inputs, small_siglip, transformers_lib)

WIDTH, HEADS = 64, 2  # small_siglip's


def _kernel(w: np.ndarray) -> np.ndarray:
  """torch Linear weight [out, in] -> Flax Dense kernel [in, out]."""
  return w.T


def _block(hf: dict[str, np.ndarray], t: str, attention: dict[str, np.ndarray],
           norms: dict[str, str]) -> dict[str, np.ndarray]:
  """One big_vision block (or MAP head), {relative key: array}: `attention` holds HF's
  {q,k,v,out}_proj.{weight,bias}; `norms` maps big_vision's LayerNorm names to HF's."""
  d = WIDTH // HEADS
  out = {}
  for name, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
    out[f"MultiHeadDotProductAttention_0/{name}/kernel"] = _kernel(
        attention[f"{proj}.weight"]).reshape(WIDTH, HEADS, d)
    out[f"MultiHeadDotProductAttention_0/{name}/bias"] = attention[f"{proj}.bias"].reshape(
        HEADS, d)
  out["MultiHeadDotProductAttention_0/out/kernel"] = _kernel(
      attention["out_proj.weight"]).reshape(HEADS, d, WIDTH)
  out["MultiHeadDotProductAttention_0/out/bias"] = attention["out_proj.bias"]
  for bv, ours in norms.items():
    out[f"{bv}/scale"], out[f"{bv}/bias"] = hf[f"{t}.{ours}.weight"], hf[f"{t}.{ours}.bias"]
  for dense, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
    out[f"MlpBlock_0/{dense}/kernel"] = _kernel(hf[f"{t}.mlp.{fc}.weight"])
    out[f"MlpBlock_0/{dense}/bias"] = hf[f"{t}.mlp.{fc}.bias"]
  return out


def _to_big_vision(hf: dict[str, np.ndarray], layers: int, scanned: bool) -> dict[str, np.ndarray]:
  """HF SigLIP state dict -> big_vision's flattened two-tower params."""
  bv = {"params/img/embedding/kernel": hf["vision_model.embeddings.patch_embedding.weight"]
        .transpose(2, 3, 1, 0),  # [D, C, p, p] -> [p, p, C, D]
        "params/img/embedding/bias": hf["vision_model.embeddings.patch_embedding.bias"],
        "params/img/pos_embedding": hf["vision_model.embeddings.position_embedding.weight"][None],
        "params/txt/Embed_0/embedding": hf["text_model.embeddings.token_embedding.weight"],
        "params/txt/pos_embedding": hf["text_model.embeddings.position_embedding.weight"][None],
        "params/txt/head/kernel": _kernel(hf["text_model.head.weight"]),
        "params/txt/head/bias": hf["text_model.head.bias"],
        "params/t": hf["logit_scale"], "params/b": hf["logit_bias"],
        "params/img/MAPHead_0/probe": hf["vision_model.head.probe"]}
  head = "vision_model.head"
  in_w, in_b = hf[f"{head}.attention.in_proj_weight"], hf[f"{head}.attention.in_proj_bias"]
  attention = {f"{p}_proj.{leaf}": part for leaf, whole in (("weight", in_w), ("bias", in_b))
               for p, part in zip("qkv", np.split(whole, 3))}
  attention.update({f"out_proj.{leaf}": hf[f"{head}.attention.out_proj.{leaf}"]
                    for leaf in ("weight", "bias")})
  bv.update({f"params/img/MAPHead_0/{k}": v for k, v in
             _block(hf, head, attention, {"LayerNorm_0": "layernorm"}).items()})
  for tower, encoder, ours, final in (
      ("img", "Transformer", "vision_model", "vision_model.post_layernorm"),
      ("txt", "Encoder_0", "text_model", "text_model.final_layer_norm")):
    blocks = []
    for i in range(layers):
      t = f"{ours}.encoder.layers.{i}"
      attention = {k.removeprefix(f"{t}.self_attn."): v for k, v in hf.items()
                   if k.startswith(f"{t}.self_attn.")}
      blocks.append(_block(hf, t, attention, {"LayerNorm_0": "layer_norm1",
                                               "LayerNorm_1": "layer_norm2"}))
    prefix = f"params/{tower}/{encoder}"
    if scanned:
      bv.update({f"{prefix}/encoderblock/{k}": np.stack([b[k] for b in blocks])
                 for k in blocks[0]})
    else:
      bv.update({f"{prefix}/encoderblock_{i}/{k}": v for i, b in enumerate(blocks)
                 for k, v in b.items()})
    bv[f"{prefix}/encoder_norm/scale"] = hf[f"{final}.weight"]
    bv[f"{prefix}/encoder_norm/bias"] = hf[f"{final}.bias"]
  return bv


@pytest.fixture(scope="module")
def reference(transformers_lib):  # noqa: F811  (the fixture imported above)
  """(test_hf's small SiglipModel with random parameters, its state dict as float32 numpy
  arrays)."""
  model = small_siglip(transformers_lib)
  _randomise(model)
  state = {k: v.numpy().astype(np.float32) for k, v in model.state_dict().items()
           if not k.endswith("position_ids")}
  return model, state


@pytest.mark.parametrize("scanned", [False, True], ids=["plain", "scanned"])
def test_big_vision_embeddings_match_transformers(reference, tmp_path, scanned):
  model_ref, state = reference
  path = tmp_path / "siglip.npz"
  np.savez(path, **_to_big_vision(state, layers=2, scanned=scanned))

  model, params = pretrained.load("big_vision", "from_shapes", checkpoint=path)

  _assert_same_embeddings(f"big_vision ({'scanned' if scanned else 'plain'})", model_ref, model,
                          params, *siglip_inputs())
  assert (model.image_size, model.context_length) == (48, 16)
  assert model.config.loss.to_dict() == {
      "name": "sigmoid", "init_scale": pytest.approx(float(state["logit_scale"][0])),
      "init_bias": pytest.approx(float(state["logit_bias"][0]))}
  if scanned:
    # The converted run's config tokenises as SigLIP does.
    written = convert.convert("big_vision", "from_shapes", path, str(tmp_path / "out"),
                              tokenizer_path="/models/spiece.model")
    config = saved_config(fs.read_text(str(tmp_path / "out" / "config.json")))
    assert config.data.tokenizer.to_dict() == {"name": "siglip", "path": "/models/spiece.model"}
    assert (config.data.max_len, config.data.preprocess.normalize) == (16, "minus_one_one")
    assert config.model.to_dict() == written.model.to_dict()
    # config.init_from reads the .npz by name.
    target = {"model": jax.tree.map(np.zeros_like, params), "loss": {"scale": np.float32(0)}}
    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    loaded = load_params_from(f"big_vision:from_shapes:{path}", target,
                              shardings_for(target, (), mesh),
                              ((r"^model/", "load"), (r".*", "init")))
    assert float(loaded["loss"]["scale"]) == 0
    for got, want in zip(jax.tree.leaves(loaded["model"]), jax.tree.leaves(params), strict=True):
      np.testing.assert_array_equal(np.asarray(got), want)


def test_big_vision_errors(reference, tmp_path):
  _, state = reference
  bv = _to_big_vision(state, layers=2, scanned=False)
  missing = "params/txt/Encoder_0/encoderblock_1/LayerNorm_1/scale"
  np.savez(tmp_path / "missing.npz", **{k: v for k, v in bv.items() if k != missing})
  with pytest.raises(ValueError, match=f"missing keys {missing}$"):
    pretrained.load("big_vision", "from_shapes", checkpoint=tmp_path / "missing.npz")
  # A named architecture checks the file (B/16: 12 blocks), a scanned key its depth first.
  np.savez(tmp_path / "scanned.npz", **_to_big_vision(state, layers=2, scanned=True))
  key = "params/img/Transformer/encoderblock/LayerNorm_0/bias"
  with pytest.raises(ValueError, match=f"{key}' has shape .2, 64.*needs the depth 12 first"):
    pretrained.load("big_vision", "webli_en_b16_224_63724782",
                    checkpoint=tmp_path / "scanned.npz")
  with pytest.raises(ConfigError, match="big_vision architecture 'siglip' is not known"):
    pretrained.load("big_vision", "siglip", checkpoint=tmp_path / "missing.npz")
