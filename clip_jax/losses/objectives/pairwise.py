"""Multi-tower training as a weighted sum of two-modality objectives over chosen pairs.

    L = sum_{(a, b) in pairs} w_ab L_pair(a, b)

where L_pair is any registered two-modality objective (config `pair_loss`, e.g. "softmax",
"sigmoid", "dcl"), built once per pair from a copy of `pair_loss` whose `modalities` field is set
to the pair, so each pair has its own learnable scale (and bias): ImageBind-style anchoring is
pairs = (("image", "text"), ("image", "audio")), all-pairs training is the default (every
unordered pair of `modalities`).

Params: `{"<a>_<b>": <the pair objective's params>}`. Metrics: loss and `"<a>_<b>/<metric>"` for
every metric of every pair objective.

This is `composite`'s weighted sum (`clip_jax.losses.composite.weighted_sum`) with one term per
pair, named "<a>_<b>", and each term's loss logged as "<a>_<b>/loss".

Sharding: whatever each pair objective does (they are called with the same axis_name).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import ml_collections

from clip_jax import schema
from clip_jax.losses.collectives import AxisName
from clip_jax.losses.composite import build_term, term_fields, weighted_sum
from clip_jax.losses.registry import LOSSES, Objective
from clip_jax.registry import ConfigError


def _as_tuple(value: Any) -> tuple[Any, ...] | None:
  """`tuple(value)`, or None when `value` is not iterable."""
  try:
    return tuple(value)
  except TypeError:
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairwiseFields:
  """`config.loss` of "pairwise".

  Attributes:
    modalities: >= 2 names: the default pairs and the names `pairs` may use.
    pairs: 2-tuples of modality names; () = every unordered pair of `modalities`, in order.
    pair_loss: ConfigDict with `name` (a two-modality loss) and that objective's fields;
      `modalities` is set per pair.
    pair_weights: one number >= 0 per pair; () = all 1.
  """

  modalities: tuple[str, ...] = schema.field(("image", "text", "audio"),
                                             schema.modalities(at_least=2))
  pairs: Any = ()
  pair_loss: Any = schema.field(factory=lambda: ml_collections.ConfigDict(dict(name="softmax")))
  pair_weights: Any = ()


@LOSSES.register("pairwise", fields=PairwiseFields)
def pairwise_objective(loss_config: Any, *, axis_name: AxisName) -> Objective:
  """A weighted sum of a two-modality objective over pairs of modalities (config fields:
  `PairwiseFields`)."""
  f: PairwiseFields = LOSSES.parse(loss_config, name="pairwise")
  path = "config.loss"
  modalities = f.modalities
  raw_pairs = f.pairs
  pairs = (tuple(itertools.combinations(modalities, 2)) if not raw_pairs
           else _as_tuple(raw_pairs))
  checked = []
  for pair in pairs or (None,):
    pair_t = _as_tuple(pair) if not isinstance(pair, str) else None
    if (pair_t is None or len(pair_t) != 2 or pair_t[0] == pair_t[1]
        or any(m not in modalities for m in pair_t)):
      raise ConfigError(
          f"{path}.pairs must be pairs of two different names from {path}.modalities = "
          f"{modalities!r}, e.g. (('image', 'text'),); got {raw_pairs!r}")
    checked.append(tuple(pair_t))
  keys = [f"{a}_{b}" for a, b in checked]
  if len(set(keys)) != len(keys):
    raise ConfigError(f"{path}.pairs has a pair twice: {raw_pairs!r}")
  raw_weights = f.pair_weights
  weights = _as_tuple(raw_weights) if raw_weights else (1.0,) * len(checked)
  if (weights is None or len(weights) != len(checked)
      or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
                 for w in weights)):
    raise ConfigError(f"{path}.pair_weights must be one number >= 0 per pair "
                      f"({len(checked)} pairs); got {raw_weights!r}")
  pair_field = f"{path}.pair_loss"
  pair_loss = term_fields(f.pair_loss, pair_field)
  if pair_loss["name"] == "pairwise":
    raise ConfigError(f"{pair_field}.name cannot be 'pairwise'")
  terms = {key: (float(w), build_term(dict(pair_loss, modalities=pair), pair_field,
                                      axis_name=axis_name))
           for key, pair, w in zip(keys, checked, weights)}
  summed = weighted_sum(terms, term_loss="{term}/loss")
  # The modalities in the order of `modalities` (the sum lists them in the order of the pairs).
  return dataclasses.replace(
      summed, modalities=tuple(m for m in modalities if any(m in p for p in checked)))
