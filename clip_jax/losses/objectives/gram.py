"""GRAM: Gramian Multimodal Representation Learning and Alignment (Cicchetti, Grassucci, Sigillo &
Comminiello, ICLR 2025).

For k >= 2 modalities, one of them the anchor a (config `anchor`, default the first of
`modalities`) and the others m_2..m_k, the alignment of a tuple of L2-normalised embeddings is
measured by the volume of the k-dimensional parallelotope they span,

    Vol(v_1, ..., v_k) = sqrt(det G),   G = A^T A,   A = [v_1 ... v_k]  (d x k),  G_rs = v_r.v_s

(for k = 2 and unit vectors, Vol = |sin angle|). Small volume = aligned tuple. The contrastive
loss uses -Vol as the logit, with V_ij = Vol(a_i, m2_j, ..., mk_j) (anchor of example i, the
other modalities of example j) and t = 1/tau:

    L_A2D = (1/N) sum_i CE( -t V_i. , i )    (anchor i vs all data tuples)
    L_D2A = (1/N) sum_i CE( -t V_.i , i )    (data tuple i vs all anchors)
    L = (L_A2D + L_D2A) / 2

with the cross-entropy against label-smoothed targets (1 - eps) onehot + eps / N ("label_smoothing"
field, eps; the same convention as torch's `F.cross_entropy(label_smoothing=eps)`),

    CE(l, i) = logsumexp_j l_j - (1 - eps) l_i - (eps / N) sum_j l_j.

With eps = 0 this is the paper's volume-based contrastive loss (its additional data-anchor
matching loss needs a fusion head and is not part of this objective). The default eps = 0.1 is
what the authors' code trains with (ispamm/GRAM, model/gram.py, `forward_ret`), i.e. the setting
behind the paper's results; the paper's equation has no smoothing, which eps = 0 gives.

Checked against the authors' code (tests/losses/objectives/test_authors_code.py); the deliberate
differences are:
  * Temperature: the authors learn tau itself (`contra_temp`, initialised at 0.07, logits
    -V / tau); we learn t' = log(1/tau). Same value at the same tau, but a different
    parametrisation for the optimiser: dL/dt' = -tau dL/dtau.
  * Gradients through the gather: the authors' `concat_all_gather` passes no gradient, so each
    direction trains only the local side of its logits (the anchors in A2D, the data tuples in
    D2A) and drops the gradient through the gathered columns, even on one device. Here the
    gather is differentiable, so the gradient is that of the loss over the global batch.
  * Volume: the authors take sqrt(|det G|) with an LU determinant; we take
    sqrt(max(det G, 1e-12)) with det G expanded by minors (see Numerics). Same value wherever
    det G > 1e-12.

Numerics: det G is expanded by minors (a polynomial in the dot products), so its gradient is
finite even when G is singular (duplicated or collinear embeddings), where an LU-based det's
gradient is not; the volume is sqrt(max(det G, eps)) with eps = 1e-12, keeping the gradient of
the square root finite at zero volume (this moves a zero volume to 1e-6). The dot products use
full float32 precision (`Precision.HIGHEST`), since det G cancels heavily for aligned tuples.
The expansion has O(k 2^k) terms; k <= 8 modalities are supported.

Scale: tau = 0.07 initially (init_scale = log(1/0.07)), learnable.

Sharding: for its n local anchor rows and for its n local data rows, each device builds the k x k
Gram entries against the all-gathered other side as broadcastable `[n, 1]`, `[1, N]` or `[n, N]`
arrays (never an `[n, N, k, k]` tensor) and expands the determinants elementwise; reduced with
psum / N.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from clip_jax import schema
from clip_jax.losses import collectives as C
from clip_jax.losses.numerics import dot_t, logsumexp
from clip_jax.losses.registry import LOSSES, Objective, scaled_objective
from clip_jax.registry import ConfigError

Array = jax.Array

MAX_MODALITIES = 8
VOLUME_EPS = 1e-12


@dataclasses.dataclass(frozen=True, kw_only=True)
class GramFields:
  """`config.loss` of "gram": modalities (2 to `MAX_MODALITIES`); anchor (one of them, "" = the
  first); label_smoothing (in [0, 1); 0.1 as in the authors' training code, 0 for the paper's
  equation); init_scale (t'); learn_scale."""

  modalities: tuple[str, ...] = schema.field(("image", "text", "audio"),
                                             schema.modalities(at_least=2))
  anchor: str = ""
  label_smoothing: float = schema.field(0.1, schema.number(low=0.0, high=1.0, high_open=True))
  init_scale: float = math.log(1 / 0.07)
  learn_scale: bool = True

  def check(self, path: str) -> None:
    if len(self.modalities) > MAX_MODALITIES:
      raise ConfigError(f"{path}.modalities must have at most {MAX_MODALITIES} modalities "
                        f"for gram; got {len(self.modalities)}")
    if self.anchor and self.anchor not in self.modalities:
      raise ConfigError(f"{path}.anchor must be one of {', '.join(map(repr, self.modalities))} "
                        f"(or '' for the first); got {self.anchor!r}")

_HI = jax.lax.Precision.HIGHEST


def det_by_minors(matrix: Sequence[Sequence[Array]]) -> Array:
  """Determinant of a k x k matrix given as nested lists of broadcastable arrays (elementwise).

  Laplace expansion along the rows, memoised over the column subsets of the trailing rows:
  O(k 2^k) products. A polynomial in the entries, hence with finite gradients everywhere.
  """
  k = len(matrix)
  memo: dict[tuple[int, ...], Array] = {}

  def minor(cols: tuple[int, ...]) -> Array:
    # Determinant of the trailing len(cols) rows restricted to the columns `cols`.
    if len(cols) == 1:
      return matrix[k - 1][cols[0]]
    if cols not in memo:
      row = k - len(cols)
      total = 0.0
      for idx, c in enumerate(cols):
        term = matrix[row][c] * minor(cols[:idx] + cols[idx + 1:])
        total = total + term if idx % 2 == 0 else total - term
      memo[cols] = total
    return memo[cols]

  return minor(tuple(range(k)))


def _volumes(anchor_self: Array, cross: list[Array], others_gram: list[list[Array]]) -> Array:
  """`[rows, cols]` volumes Vol(a, o_2, ..., o_k) from the entries of their Gram matrices.

  Args:
    anchor_self: a.a, broadcastable to `[rows, cols]`.
    cross: k - 1 arrays `[rows, cols]`, a.o_m.
    others_gram: (k - 1) x (k - 1) nested list of o_m.o_m', broadcastable to `[rows, cols]`.
  """
  k = len(cross) + 1
  matrix = [[anchor_self, *cross]]
  for m in range(1, k):
    matrix.append([cross[m - 1], *others_gram[m - 1]])
  det = det_by_minors(matrix)
  return jnp.sqrt(jnp.maximum(det, VOLUME_EPS))


def _self_gram(vs: list[Array]) -> list[list[Array]]:
  """Rowwise dot products vs[r]_i . vs[s]_i -> `[rows]` arrays (symmetric, computed once)."""
  k = len(vs)
  out = [[None] * k for _ in range(k)]
  for r in range(k):
    for s in range(r, k):
      out[r][s] = out[s][r] = jnp.einsum("nd,nd->n", vs[r], vs[s], precision=_HI)
  return out


def gram_loss(anchor: Array, others: list[Array], t: Array, *, axis_name: C.AxisName = None,
              label_smoothing: float = 0.0) -> tuple[Array, dict[str, Array]]:
  """The symmetric GRAM volume contrastive loss over the global batch.

  Args:
    anchor: `[n, d]` local shard of the anchor modality's L2-normalised embeddings.
    others: k - 1 >= 1 arrays `[n, d]`, the local shards of the other modalities (row i of every
      array belongs to example i).
    t: scalar scale (already exponentiated), replicated.
    axis_name: batch axes of the enclosing shard_map, or None for whole-batch arrays.
    label_smoothing: eps in [0, 1); targets (1 - eps) onehot + eps / N over the N columns.

  Returns:
    (scalar loss, metrics) identical on every device; metrics: anchor_to_data, data_to_anchor,
    positive_volume (mean V_ii), negative_volume (mean V_ij over i != j).
  """
  k = len(others) + 1
  if not 2 <= k <= MAX_MODALITIES:
    raise ValueError(f"gram needs 2 to {MAX_MODALITIES} modalities; got {k}")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1); got {label_smoothing}")
  n = anchor.shape[0]
  rows, total = C.global_rows(n, axis_name)
  anchor_all = C.all_gather(anchor, axis_name)
  others_all = [C.all_gather(o, axis_name) for o in others]
  local_gram = _self_gram([anchor, *others])  # [n] entries of the local examples
  global_gram = _self_gram([anchor_all, *others_all])  # [N] entries of all examples

  # A2D: local anchors i (rows) against the data tuples j of the global batch (columns).
  a2d = _volumes(local_gram[0][0][:, None],
                 [dot_t(anchor, o_all, precision=_HI) for o_all in others_all],
                 [[global_gram[r][s][None, :] for s in range(1, k)] for r in range(1, k)])
  # D2A: local data tuples i (rows) against the anchors j of the global batch (columns).
  d2a = _volumes(global_gram[0][0][None, :],
                 [dot_t(o, anchor_all, precision=_HI) for o in others],
                 [[local_gram[r][s][:, None] for s in range(1, k)] for r in range(1, k)])

  diag = rows[:, None] == jnp.arange(total)[None, :]
  pos_volume = jnp.sum(jnp.where(diag, a2d, 0.0), axis=1)  # V_ii, [n]

  eps = float(label_smoothing)

  def direction(volumes):
    # CE(-t V_i., i) with smoothed targets: lse - (1 - eps) (-t V_ii) - (eps / N) sum_j (-t V_ij).
    rows_ce = (logsumexp(-t * volumes, axis=1) + (1.0 - eps) * t * pos_volume
               + (eps / total) * t * jnp.sum(volumes, axis=1))
    return C.psum(jnp.sum(rows_ce), axis_name) / total

  anchor_to_data = direction(a2d)
  data_to_anchor = direction(d2a)
  loss = 0.5 * (anchor_to_data + data_to_anchor)
  metrics = dict(
      anchor_to_data=anchor_to_data, data_to_anchor=data_to_anchor,
      positive_volume=C.psum(jnp.sum(pos_volume), axis_name) / total,
      negative_volume=C.psum(jnp.sum(jnp.where(diag, 0.0, a2d)), axis_name)
      / max(total * (total - 1), 1))
  return loss, metrics


@LOSSES.register("gram", fields=GramFields)
def gram_objective(loss_config: Any, *, axis_name: C.AxisName) -> Objective:
  """GRAM volume contrastive loss over `config.loss.modalities` (2 to 8), one of them the anchor
  (config fields: `GramFields`).

  Params: {"scale": t'}. Metrics: loss, scale (t), anchor_to_data, data_to_anchor,
  positive_volume, negative_volume.
  """
  f: GramFields = LOSSES.parse(loss_config, name="gram")
  anchor = f.anchor or f.modalities[0]
  order = (anchor, *[m for m in f.modalities if m != anchor])

  def loss_fn(embeddings, t, outputs):
    del outputs
    a, *others = embeddings
    return gram_loss(a, others, t, axis_name=axis_name, label_smoothing=f.label_smoothing)

  return scaled_objective(loss_fn, modalities=f.modalities, read=order,
                          init_scale=f.init_scale, learn_scale=f.learn_scale)
