"""Multi-positive decoupled softmax, from Gupta et al. (ICLR 2024), "Dual-Encoders for Extreme
Multi-Label Classification" (DEXML).

A batch may hold several captions of one image (or several positives of one query). Rows with
the same `outputs["instance_id"]` are positives of each other: P(i) = {j : id_j = id_i}, which
contains i. Plain InfoNCE with several positives makes them compete in one softmax; the paper's
DecoupledSoftmax removes the other positives from each positive's denominator. With logits
s_ij = t x_i.y_j over the global batch of N rows:

    l_ij = -log( exp(s_ij) / (exp(s_ij) + sum_{k not in P(i)} exp(s_ik)) )    for j in P(i)
         = softplus( logsumexp_{k not in P(i)} s_ik - s_ij )

Each direction averages the l_ij in one of two ways ("reduction" field):

    "row_mean" (default):  L_{x->y} = (1/N) sum_i (1/|P(i)|) sum_{j in P(i)} l_ij
    "pair_mean":           L_{x->y} = (1/|P|) sum_i sum_{j in P(i)} l_ij,   |P| = sum_i |P(i)|

"row_mean" is the normalisation of the authors' code (DEXML `losses.py`, criterion
"decoupled-softmax": each positive's term is divided by its row's number of positives, then the
rows are averaged), so every query weighs the same. "pair_mean" weighs every positive pair the
same, so rows with more positives weigh more. The two agree exactly when every row has the same
number of positives (e.g. every instance appears k times in the batch); otherwise they differ in
value and, more, in gradient. L_{y->x} is the same with s_ij = t y_i.x_j, and
L = (L_{x->y} + L_{y->x}) / 2. A row whose id covers the whole batch has no negatives and
contributes l_ij = 0. With all ids distinct both reductions are the plain (symmetric) InfoNCE.

Differences from the authors' code (checked in tests/losses/objectives/test_authors_code.py):
DEXML trains one direction (queries against the label embeddings; L_{x->y} here with x the
queries), with a fixed tau (0.05 in its configs); it samples one positive per query per step by
default (`loss_sample`), an unbiased estimate of the "row_mean" loss, and pushes excluded
positives to a logit of -100 instead of removing them.

Scale: CLIP's learnable temperature initialised at tau = 0.07 (init_scale = log(1/0.07)).

Sharding: local rows against the all-gathered columns and ids (`[n, N]` blocks); psum over the
devices of the row (or pair) losses and of the pair counts.
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
from clip_jax.registry import ConfigError

Array = jax.Array

REDUCTIONS = ("row_mean", "pair_mean")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultiPositiveFields:
  """`config.loss` of "multi_positive": modalities (x, y); id_key (the outputs entry with the
  `[n]` int ids, not a modality); reduction ("row_mean", the authors' | "pair_mean");
  init_scale (t'); learn_scale."""

  modalities: tuple[str, ...] = schema.field(("image", "text"), schema.modalities(count=2))
  id_key: str = "instance_id"
  reduction: str = schema.field("row_mean", schema.one_of(*REDUCTIONS))
  init_scale: float = math.log(1 / 0.07)
  learn_scale: bool = True

  def check(self, path: str) -> None:
    if not self.id_key or self.id_key in self.modalities:
      raise ConfigError(f"{path}.id_key must name an outputs entry other than the "
                        f"modalities, e.g. 'instance_id'; got {self.id_key!r}")


def multi_positive_loss(x: Array, y: Array, ids: Array, t: Array, *,
                        axis_name: C.AxisName = None,
                        reduction: str = "row_mean") -> tuple[Array, dict[str, Array]]:
  """The symmetric multi-positive decoupled softmax over the global batch.

  Args:
    x: `[n, d]` local shard of L2-normalised embeddings of the first modality.
    y: `[n, d]` local shard of the second modality (row i of x and y come from one example).
    ids: `[n]` int instance ids of the local rows; equal ids are positives of each other.
    t: scalar scale (already exponentiated), replicated.
    axis_name: batch axes of the enclosing shard_map, or None for whole-batch arrays.
    reduction: "row_mean" (mean over each row's positives, then over rows; the authors') or
      "pair_mean" (mean over all positive pairs).

  Returns:
    (scalar loss, metrics) identical on every device; metrics: x_to_y, y_to_x,
    positives_per_row (mean |P(i)|).

  Raises:
    ValueError: for an unknown `reduction`.
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
  n = x.shape[0]
  _, total = C.global_rows(n, axis_name)
  x_all, y_all = C.all_gather(x, axis_name), C.all_gather(y, axis_name)
  ids = jnp.asarray(ids).reshape(n)
  ids_all = C.all_gather(ids, axis_name)
  positive = ids[:, None] == ids_all[None, :]  # [n, N]
  row_positives = jnp.sum(positive.astype(jnp.float32), axis=1)  # [n] |P(i)| >= 1
  num_pairs = C.psum(jnp.sum(row_positives), axis_name)

  def direction(anchor, others_all):
    logits = t * dot_t(anchor, others_all)
    neg_lse = logsumexp(logits, axis=1, mask=~positive)  # [n], -inf without negatives
    # Only the positive entries are kept; the others enter softplus as -inf (value and
    # gradient 0), so no masked entry can produce a NaN.
    terms = jax.nn.softplus(jnp.where(positive, neg_lse[:, None] - logits, -jnp.inf))
    row_sums = jnp.sum(terms, axis=1)  # [n]
    if reduction == "row_mean":
      return C.psum(jnp.sum(row_sums / row_positives), axis_name) / total
    return C.psum(jnp.sum(row_sums), axis_name) / num_pairs

  x_to_y = direction(x, y_all)
  y_to_x = direction(y, x_all)
  loss = 0.5 * (x_to_y + y_to_x)
  return loss, dict(x_to_y=x_to_y, y_to_x=y_to_x, positives_per_row=num_pairs / total)


@LOSSES.register("multi_positive", fields=MultiPositiveFields)
def multi_positive_objective(loss_config: Any, *, axis_name: C.AxisName) -> Objective:
  """Multi-positive decoupled softmax between two modalities, positives from instance ids
  (config fields: `MultiPositiveFields`).

  Params: {"scale": t'}. Metrics: loss, scale (t), x_to_y, y_to_x, positives_per_row.

  The trainer must pass the batch's instance ids in `outputs[id_key]`, sharded like the
  embeddings.
  """
  f: MultiPositiveFields = LOSSES.parse(loss_config, name="multi_positive")
  id_key = f.id_key

  def loss_fn(embeddings, t, outputs):
    x, y = embeddings
    if id_key not in outputs:
      raise ValueError(
          f"loss 'multi_positive' needs outputs[{id_key!r}] (`[n]` int instance ids, rows with "
          f"equal ids are positives); the outputs only have: {', '.join(sorted(outputs))}")
    return multi_positive_loss(x, y, outputs[id_key], t, axis_name=axis_name,
                               reduction=f.reduction)

  return scaled_objective(loss_fn, modalities=f.modalities, init_scale=f.init_scale,
                          learn_scale=f.learn_scale, batch_keys=(id_key,))
