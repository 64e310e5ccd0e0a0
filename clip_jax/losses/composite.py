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

`weighted_sum` is the sum itself, `term_fields` and `build_term` build one term; the "pairwise"
objective (clip_jax.losses.objectives.pairwise) is the same sum over pairs of modalities.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import ml_collections

from clip_jax import schema
from clip_jax.losses import registry as reg

Array = jax.Array


def term_fields(term_config: Any, field: str) -> dict[str, Any]:
  """A shallow dict copy of one term's config, which must name a registered loss.

  Raises:
    ConfigError: naming `field` when `term_config` is not a mapping with a string `name`.
  """
  if not hasattr(term_config, "items") or not isinstance(term_config.get("name"), str):
    raise reg.ConfigError(
        f"{field} must be a ConfigDict with a `name` field (a registered loss); "
        f"got {term_config!r}")
  return dict(term_config.items())


def build_term(fields: Mapping[str, Any], field: str, *, axis_name: reg.AxisName
               ) -> reg.Objective:
  """Builds the registered objective `fields["name"]` from `fields`, as one term of a sum.

  Args:
    fields: the term's config (see `term_fields`), without keys of the sum such as `weight`.
    field: how the term's config is spelt in error messages, e.g. "config.loss.terms.clip".
    axis_name: the batch axes, passed on to the term's factory.

  Raises:
    ConfigError: naming `field` (the factory's own messages say "config.loss."; they are
      rewritten to point at the term).
  """
  factory = reg.LOSSES.get(fields["name"], field=f"{field}.name")
  try:
    return factory(ml_collections.ConfigDict(dict(fields)), axis_name=axis_name)
  except reg.ConfigError as e:
    raise reg.ConfigError(str(e).replace("config.loss.", f"{field}.")) from e


def weighted_sum(terms: Mapping[str, tuple[float, reg.Objective]], *,
                 term_loss: str = "loss/{term}") -> reg.Objective:
  """The objective L = sum_k w_k L_k of named, already built objectives.

  Args:
    terms: {term name: (weight, objective)}; a term's parameters live under its name.
    term_loss: the metric name of each term's unweighted loss, a format string of `term`.

  Returns:
    The Objective. Its modalities and batch keys are those of the terms, in the terms' order;
    its metrics are "loss" (the weighted total), each term's loss under `term_loss` and each
    term's other metrics as f"{term}/{metric}".
  """
  def apply(outputs: Mapping[str, Array],
            loss_params: Mapping[str, Any]) -> tuple[Array, dict[str, Array]]:
    total = 0.0
    metrics: dict[str, Array] = {}
    for term, (weight, objective) in terms.items():
      loss, term_metrics = objective.apply(outputs, loss_params.get(term, {}))
      total = total + weight * loss
      metrics[term_loss.format(term=term)] = loss
      metrics.update({f"{term}/{key}": value for key, value in term_metrics.items()
                      if key != "loss"})
    metrics["loss"] = total
    return total, metrics

  objectives = [objective for _, objective in terms.values()]
  return reg.Objective(
      init_params={term: dict(objective.init_params) for term, (_, objective) in terms.items()},
      apply=apply,
      modalities=tuple(dict.fromkeys(m for o in objectives for m in o.modalities)),
      batch_keys=tuple(dict.fromkeys(k for o in objectives for k in o.batch_keys)))


def _check_terms(terms: Any, path: str) -> Any:
  if not hasattr(terms, "items") or not len(terms):
    raise reg.ConfigError(
        f"{path} must be a non-empty ConfigDict {{term_name: ConfigDict(name=<loss>, "
        f"weight=<float>, ...)}}; got {terms!r}")
  return terms


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompositeFields:
  """`config.loss` of "composite": terms, {term name: ConfigDict(name=<loss>, weight=<float,
  default 1>, <that loss's fields>)} (see the module docstring)."""

  terms: Any = schema.field(check=_check_terms, factory=ml_collections.ConfigDict)


@reg.LOSSES.register("composite", fields=CompositeFields)
def composite_objective(loss_config: Any, *, axis_name: reg.AxisName) -> reg.Objective:
  """Builds the weighted sum of `loss_config.terms` (see the module docstring)."""
  f: CompositeFields = reg.LOSSES.parse(loss_config, name="composite")
  terms: dict[str, tuple[float, reg.Objective]] = {}
  for term, term_config in f.terms.items():
    field = f"config.loss.terms.{term}"
    if not isinstance(term, str) or not term or "/" in term:
      raise reg.ConfigError(f"config.loss.terms: term names must be non-empty strings without "
                            f"'/'; got {term!r}")
    sub = term_fields(term_config, field)
    weight = schema.number()(sub.pop("weight", 1.0), f"{field}.weight")
    terms[term] = (weight, build_term(sub, field, axis_name=axis_name))
  return weighted_sum(terms)
