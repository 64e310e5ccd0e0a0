"""DCL: Decoupled Contrastive Learning (Yeh et al., ECCV 2022, "Decoupled Contrastive Learning").

InfoNCE with the positive pair removed from the softmax denominator ("negative-positive
decoupling"). For a global batch of N pairs (x_i, y_i) of L2-normalised embeddings and scale
t = exp(t') = 1/tau:

    L_i(x->y) = -w_i t x_i.y_i + log sum_{j != i} exp(t x_i.y_j)
                                  [ + sum_{j != i} exp(t x_i.x_j)   if intra_modal_negatives ]
    L_i(y->x) = -w_i t x_i.y_i + log sum_{j != i} exp(t y_i.x_j)
                                  [ + sum_{j != i} exp(t y_i.y_j)   if intra_modal_negatives ]
    L = (1 / 2N) sum_i (L_i(x->y) + L_i(y->x))

i.e. the mean over the 2N anchors of both directions (the paper's sum over k in {1, 2} and i,
normalised by 2N as SimCLR does). The paper's setting is SimCLR's two augmented views, where the
negatives of z_i^(k) are all 2N - 2 other embeddings of both views; `intra_modal_negatives=True`
reproduces that. The default (False) is the cross-modal (CLIP) form, where the negatives of an
image are the N - 1 other texts and vice versa.

Weighting ("weighting" field):
  * "none": w_i = 1 (DCL).
  * "dclw": DCLW, the paper's weighting by a negative von Mises-Fisher kernel,
        w_i = 2 - exp(x_i.y_i / sigma) / ( (1/N) sum_k exp(x_k.y_k / sigma) )
            = 2 - N softmax_i(x_.y_ / sigma),
    where the normalising expectation runs over the N positive pairs of the (global) batch, so
    the weights average to 1 and harder positives (lower similarity) weigh more. The same w_i
    serves both directions (x_i.y_i is symmetric); sigma = 0.5 by default, as in the paper.

    Gradient through the weights ("detach_weights" field): the paper introduces w as a weight
    on each positive pair's term, emphasising hard positives, and never differentiates it; a
    weight in that sense scales the pair's gradient and is held constant, so by default
    (detach_weights = True) w_i is a stop_gradient constant and the gradient of pair i's
    positive term is exactly w_i times DCL's. With detach_weights = False the formula is
    differentiated as written: with s_k = x_k.y_k and p = softmax(s / sigma), the derivative of
    the positive terms -sum_k w_k t s_k w.r.t. s_i becomes -t (w_i - (N / sigma) p_i (s_i -
    sum_k p_k s_k)) instead of -t w_i, a coupling of all positives that the paper does not
    discuss. Implementations differ: lightly's DCLWLoss detaches the weights;
    raminnakhli/Decoupled-Contrastive-Learning (unofficial, which lightly cites) does not.

Checked against raminnakhli/Decoupled-Contrastive-Learning `loss/dcl.py` (no code by the
authors was found) in tests/losses/objectives/test_authors_code.py: its DCL(z1, z2) is our
x->y term with intra_modal_negatives = True and t = 1/temperature, and it computes the DCLW
weights over the batch it is given (lightly's over the local batch of each device; ours over
the global batch, as the paper's expectation over the batch).

Scale: the paper fixes tau = 0.1, so init_scale = log(1/0.1) = log(10) and learn_scale = False
by default; set learn_scale = True to learn t like CLIP.

Sharding: each device computes its n local anchors of both directions against the all-gathered
other modality (and, with intra-modal negatives, its own modality): four `[n, N]` (or two)
logit blocks per device, reduced with psum / 2N.
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
class DclFields:
  """`config.loss` of "dcl": modalities (x, y); weighting ("none" | "dclw"); sigma (> 0, DCLW
  only); detach_weights (DCLW only); intra_modal_negatives; init_scale (t' = log(1/tau));
  learn_scale."""

  modalities: tuple[str, ...] = schema.field(("image", "text"), schema.modalities(count=2))
  weighting: str = schema.field("none", schema.one_of("none", "dclw"))
  sigma: float = schema.field(0.5, schema.number(low=0.0, low_open=True))
  detach_weights: bool = True
  intra_modal_negatives: bool = False
  init_scale: float = math.log(1 / 0.1)
  learn_scale: bool = False


def dcl_loss(x: Array, y: Array, t: Array, *, axis_name: C.AxisName = None,
             weighting: str = "none", sigma: float = 0.5, detach_weights: bool = True,
             intra_modal_negatives: bool = False) -> tuple[Array, dict[str, Array]]:
  """The symmetric DCL / DCLW loss over the global batch (formula in the module docstring).

  Args:
    x: `[n, d]` local shard of L2-normalised embeddings of the first modality.
    y: `[n, d]` local shard of the second modality, paired row by row with x.
    t: scalar scale 1/tau (already exponentiated), replicated.
    axis_name: batch axes of the enclosing shard_map, or None for whole-batch arrays.
    weighting: "none" (DCL) or "dclw".
    sigma: vMF temperature of the DCLW weights.
    detach_weights: hold the DCLW weights constant (stop_gradient).
    intra_modal_negatives: also use the other rows of the anchor's own modality as negatives.

  Returns:
    (scalar loss, metrics) identical on every device; metrics: x_to_y, y_to_x, and with DCLW
    weight_min / weight_max.
  """
  n = x.shape[0]
  rows, total = C.global_rows(n, axis_name)
  C.require_global_batch(total, 2, "dcl")
  x_all, y_all = C.all_gather(x, axis_name), C.all_gather(y, axis_name)
  pos = jnp.sum(x * y, axis=-1)  # [n] x_i . y_i
  neg_mask = rows[:, None] != jnp.arange(total)[None, :]  # j != i

  def negatives(anchor, other_all, own_all):
    logits = t * dot_t(anchor, other_all)
    if intra_modal_negatives:
      logits = jnp.concatenate([logits, t * dot_t(anchor, own_all)], axis=1)
      mask = jnp.concatenate([neg_mask, neg_mask], axis=1)
    else:
      mask = neg_mask
    return logsumexp(logits, axis=1, mask=mask)  # [n]

  metrics = {}
  if weighting == "dclw":
    pos_all = C.all_gather(pos, axis_name) / sigma  # [N]
    w = 2.0 - total * jnp.exp(pos / sigma - logsumexp(pos_all, axis=0))
    if detach_weights:
      w = jax.lax.stop_gradient(w)
    metrics.update(weight_min=C.pmin(jnp.min(w), axis_name),
                   weight_max=C.pmax(jnp.max(w), axis_name))
  elif weighting == "none":
    w = 1.0
  else:
    raise ValueError(f"weighting must be 'none' or 'dclw'; got {weighting!r}")
  positive = w * t * pos
  x_to_y = C.psum(jnp.sum(negatives(x, y_all, x_all) - positive), axis_name) / total
  y_to_x = C.psum(jnp.sum(negatives(y, x_all, y_all) - positive), axis_name) / total
  loss = 0.5 * (x_to_y + y_to_x)
  metrics.update(x_to_y=x_to_y, y_to_x=y_to_x)
  return loss, metrics


@LOSSES.register("dcl", fields=DclFields)
def dcl_objective(loss_config: Any, *, axis_name: C.AxisName) -> Objective:
  """Decoupled contrastive loss between two modalities (config fields: `DclFields`).

  Params: {"scale": t'}. Metrics: loss, x_to_y, y_to_x, scale (t), and with DCLW weight_min,
  weight_max.
  """
  f: DclFields = LOSSES.parse(loss_config, name="dcl")

  def loss_fn(embeddings, t, outputs):
    del outputs
    x, y = embeddings
    return dcl_loss(x, y, t, axis_name=axis_name, weighting=f.weighting, sigma=f.sigma,
                    detach_weights=f.detach_weights, intra_modal_negatives=f.intra_modal_negatives)

  return scaled_objective(loss_fn, modalities=f.modalities, init_scale=f.init_scale,
                          learn_scale=f.learn_scale)
