"""CLIP loss plus uniformity and alignment terms, from Fahim, Murphy & Fyshe (2024), "It's Not a
Modality Gap: Characterizing and Addressing the Contrastive Gap".

The paper attributes the image-text gap of CLIP to low uniformity and closes it by adding the
alignment and uniformity terms of Wang & Isola (2020) to the CLIP loss. For a global batch of N
pairs (x_i, y_i) of L2-normalised embeddings and scale t:

    L_CLIP     = (1/2) [ (1/N) sum_i CE(t x_i.y_., i) + (1/N) sum_i CE(t y_i.x_., i) ]
    L_align    = (1/N) sum_i ||x_i - y_i||^2
    U(z)       = log( 1/(N(N-1)) sum_{i != j} exp(-2 ||z_i - z_j||^2) )
    L_uniform  = (1/2) (U(x) + U(y))
    L_xuniform = log( 1/(N(N-1)) sum_{i != j} exp(-2 ||x_i - y_j||^2) )

    L = L_CLIP + align_weight L_align + uniform_weight L_uniform + cross_uniform_weight L_xuniform

The in-modal uniformity excludes i = j, as Wang & Isola's definition over distinct pairs does
(their reference implementation uses pdist, i.e. the pairs i < j; the mean over i != j is the
same number). The cross-modal uniformity excludes the positive pairs i = j, which are pulled
together by L_align. The paper adds the terms unweighted: its L_CUAXU ("CLIP + uniformity +
alignment + cross-uniformity") is the default, all weights 1; cross_uniform_weight = 0 gives its
L_CUA. The paper trains with a fixed temperature tau = 0.01: init_scale = log(100) and
learn_scale = False by default.

Checked against the authors' code (abrar-fahim/contrastive-gap, clips/hf_clip.py: CLIP loss
with weights 0.5 per direction, uniformity 0.5/0.5 from pdist, cross-uniformity over the
off-diagonal of cdist, alignment, all added with weight 1, tau = 0.01 fixed) in
tests/losses/objectives/test_authors_code.py: same value and gradients. Their towers normalise
inside the loss; ours hand it unit vectors, so the gradients are compared w.r.t. those.

Squared distances are computed as ||a||^2 + ||b||^2 - 2 a.b (exactly ||a - b||^2; no
renormalisation is assumed).

Sharding: the CLIP term is `softmax_loss` (impl "all_gather" by default, or "ring" with optional
column chunks); for the other terms each device computes its n local rows against the
all-gathered x and y (`[n, N]` blocks), reduced with psum. Those terms hold `[n, N]` blocks
whatever the CLIP term does, so "all_gather" is the default: the ring saves the CLIP term's two
blocks at the price of D sequential steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from clip_jax import schema
from clip_jax.losses import collectives as C
from clip_jax.losses.numerics import dot_t
from clip_jax.losses.registry import LOSSES, ImplFields, Objective, scaled_objective
from clip_jax.losses.softmax import softmax_loss

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContrastiveGapFields(ImplFields):
  """`config.loss` of "contrastive_gap": modalities (x, y); impl ("all_gather" | "ring") and
  chunk_size (ring only, 0 = whole blocks) of the CLIP term; align_weight, uniform_weight,
  cross_uniform_weight (>= 0); uniformity_t (> 0); init_scale (t'); learn_scale."""

  modalities: tuple[str, ...] = schema.field(("image", "text"), schema.modalities(count=2))
  impl: str = schema.field("all_gather", schema.one_of("ring", "all_gather"))
  align_weight: float = schema.field(1.0, schema.number(low=0.0))
  uniform_weight: float = schema.field(1.0, schema.number(low=0.0))
  cross_uniform_weight: float = schema.field(1.0, schema.number(low=0.0))
  uniformity_t: float = schema.field(2.0, schema.number(low=0.0, low_open=True))
  init_scale: float = math.log(100.0)
  learn_scale: bool = False


def _sq_dists(a: Array, b_all: Array) -> Array:
  """||a_i - b_j||^2 for local `[n, d]` rows a and `[N, d]` columns b_all -> `[n, N]`."""
  a2 = jnp.sum(a * a, axis=-1)[:, None]
  b2 = jnp.sum(b_all * b_all, axis=-1)[None, :]
  return jnp.maximum(a2 + b2 - 2.0 * dot_t(a, b_all), 0.0)


def contrastive_gap_loss(x: Array, y: Array, t: Array, *, axis_name: C.AxisName = None,
                         align_weight: float = 1.0, uniform_weight: float = 1.0,
                         cross_uniform_weight: float = 1.0, uniformity_t: float = 2.0,
                         impl: str = "all_gather", chunk_size: int | None = None,
                         ) -> tuple[Array, dict[str, Array]]:
  """CLIP + alignment + uniformity (+ cross-uniformity) over the global batch.

  Args:
    x: `[n, d]` local shard of L2-normalised embeddings of the first modality.
    y: `[n, d]` local shard of the second modality, paired row by row with x.
    t: scalar CLIP scale (already exponentiated), replicated.
    axis_name: batch axes of the enclosing shard_map, or None for whole-batch arrays.
    align_weight, uniform_weight, cross_uniform_weight: weights of the extra terms.
    uniformity_t: the Gaussian-kernel parameter of the uniformity terms (2 in the paper).
    impl, chunk_size: how the CLIP term runs (see `softmax_loss`).

  Returns:
    (scalar loss, metrics) identical on every device; metrics: clip, align, uniform,
    uniform_x, uniform_y, cross_uniform.
  """
  n = x.shape[0]
  rows, total = C.global_rows(n, axis_name)
  C.require_global_batch(total, 2, "contrastive_gap")
  x_all, y_all = C.all_gather(x, axis_name), C.all_gather(y, axis_name)
  off_diag = rows[:, None] != jnp.arange(total)[None, :]

  clip = softmax_loss(x, y, t, axis_name=axis_name, impl=impl, chunk_size=chunk_size)

  align = C.psum(jnp.sum(jnp.sum((x - y) ** 2, axis=-1)), axis_name) / total

  pairs = total * (total - 1)

  def uniformity(a, b_all):
    kernel = jnp.where(off_diag, jnp.exp(-uniformity_t * _sq_dists(a, b_all)), 0.0)
    return jnp.log(C.psum(jnp.sum(kernel), axis_name) / pairs)

  uniform_x = uniformity(x, x_all)
  uniform_y = uniformity(y, y_all)
  uniform = 0.5 * (uniform_x + uniform_y)
  cross_uniform = uniformity(x, y_all)
  loss = (clip + align_weight * align + uniform_weight * uniform
          + cross_uniform_weight * cross_uniform)
  return loss, dict(clip=clip, align=align, uniform=uniform, uniform_x=uniform_x,
                    uniform_y=uniform_y, cross_uniform=cross_uniform)


@LOSSES.register("contrastive_gap", fields=ContrastiveGapFields)
def contrastive_gap_objective(loss_config: Any, *, axis_name: C.AxisName) -> Objective:
  """CLIP + uniformity + alignment (+ cross-modal uniformity) between two modalities (config
  fields: `ContrastiveGapFields`).

  Params: {"scale": t'}. Metrics: loss, scale (t), clip, align, uniform, uniform_<x>,
  uniform_<y>, cross_uniform.
  """
  f: ContrastiveGapFields = LOSSES.parse(loss_config, name="contrastive_gap")
  x_name, y_name = f.modalities

  def loss_fn(embeddings, t, outputs):
    del outputs
    x, y = embeddings
    loss, m = contrastive_gap_loss(
        x, y, t, axis_name=axis_name, uniformity_t=f.uniformity_t, align_weight=f.align_weight,
        uniform_weight=f.uniform_weight, cross_uniform_weight=f.cross_uniform_weight,
        impl=f.impl, chunk_size=f.chunk_size or None)
    return loss, {"clip": m["clip"], "align": m["align"], "uniform": m["uniform"],
                  f"uniform_{x_name}": m["uniform_x"], f"uniform_{y_name}": m["uniform_y"],
                  "cross_uniform": m["cross_uniform"]}

  return scaled_objective(loss_fn, modalities=f.modalities, init_scale=f.init_scale,
                          learn_scale=f.learn_scale)
