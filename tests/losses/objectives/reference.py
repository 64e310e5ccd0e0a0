"""Single-device float64 numpy references of the paper objectives, written from the formulas.

Every function takes the GLOBAL batch (float64 arrays `[N, d]`, one row per example) and the raw
scale t' (t = exp(t')), and returns (loss, metrics). They build the full N x N similarity matrices
and read the formulas off them directly (explicit masks, explicit difference vectors, explicit
k x k Gram matrices), independently of the sharded JAX implementations, so that a disagreement
points at a bug in one of them. `numerical_grads` differentiates any of them by central finite
differences.
"""

from __future__ import annotations

import itertools
from typing import Callable, Mapping

import numpy as np


def lse(values: np.ndarray, axis: int = -1) -> np.ndarray:
  """log sum exp along `axis` (float64)."""
  m = np.max(values, axis=axis, keepdims=True)
  return np.squeeze(m, axis) + np.log(np.sum(np.exp(values - m), axis=axis))


def _off_diagonal(matrix: np.ndarray) -> np.ndarray:
  """`[N, N]` -> `[N, N - 1]`: every row without its diagonal entry."""
  n = len(matrix)
  return matrix[~np.eye(n, dtype=bool)].reshape(n, n - 1)


def softmax_ref(x, y, scale):
  """CLIP: mean over both directions of the cross-entropy of the diagonal."""
  logits = np.exp(scale) * x @ y.T
  loss_xy = np.mean(lse(logits, 1) - np.diag(logits))
  loss_yx = np.mean(lse(logits.T, 1) - np.diag(logits))
  return 0.5 * (loss_xy + loss_yx), {}


def sigmoid_ref(x, y, scale, bias):
  """SigLIP: -(1/N) sum_ij log sigmoid(z_ij (t x_i.y_j + b))."""
  n = len(x)
  z = 2.0 * np.eye(n) - 1.0
  logits = np.exp(scale) * x @ y.T + bias
  return np.sum(np.logaddexp(0.0, -z * logits)) / n, {}


def dcl_ref(x, y, scale, weighting="none", sigma=0.5, intra_modal_negatives=False,
            weights_from=None):
  """DCL / DCLW; the DCLW weights come from the pair `weights_from` (default (x, y)).

  Passing copies of x, y that the caller holds constant gives detached weights.
  """
  t = np.exp(scale)
  positives = np.sum(x * y, axis=1)
  if weighting == "dclw":
    xw, yw = (x, y) if weights_from is None else weights_from
    similarity = np.sum(xw * yw, axis=1)
    w = 2.0 - np.exp(similarity / sigma) / np.mean(np.exp(similarity / sigma))
  else:
    w = np.ones(len(x))

  def direction(anchor, other):
    negatives = _off_diagonal(t * anchor @ other.T)
    if intra_modal_negatives:
      negatives = np.concatenate([negatives, _off_diagonal(t * anchor @ anchor.T)], axis=1)
    return np.mean(-w * t * positives + lse(negatives, 1))

  x_to_y, y_to_x = direction(x, y), direction(y, x)
  metrics = dict(x_to_y=x_to_y, y_to_x=y_to_x)
  if weighting == "dclw":
    metrics.update(weight_min=w.min(), weight_max=w.max())
  return 0.5 * (x_to_y + y_to_x), metrics


def contrastive_gap_ref(x, y, scale, align_weight=1.0, uniform_weight=1.0,
                        cross_uniform_weight=1.0, uniformity_t=2.0):
  clip, _ = softmax_ref(x, y, scale)
  align = np.mean(np.sum((x - y) ** 2, axis=1))

  def uniformity(a, b):
    sq_dist = np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)  # [N, N]
    return np.log(np.mean(_off_diagonal(np.exp(-uniformity_t * sq_dist))))

  uniform_x, uniform_y = uniformity(x, x), uniformity(y, y)
  cross = uniformity(x, y)
  uniform = 0.5 * (uniform_x + uniform_y)
  loss = clip + align_weight * align + uniform_weight * uniform + cross_uniform_weight * cross
  return loss, dict(clip=clip, align=align, uniform=uniform, uniform_x=uniform_x,
                    uniform_y=uniform_y, cross_uniform=cross)


def cwcl_ref(p, q, scale, q_for_weights=None, directions="both"):
  """CWCL; the weights come from `q_for_weights` (default q), held constant by the caller."""
  t = np.exp(scale)
  qw = q if q_for_weights is None else q_for_weights
  weights = (qw @ qw.T + 1.0) / 2.0
  targets = weights / weights.sum(axis=1, keepdims=True)

  def direction(anchor, others):
    logits = t * anchor @ others.T
    log_probs = logits - lse(logits, 1)[:, None]
    return np.mean(-np.sum(targets * log_probs, axis=1))

  metrics = {}
  if directions in ("both", "student_to_teacher"):
    metrics["student_to_teacher"] = direction(p, q)
  if directions in ("both", "teacher_to_student"):
    metrics["teacher_to_student"] = direction(q, p)
  return float(np.mean(list(metrics.values()))), metrics


def multi_positive_ref(x, y, ids, scale, reduction="row_mean"):
  """Decoupled softmax; "row_mean": mean over each row's positives, then rows; "pair_mean": mean
  over all positive pairs."""
  t = np.exp(scale)
  n = len(x)

  def direction(anchor, others):
    logits = t * anchor @ others.T
    row_means, pair_terms = [], []
    for i in range(n):
      same = ids == ids[i]
      negatives = logits[i, ~same]
      # -log( e^s / (e^s + sum_negatives e^s_k) ) for every positive s of row i
      terms = [(np.logaddexp(s, lse(negatives)) if negatives.size else s) - s
               for s in logits[i, same]]
      row_means.append(np.mean(terms))
      pair_terms += terms
    loss = np.mean(row_means) if reduction == "row_mean" else np.mean(pair_terms)
    return loss, len(pair_terms)

  x_to_y, pairs = direction(x, y)
  y_to_x, _ = direction(y, x)
  return 0.5 * (x_to_y + y_to_x), dict(x_to_y=x_to_y, y_to_x=y_to_x,
                                        positives_per_row=pairs / n)


def _view_pairs(k):
  return [(l, m) for l in range(k) for m in range(k) if m != l]


def mv_infonce_ref(views, scale, same_view_negatives=False):
  t = np.exp(scale)
  pairs = _view_pairs(len(views))
  # numerator_i: all ordered pairs of views of instance i.
  numerator = np.stack([t * np.sum(views[l] * views[m], axis=1) for l, m in pairs], axis=1)
  # denominator_i: (i, l) against (j, m) for every j and every m != l [and j != i, m = l].
  blocks = [t * views[l] @ views[m].T for l, m in pairs]
  if same_view_negatives:
    blocks += [_off_diagonal(t * v @ v.T) for v in views]
  denominator = np.concatenate(blocks, axis=1)
  align = -np.mean(lse(numerator, 1))
  uniform = np.mean(lse(denominator, 1))
  return align + uniform, dict(align=align, uniform=uniform)


def mv_dhel_ref(views, scale, exclude_self=True):
  t = np.exp(scale)
  numerator = np.stack([t * np.sum(views[l] * views[m], axis=1)
                        for l, m in _view_pairs(len(views))], axis=1)
  energy = 0.0
  for v in views:
    same_view = t * v @ v.T
    energy = energy + lse(_off_diagonal(same_view) if exclude_self else same_view, 1)
  align = -np.mean(lse(numerator, 1))
  uniform = np.mean(energy)
  return align + uniform, dict(align=align, uniform=uniform)


def gram_volumes(anchor, others):
  """vol[i, j] = sqrt(det(A A^T)), A the k x d matrix [anchor_i; others_1,j; ...; others_k-1,j]."""
  n = len(anchor)
  rows = [np.broadcast_to(anchor[:, None, :], (n, n, anchor.shape[1]))]
  rows += [np.broadcast_to(o[None, :, :], (n, n, o.shape[1])) for o in others]
  a = np.stack(rows, axis=2)  # [N, N, k, d]
  gram = a @ np.swapaxes(a, -1, -2)  # [N, N, k, k]
  return np.sqrt(np.maximum(np.linalg.det(gram), 0.0))


def gram_ref(anchor, others, scale, label_smoothing=0.0):
  """Cross-entropy of -t vol against targets (1 - eps) onehot + eps / N, both directions."""
  t = np.exp(scale)
  vol = gram_volumes(anchor, others)
  n = len(anchor)
  targets = (1.0 - label_smoothing) * np.eye(n) + label_smoothing / n

  def cross_entropy(logits):
    log_probs = logits - lse(logits, 1)[:, None]
    return np.mean(-np.sum(targets * log_probs, axis=1))

  anchor_to_data = cross_entropy(-t * vol)
  data_to_anchor = cross_entropy(-t * vol.T)
  return 0.5 * (anchor_to_data + data_to_anchor), dict(
      anchor_to_data=anchor_to_data, data_to_anchor=data_to_anchor,
      positive_volume=np.mean(np.diag(vol)), negative_volume=np.mean(_off_diagonal(vol)))


def numerical_grads(fn: Callable[[Mapping[str, np.ndarray]], float],
                    inputs: Mapping[str, np.ndarray], names, h: float = 1e-6
                    ) -> dict[str, np.ndarray]:
  """Central finite differences of the scalar `fn(inputs)` w.r.t. the inputs in `names`."""
  base = {k: np.array(v, np.float64) if k in names else v for k, v in inputs.items()}
  grads = {}
  for name in names:
    value = base[name]
    grad = np.zeros_like(value)
    for idx in itertools.product(*map(range, value.shape)):
      old = value[idx]
      value[idx] = old + h
      plus = fn(base)
      value[idx] = old - h
      minus = fn(base)
      value[idx] = old
      grad[idx] = (plus - minus) / (2 * h)
    grads[name] = grad
  return grads
