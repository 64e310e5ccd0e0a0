"""Contrastive training objectives.

Importing this package registers every objective in `LOSSES` (selected by `config.loss.name`):
"sigmoid" (SigLIP), "softmax" (CLIP), "composite" (a weighted sum of named terms) and the paper
objectives of `clip_jax.losses.objectives`.

The loss functions themselves run inside `jax.shard_map` over the batch axes (or on whole-batch
arrays with `axis_name=None`) and return the loss over the global batch; see `sigmoid_loss` and
`softmax_loss`. Every loss computes with `collectives` (the batch-axis collectives) and `numerics`
(`dot_t`, `logsumexp`); an objective with a CLIP or SigLIP term calls `softmax_loss` or
`sigmoid_loss` for it, so the term runs on the ring with column chunks where configured.
"""

from __future__ import annotations

from clip_jax.losses.registry import LOSSES, Objective, make_objective
from clip_jax.losses.sigmoid import sigmoid_loss, sigmoid_objective
from clip_jax.losses.softmax import softmax_loss, softmax_objective
from clip_jax.losses.composite import composite_objective
from clip_jax.losses import objectives  # registers the paper objectives

__all__ = [
    "LOSSES",
    "Objective",
    "make_objective",
    "sigmoid_loss",
    "softmax_loss",
    "sigmoid_objective",
    "softmax_objective",
    "composite_objective",
    "objectives",
]
