"""Analytic training FLOPs of a config, and the peak FLOP/s of the devices, for MFU.

    shapes = tower_shapes(config, spec, params, frozen, batch_spec)
    flops = analytic_flops(shapes, batch, embed_dim)        # one step, hardware FLOPs
    per_example = model_flops_per_example(trainer)          # model FLOPs, for MFU
    peak = peak_flops_per_device(jax.devices()[0], config)  # FLOP/s, or None

The analytic count (`analytic_flops`) of one training step:
    3 x forward (4 x for a rematerialised tower, 1 x for a locked one: its encoder frozen, as
    in LiT, so no backward pass), forward = sum over towers of
      2 x B x (T x P_token + P_example) + 4 x B x depth x T^2 x D
    + 2 x B^2 x E per pair of modalities (the similarity matrix),
where B is the global batch, T a tower's tokens per example (patches (+ class token), or the
text length), P_token its matmul parameters applied to every token (the blocks' kernels, the
patch embedding, a MAP head's key and value), P_example those applied once per example (the
projection, the rest of a MAP head, a text head), D its width and E the embedding size.
Embedding lookups, LayerNorms, activations and the softmax are not counted.

Model FLOPs (`model_flops_per_example`, the numerator of MFU) are the same count with every
tower at 3 x forward whatever `remat` (recomputation is not model work: MFU as defined by
Chowdhery et al. 2022, PaLM, appendix B), and micro-batching's extra forward pass is not counted
either. MFU = model FLOPs per example x examples/s / (peak FLOP/s per device x devices).
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import ml_collections
import numpy as np

from clip_jax.models import ModelSpec
from clip_jax.models.registry import TOWERS, TransformerFields, resolve_size
from clip_jax.training.trainer import Trainer
from clip_jax.tree_paths import path_to_str

# Peak dense (no sparsity) bfloat16 matmul FLOP/s of one JAX device, by `jax.Device.device_kind`
# (GPUs report the CUDA device name; a TPU device is one chip). Sources: NVIDIA's H100 and H200
# datasheets (H100 SXM5 and H200 SXM: 1,979 TFLOP/s bf16 with 2:4 sparsity, half of it dense),
# the A100 datasheet (312 TFLOP/s bf16 dense, SXM4 and PCIe, 40 and 80 GB), and Cloud TPU's
# pages of each version, "Peak compute per chip (bf16)" (https://cloud.google.com/tpu/docs/v4,
# .../v5e, .../v5p, .../v6e: 275, 197, 459, 918 TFLOP/s). The TPU kinds are the strings JAX
# reports, as its own test utilities match them (`jax._src.test_util.is_device_tpu`: v5e is
# "TPU v5 lite", v5p "TPU v5", v6e "TPU v6 lite").
PEAK_FLOPS_PER_DEVICE: dict[str, float] = {
    "NVIDIA H100 80GB HBM3": 989e12,  # H100 SXM5
    "NVIDIA H200": 989e12,  # H200 SXM; the H200 NVL (835) reports the same name
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
}


def tower_shapes(config: ml_collections.ConfigDict, spec: ModelSpec, params: dict[str, Any],
                 frozen: dict[str, Any],
                 batch_spec: dict[str, jax.ShapeDtypeStruct]) -> dict[str, dict[str, Any]]:
  """{modality: {tokens T, depth, width D, heads H (1 for a tower that is not a transformer),
  per_token and per_example matmul params, remat, locked (its encoder is frozen), bytes e per
  element, map_head}} of every tower, read from its abstract params (the model's: {modality:
  ...}), frozen mask (the same structure, bools), the batch spec and the config."""
  shapes = {}
  for modality, tower in spec.towers.items():
    flat = [(path_to_str(p), leaf) for p, leaf in
            jax.tree_util.tree_flatten_with_path(params[modality])[0]]
    per_token = sum(math.prod(x.shape) for name, x in flat if name.endswith("kernel") and (
        "/transformer/" in name or "patch_embed" in name or
        re.search(r"map_head/attn/(key|value)/", name)))
    per_example = sum(math.prod(x.shape) for name, x in flat
                      if name.endswith("kernel")) - per_token
    depth = len({m.group(1) for name, _ in flat
                 for m in [re.search(r"/transformer/(block_\d+)/", name)] if m})
    pos = dict(flat).get("encoder/pos_embedding")
    entry = batch_spec[modality].shape
    tokens = pos.shape[0] if len(entry) == 4 and pos is not None else (
        entry[1] if len(entry) == 2 else 1)
    fields = TOWERS.parse(config.model.towers[modality], tower.field)
    heads = (resolve_size(vars(fields), fields.SIZES, tower.field, fields.WITH_PATCH)["num_heads"]
             if isinstance(fields, TransformerFields) else 1)
    width = getattr(params[modality].get("projection", {}).get("kernel"), "shape", (0,))[0]
    shapes[modality] = dict(tokens=tokens, depth=depth, width=width, heads=heads,
                            per_token=per_token, per_example=per_example,
                            remat=bool(tower.kwargs["remat"]),
                            locked=all(jax.tree.leaves(frozen[modality]["encoder"])),
                            bytes=np.dtype(tower.kwargs["dtype"]).itemsize,
                            map_head="map_head" in params[modality]["encoder"])
  return shapes


def analytic_flops(shapes: dict[str, dict[str, Any]], batch: int, embed_dim: int) -> float:
  """Training FLOPs of one step of global batch `batch` (the module docstring's count), from
  `tower_shapes`."""
  total = 0.0
  for s in shapes.values():
    t, d = s["tokens"], s["width"]
    forward = 2 * batch * (t * s["per_token"] + s["per_example"])
    forward += 4 * batch * s["depth"] * t * t * d + (4 * batch * t * d if s["map_head"] else 0)
    total += (1 if s["locked"] else 4 if s["remat"] else 3) * forward
  pairs = len(shapes) * (len(shapes) - 1) // 2
  return total + 3 * pairs * 2 * batch * batch * embed_dim


def model_flops_per_example(trainer: Trainer) -> float:
  """Model FLOPs of one training step divided by its global batch (`config.batch_size`), for
  MFU (module docstring), from the trainer's abstract state, frozen mask and batch spec
  (nothing is built or allocated)."""
  config = trainer.config
  shapes = tower_shapes(config, trainer.model_spec, trainer.abstract_state["params"]["model"],
                        trainer.frozen["model"], trainer.batch_spec)
  shapes = {m: dict(s, remat=False) for m, s in shapes.items()}
  step = analytic_flops(shapes, config.batch_size, trainer.model_spec.embed_dim)
  return step / config.batch_size


def peak_flops_per_device(device: jax.Device, config: ml_collections.ConfigDict) -> float | None:
  """Peak dense bf16 FLOP/s of `device`: `config.peak_tflops_per_device` x 1e12 when that is
  set (> 0), else `PEAK_FLOPS_PER_DEVICE[device.device_kind]`, else None (an unknown kind, e.g.
  a CPU: no MFU is reported)."""
  if config.peak_tflops_per_device:
    return config.peak_tflops_per_device * 1e12
  return PEAK_FLOPS_PER_DEVICE.get(device.device_kind)
