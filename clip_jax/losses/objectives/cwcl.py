"""CWCL: Continuously Weighted Contrastive Loss (Srinivasa et al., NeurIPS 2023, "CWCL: Cross-Modal
Transfer with Continuously Weighted Contrastive Loss").

Cross-modal transfer from a frozen pre-trained tower (the teacher modality, embeddings q) to a
trained tower (the student modality, embeddings p). Instead of one-hot targets, every pair (i, j)
is a positive to the degree that the teacher finds examples i and j similar:

    w_ij = (q_i.q_j + 1) / 2                    in [0, 1] for unit q; w_ii = 1
    L_{S->T} = -(1/N) sum_i (1 / sum_j w_ij) sum_j w_ij log softmax_j( t p_i.q_j )
    L_{T->S} = -(1/N) sum_i (1 / sum_j w_ij) sum_j w_ij log softmax_j( t q_i.p_j )

i.e. a cross-entropy against the row-normalised soft targets w_ij / sum_k w_ik. The weights come
from the teacher's intra-modal similarities and are constants (stop_gradient on q inside w); the
logits keep their gradients (with the teacher tower frozen by the trainer, only p learns).

Directions ("directions" field): in the paper, U is the modality with the pre-trained (frozen)
model, V the one being trained, and L_{CWCL, U->V} takes its anchors in U, its softmax over V's
embeddings, and its weights w_ij^U from U's intra-modal similarities. In our names U is the
teacher and V the student, so the paper's L_{U->V} is "teacher_to_student" (anchor q_i, softmax
over the p_j); "student_to_teacher" is the reverse direction with the same teacher-derived
weights (they are symmetric in i, j). "both" (default) averages the two, like the symmetric
CLIP / LiT objective. Averaging (rather than summing) the two directions follows the CLIP
convention of this codebase; it halves the loss and its gradients compared with a plain sum.
(No code by the authors was found; tests/losses/objectives/test_authors_code.py pins
"teacher_to_student" to a re-derivation of L_{U->V} with this mapping, U read as the pre-trained
modality as the abstract and CellCLIP's restatement of the loss (2025) describe it.)

Scale: CLIP's learnable temperature, initialised at tau = 0.07 (init_scale = log(1/0.07)).

Sharding: the local rows of both directions against the all-gathered columns, `[n, N]` blocks for
the weights and for each direction's logits; reduced with psum / N.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from clip_jax import schema
from clip_jax.losses import collectives as C
from clip_jax.losses.numerics import dot_t, logsumexp
from clip_jax.losses.registry import LOSSES, Objective, scaled_objective

Array = jax.Array

DIRECTIONS = ("both", "student_to_teacher", "teacher_to_student")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CwclFields:
  """`config.loss` of "cwcl": modalities (two names); teacher_modality (one of them; the other
  is the student); directions (one of `DIRECTIONS`); init_scale (t'); learn_scale."""

  modalities: tuple[str, ...] = schema.field(("image", "text"), schema.modalities(count=2))
  teacher_modality: str = "text"
  directions: str = schema.field("both", schema.one_of(*DIRECTIONS))
  init_scale: float = math.log(1 / 0.07)
  learn_scale: bool = True

  def check(self, path: str) -> None:
    schema.one_of(*self.modalities)(self.teacher_modality, f"{path}.teacher_modality")


def cwcl_loss(p: Array, q: Array, t: Array, *, axis_name: C.AxisName = None,
              directions: str = "both") -> tuple[Array, dict[str, Array]]:
  """The CWCL loss over the global batch (formula in the module docstring).

  Args:
    p: `[n, d]` local shard of L2-normalised student embeddings.
    q: `[n, d]` local shard of L2-normalised teacher embeddings, paired row by row with p.
    t: scalar scale (already exponentiated), replicated.
    axis_name: batch axes of the enclosing shard_map, or None for whole-batch arrays.
    directions: "both", "student_to_teacher" or "teacher_to_student".

  Returns:
    (scalar loss, metrics) identical on every device; metrics: student_to_teacher and/or
    teacher_to_student.
  """
  if directions not in DIRECTIONS:
    raise ValueError(f"directions must be one of {DIRECTIONS}; got {directions!r}")
  n = p.shape[0]
  _, total = C.global_rows(n, axis_name)
  p_all, q_all = C.all_gather(p, axis_name), C.all_gather(q, axis_name)
  q_const, q_all_const = lax.stop_gradient(q), lax.stop_gradient(q_all)
  w = 0.5 * (dot_t(q_const, q_all_const) + 1.0)  # [n, N] teacher similarity of rows i, j
  targets = w / jnp.sum(w, axis=1, keepdims=True)

  def direction(anchor, others_all):
    logits = t * dot_t(anchor, others_all)
    log_probs = logits - logsumexp(logits, axis=1)[:, None]
    return -C.psum(jnp.sum(targets * log_probs), axis_name) / total

  metrics = {}
  if directions in ("both", "student_to_teacher"):
    metrics["student_to_teacher"] = direction(p, q_all)
  if directions in ("both", "teacher_to_student"):
    metrics["teacher_to_student"] = direction(q, p_all)
  loss = sum(metrics.values()) / len(metrics)
  return loss, metrics


@LOSSES.register("cwcl", fields=CwclFields)
def cwcl_objective(loss_config: Any, *, axis_name: C.AxisName) -> Objective:
  """CWCL between a student modality and a frozen teacher modality (config fields:
  `CwclFields`).

  Params: {"scale": t'}. Metrics: loss, scale (t), student_to_teacher, teacher_to_student (those
  computed).

  The trainer must freeze the teacher tower (config.optim.freeze) for the paper's setting; the
  weights w_ij never pass gradients to it either way.
  """
  f: CwclFields = LOSSES.parse(loss_config, name="cwcl")
  teacher = f.teacher_modality
  student = f.modalities[1] if teacher == f.modalities[0] else f.modalities[0]

  def loss_fn(embeddings, t, outputs):
    del outputs
    p, q = embeddings
    return cwcl_loss(p, q, t, axis_name=axis_name, directions=f.directions)

  return scaled_objective(loss_fn, modalities=f.modalities, read=(student, teacher),
                          init_scale=f.init_scale, learn_scale=f.learn_scale)
