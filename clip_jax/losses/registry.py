"""The registry of training objectives, selected by `config.loss.name`.

An objective is built once from its config and the batch axis names, and is then called inside
`jax.shard_map` over those batch axes on the per-device shards:

    objective = LOSSES.get(config.loss.name)(config.loss, axis_name=("data", "fsdp"))
    loss, metrics = objective.apply(outputs, loss_params)

* `outputs`: dict of LOCAL shards. One entry per modality, `[n, d]` L2-normalised float32
  embeddings (n = local batch); optionally extra per-example arrays from the batch such as
  `"instance_id"` `[n]` int32 (examples sharing an id are positives of each other).
* `loss_params`: dict of replicated raw (unconstrained) parameters, created by the trainer from
  `objective.init_params` and stored under `params["loss"]`. Scales are stored as t' and used as
  t = exp(t'); biases are stored as-is.
* Returns a scalar loss that is identical on every device (the loss over the GLOBAL batch) and a
  flat dict of scalar metrics, also identical on every device.

With `axis_name=None` the objective runs on whole-batch arrays outside `shard_map`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax

from clip_jax.registry import Registry

Array = jax.Array
AxisName = str | tuple[str, ...] | None


@dataclasses.dataclass(frozen=True)
class Objective:
  """A training objective.

  Attributes:
    init_params: raw initial values of the objective's own learnable parameters, by name
      (e.g. {"scale": log(10), "bias": -10.0}). Become `params["loss"]`.
    apply: (outputs, loss_params) -> (scalar loss, metrics); see the module docstring.
    modalities: the modalities (keys of `outputs`) the objective reads.
  """

  init_params: Mapping[str, float]
  apply: Callable[[Mapping[str, Array], Mapping[str, Array]], tuple[Array, dict[str, Array]]]
  modalities: tuple[str, ...] = ("image", "text")


ObjectiveFactory = Callable[..., Objective]  # (loss_config: ConfigDict, *, axis_name) -> Objective

LOSSES: Registry[ObjectiveFactory] = Registry("loss", "config.loss.name")


def make_objective(loss_config: Any, *, axis_name: AxisName) -> Objective:
  """Builds the objective named by `loss_config.name` (raises ConfigError for unknown names)."""
  return LOSSES.get(loss_config.name)(loss_config, axis_name=axis_name)
