"""A weighted sum of named objectives: L = sum_k w_k L_k.

    config.loss.name = "composite"
    config.loss.terms = ConfigDict({
        "siglip": ConfigDict(dict(name="sigmoid", weight=1.0)),
        "clip": ConfigDict(dict(name="softmax", weight=0.5, label_smoothing=0.1)),
    })

Each term is built by its own registered factory from its ConfigDict without `weight`; its
parameters live under its term name (`params["loss"][term]`). Metrics: "loss" (the weighted
total), f"loss/{term}" (each term's unweighted loss) and each term's other metrics as
f"{term}/{metric}".
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import ml_collections

from clip_jax.losses import registry as reg
from clip_jax.registry import REQUIRED

Array = jax.Array


@reg.LOSSES.register("composite", fields={"terms": REQUIRED})
def composite_objective(loss_config: Any, *, axis_name: reg.AxisName) -> reg.Objective:
  """Builds the weighted sum of `loss_config.terms` (see the module docstring)."""
  fields = reg.read_fields(loss_config, {"terms": None})
  terms_config = fields["terms"]
  if terms_config is None or not hasattr(terms_config, "items") or not len(terms_config):
    raise reg.ConfigError(
        "config.loss.terms must be a non-empty ConfigDict {term_name: ConfigDict(name=<loss>, "
        f"weight=<float>, ...)}}; got {terms_config!r}")
  terms: dict[str, tuple[float, reg.Objective]] = {}
  for term, term_config in terms_config.items():
    field = f"config.loss.terms.{term}"
    if not isinstance(term, str) or not term or "/" in term:
      raise reg.ConfigError(f"config.loss.terms: term names must be non-empty strings without "
                            f"'/'; got {term!r}")
    if not hasattr(term_config, "items") or "name" not in term_config:
      raise reg.ConfigError(
          f"{field} must be a ConfigDict with a `name` field (a registered loss); "
          f"got {term_config!r}")
    sub = {k: v for k, v in term_config.items()}
    weight = sub.pop("weight", 1.0)
    reg.check_number(f"{field}.weight", weight)
    if isinstance(weight, int):
      weight = float(weight)
    factory = reg.LOSSES.get(sub["name"], field=f"{field}.name")
    try:
      objective = factory(ml_collections.ConfigDict(sub), axis_name=axis_name)
    except reg.ConfigError as e:
      # The term's factory names its fields config.loss.<field>; point at the term instead.
      raise reg.ConfigError(str(e).replace("config.loss.", f"{field}.")) from e
    terms[term] = (weight, objective)

  modalities: list[str] = []
  for _, objective in terms.values():
    modalities += [m for m in objective.modalities if m not in modalities]

  def apply(outputs: Mapping[str, Array],
            loss_params: Mapping[str, Any]) -> tuple[Array, dict[str, Array]]:
    total = 0.0
    metrics: dict[str, Array] = {}
    for term, (weight, objective) in terms.items():
      loss, term_metrics = objective.apply(outputs, loss_params.get(term, {}))
      total = total + weight * loss
      metrics[f"loss/{term}"] = loss
      for key, value in term_metrics.items():
        if key != "loss":
          metrics[f"{term}/{key}"] = value
    metrics["loss"] = total
    return total, metrics

  return reg.Objective(
      init_params={term: dict(objective.init_params) for term, (_, objective) in terms.items()},
      apply=apply, modalities=tuple(modalities),
      batch_keys=tuple(dict.fromkeys(k for _, o in terms.values() for k in o.batch_keys)))
