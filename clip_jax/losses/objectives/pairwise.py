"""Multi-tower training as a weighted sum of two-modality objectives over chosen pairs.

    L = sum_{(a, b) in pairs} w_ab L_pair(a, b)

where L_pair is any registered two-modality objective (config `pair_loss`, e.g. "softmax",
"sigmoid", "dcl"), built once per pair from a copy of `pair_loss` whose `modalities` field is set
to the pair, so each pair has its own learnable scale (and bias): ImageBind-style anchoring is
pairs = (("image", "text"), ("image", "audio")), all-pairs training is the default (every
unordered pair of `modalities`).

Params: `{"<a>_<b>": <the pair objective's params>}`. Metrics: loss and `"<a>_<b>/<metric>"` for
every metric of every pair objective.

Sharding: whatever each pair objective does (they are called with the same axis_name).
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping

import jax
import ml_collections

from clip_jax.losses.collectives import AxisName
from clip_jax.losses.objectives.fields import Fields, as_tuple
from clip_jax.losses.registry import LOSSES, Objective
from clip_jax.registry import ConfigError

Array = jax.Array

PAIRWISE_DEFAULTS: dict[str, Any] = dict(
    modalities=("image", "text", "audio"),
    pairs=(),  # () = every unordered pair of `modalities`, in order
    pair_loss=ml_collections.ConfigDict(dict(name="softmax")),
    pair_weights=(),  # () = all 1
)


def _pair_config(pair_loss: Any, pair: tuple[str, str], field: str) -> ml_collections.ConfigDict:
  if isinstance(pair_loss, ml_collections.ConfigDict):
    as_dict = pair_loss.to_dict()
  elif isinstance(pair_loss, Mapping):
    as_dict = dict(pair_loss)
  else:
    raise ConfigError(f"{field} must be a ConfigDict with a `name` field, e.g. "
                      f"ConfigDict(dict(name='softmax')); got {pair_loss!r}")
  if not isinstance(as_dict.get("name"), str):
    raise ConfigError(f"{field}.name must name a two-modality loss, e.g. 'softmax'; "
                      f"got {as_dict.get('name')!r}")
  as_dict["modalities"] = tuple(pair)
  return ml_collections.ConfigDict(as_dict)


@LOSSES.register("pairwise", fields=PAIRWISE_DEFAULTS)
def pairwise_objective(loss_config: Any, *, axis_name: AxisName) -> Objective:
  """A weighted sum of a two-modality objective over pairs of modalities.

  Config fields (defaults in PAIRWISE_DEFAULTS): modalities (>= 2; the default pairs and the
  allowed names); pairs (tuple of 2-tuples of modality names; () = all pairs); pair_loss
  (ConfigDict with `name` and that objective's fields; `modalities` is set per pair);
  pair_weights (one number >= 0 per pair; () = all 1).
  """
  f = Fields(loss_config, PAIRWISE_DEFAULTS)
  modalities = f.modalities(at_least=2)
  raw_pairs = f.raw("pairs")
  pairs = (tuple(itertools.combinations(modalities, 2)) if not raw_pairs
           else as_tuple(raw_pairs))
  checked = []
  for pair in pairs or (None,):
    pair_t = as_tuple(pair) if not isinstance(pair, str) else None
    if (pair_t is None or len(pair_t) != 2 or pair_t[0] == pair_t[1]
        or any(m not in modalities for m in pair_t)):
      raise ConfigError(
          f"{f.field('pairs')} must be pairs of two different names from "
          f"{f.field('modalities')} = {modalities!r}, e.g. (('image', 'text'),); got {raw_pairs!r}")
    checked.append(tuple(pair_t))
  keys = [f"{a}_{b}" for a, b in checked]
  if len(set(keys)) != len(keys):
    raise ConfigError(f"{f.field('pairs')} has a pair twice: {raw_pairs!r}")
  raw_weights = f.raw("pair_weights")
  weights = as_tuple(raw_weights) if raw_weights else (1.0,) * len(checked)
  if (weights is None or len(weights) != len(checked)
      or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
                 for w in weights)):
    raise ConfigError(f"{f.field('pair_weights')} must be one number >= 0 per pair "
                      f"({len(checked)} pairs); got {raw_weights!r}")
  pair_field = f.field("pair_loss")
  objectives = {}
  for key, pair in zip(keys, checked):
    cfg = _pair_config(f.raw("pair_loss"), pair, pair_field)
    if cfg.name == "pairwise":
      raise ConfigError(f"{pair_field}.name cannot be 'pairwise'")
    factory = LOSSES.get(cfg.name, field=f"{pair_field}.name")
    objectives[key] = factory(cfg, axis_name=axis_name)
  weight_of = dict(zip(keys, (float(w) for w in weights)))
  used = tuple(m for m in modalities if any(m in p for p in checked))

  def apply(outputs: Mapping[str, Array],
            loss_params: Mapping[str, Any]) -> tuple[Array, dict[str, Array]]:
    total = 0.0
    metrics = {}
    for key, objective in objectives.items():
      loss, pair_metrics = objective.apply(outputs, loss_params[key])
      total = total + weight_of[key] * loss
      metrics.update({f"{key}/{name}": value for name, value in pair_metrics.items()})
    metrics["loss"] = total
    return total, metrics

  init_params = {key: dict(obj.init_params) for key, obj in objectives.items()}
  return Objective(init_params=init_params, apply=apply, modalities=used,
                   batch_keys=tuple(dict.fromkeys(
                       k for o in objectives.values() for k in o.batch_keys)))
