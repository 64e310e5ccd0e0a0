"""MV-InfoNCE and MV-DHEL, from Koromilas, Georgiou, Bouritsas, Giannakopoulos, Nicolaou &
Panagakis (2025), "A Principled Framework for Multi-View Contrastive Learning".

K >= 2 views of each of N instances; here the views are modalities (config `modalities`), and
U_{i,l} is the L2-normalised embedding of instance i in modality l. With t = 1/tau:

MV-InfoNCE: one term per instance, all view pairs at once (the paper's Eq. for MV-InfoNCE),

    L = -(1/N) sum_i log(   sum_{l} sum_{l' != l} exp(t U_il.U_il')
                          / sum_{l} sum_{m != l} sum_{j} exp(t U_il.U_jm) )

  The numerator holds every ordered pair of views of instance i; the denominator every
  cross-view pair (i, l) -> (j, m), m != l, over all instances j (j = i included: the positives
  are part of the denominator, as in InfoNCE). For K = 2 the two directions x->y and y->x share
  one denominator. The authors' code (pakoromilas/Multi-View-CL, models/losses.py, MVINFONCE)
  also puts the same-view negatives exp(t U_il.U_jl), j != i, into the denominator, i.e. every
  other embedding of the batch; same_view_negatives = True does that, the default (False)
  follows the paper's formula.

MV-DHEL: decoupled alignment and uniformity,

    L = -(1/N) sum_i [ log sum_{l} sum_{l' != l} exp(t U_il.U_il')
                       - sum_l log sum_{j in J(i)} exp(t U_il.U_jl) ]

  The uniformity (energy) term of each view uses only that view's embeddings, so the positives
  never enter a denominator. J(i) = {j != i} with exclude_self = True (default; the self term
  exp(t U_il.U_il) = exp(t) carries no information, and the authors' code and the two-view DHEL
  drop it), or all j with exclude_self = False (the formula as printed, sum over j in [M]).
  The authors' code (MVDHEL) sums the numerator over the unordered view pairs l < l', which is
  half the sum over ordered pairs: its loss is ours + log 2, a constant (same gradients).

Scale: the paper trains with a fixed tau (0.1 on ImageNet): init_scale = log(10),
learn_scale = False by default.

Metrics: align = -(1/N) sum_i log(numerator_i) and uniform = (1/N) sum_i log(denominator_i)
(for MV-DHEL the sum over views of the log energies), so loss = align + uniform.

Both are checked against the authors' code in tests/losses/objectives/test_authors_code.py.

Sharding: local rows of every view against the all-gathered rows of the other views (MV-InfoNCE,
K(K-1) `[n, N]` blocks, plus K same-view blocks with same_view_negatives) or of the same view
(MV-DHEL, K blocks); reduced with psum / N.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from clip_jax import schema
from clip_jax.losses import collectives as C
from clip_jax.losses.numerics import dot_t, logsumexp
from clip_jax.losses.registry import LOSSES, Objective, scaled_objective

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class _MultiviewFields:
  modalities: tuple[str, ...] = schema.field(("image", "text", "audio"),
                                             schema.modalities(at_least=2))
  init_scale: float = math.log(10.0)
  learn_scale: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class MvInfonceFields(_MultiviewFields):
  """`config.loss` of "mv_infonce": modalities (>= 2); same_view_negatives; init_scale (t');
  learn_scale."""

  same_view_negatives: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class MvDhelFields(_MultiviewFields):
  """`config.loss` of "mv_dhel": modalities (>= 2); exclude_self; init_scale (t'); learn_scale."""

  exclude_self: bool = True


def _positive_lse(views: list[Array], t: Array) -> Array:
  """`[n]` log sum_{l != l'} exp(t U_il.U_il') over the ordered view pairs of each local row."""
  k = len(views)
  pos = [t * jnp.sum(views[l] * views[m], axis=-1) for l in range(k) for m in range(k) if m != l]
  return logsumexp(jnp.stack(pos, axis=1), axis=1)


def mv_infonce_loss(views: list[Array], t: Array, *, axis_name: C.AxisName = None,
                    same_view_negatives: bool = False) -> tuple[Array, dict[str, Array]]:
  """MV-InfoNCE over the global batch.

  Args:
    views: K >= 2 arrays `[n, d]`, the local shards of the L2-normalised embeddings of each view
      (row i of every view belongs to instance i).
    t: scalar scale (already exponentiated), replicated.
    axis_name: batch axes of the enclosing shard_map, or None for whole-batch arrays.
    same_view_negatives: also put exp(t U_il.U_jl), j != i, into the denominator (the
      authors' code).

  Returns:
    (scalar loss, metrics {align, uniform}) identical on every device.
  """
  k = len(views)
  if k < 2:
    raise ValueError(f"mv_infonce needs at least 2 views; got {k}")
  n = views[0].shape[0]
  rows, total = C.global_rows(n, axis_name)
  gathered = [C.all_gather(v, axis_name) for v in views]
  blocks = [t * dot_t(views[l], gathered[m]) for l in range(k) for m in range(k) if m != l]
  masks = [jnp.ones((n, total), bool)] * len(blocks)
  if same_view_negatives:
    blocks += [t * dot_t(views[l], gathered[l]) for l in range(k)]
    masks += [rows[:, None] != jnp.arange(total)[None, :]] * k
  denominator = logsumexp(jnp.concatenate(blocks, axis=1), axis=1,
                          mask=jnp.concatenate(masks, axis=1))  # [n]
  numerator = _positive_lse(views, t)
  align = -C.psum(jnp.sum(numerator), axis_name) / total
  uniform = C.psum(jnp.sum(denominator), axis_name) / total
  return align + uniform, dict(align=align, uniform=uniform)


def mv_dhel_loss(views: list[Array], t: Array, *, axis_name: C.AxisName = None,
                 exclude_self: bool = True) -> tuple[Array, dict[str, Array]]:
  """MV-DHEL over the global batch.

  Args:
    views: K >= 2 arrays `[n, d]`, the local shards of each view's L2-normalised embeddings.
    t: scalar scale (already exponentiated), replicated.
    axis_name: batch axes of the enclosing shard_map, or None for whole-batch arrays.
    exclude_self: leave j = i out of each view's energy term.

  Returns:
    (scalar loss, metrics {align, uniform}) identical on every device.
  """
  k = len(views)
  if k < 2:
    raise ValueError(f"mv_dhel needs at least 2 views; got {k}")
  n = views[0].shape[0]
  rows, total = C.global_rows(n, axis_name)
  if exclude_self:
    C.require_global_batch(total, 2, "mv_dhel with exclude_self")
  mask = rows[:, None] != jnp.arange(total)[None, :]
  energy = 0.0
  for v in views:
    logits = t * dot_t(v, C.all_gather(v, axis_name))
    energy = energy + logsumexp(logits, axis=1, mask=mask if exclude_self else None)
  numerator = _positive_lse(views, t)
  align = -C.psum(jnp.sum(numerator), axis_name) / total
  uniform = C.psum(jnp.sum(energy), axis_name) / total
  return align + uniform, dict(align=align, uniform=uniform)


@LOSSES.register("mv_infonce", fields=MvInfonceFields)
def mv_infonce_objective(loss_config: Any, *, axis_name: C.AxisName) -> Objective:
  """MV-InfoNCE over all the modalities of `config.loss.modalities` (config fields:
  `MvInfonceFields`). Params: {"scale": t'}. Metrics: loss, scale (t), align, uniform.
  """
  f: MvInfonceFields = LOSSES.parse(loss_config, name="mv_infonce")

  def loss_fn(views, t, outputs):
    del outputs
    return mv_infonce_loss(views, t, axis_name=axis_name,
                           same_view_negatives=f.same_view_negatives)

  return scaled_objective(loss_fn, modalities=f.modalities, init_scale=f.init_scale,
                          learn_scale=f.learn_scale)


@LOSSES.register("mv_dhel", fields=MvDhelFields)
def mv_dhel_objective(loss_config: Any, *, axis_name: C.AxisName) -> Objective:
  """MV-DHEL over all the modalities of `config.loss.modalities` (config fields: `MvDhelFields`).
  Params: {"scale": t'}. Metrics: loss, scale (t), align, uniform.
  """
  f: MvDhelFields = LOSSES.parse(loss_config, name="mv_dhel")

  def loss_fn(views, t, outputs):
    del outputs
    return mv_dhel_loss(views, t, axis_name=axis_name, exclude_self=f.exclude_self)

  return scaled_objective(loss_fn, modalities=f.modalities, init_scale=f.init_scale,
                          learn_scale=f.learn_scale)
