"""The optimizer from `config.optim`: AdamW, warmup + cosine schedule, clipping, masks by regex.

* learning rate: linear warmup from 0 to `learning_rate` over `warmup_steps`, then cosine decay
  to `learning_rate * end_lr_ratio` at `total_steps`;
* gradients clipped to global norm `grad_clip_norm` (0 disables);
* decoupled weight decay on every parameter except those whose path matches a `no_decay` regex
  (biases, norms, the loss's scale and bias);
* parameters whose path matches a `freeze` regex, and those the objective declares fixed
  (`Param(learned=False)`, e.g. a loss scale with `learn_scale = False`), are outside the
  optimizer: no update, no weight decay and no optimizer moments (LiT: lock a tower).

Parameter paths are "/"-joined, e.g. "model/image/encoder/block_0/attn/query/kernel" or
"loss/scale"; regexes are applied with `re.search`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import optax

from clip_jax import schema
from clip_jax.tree_paths import compile_rules, path_to_str
from clip_jax.registry import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimFields:
  """`config.optim` (see the module docstring).

  Attributes:
    learning_rate: the peak learning rate, > 0.
    warmup_steps: in [0, config.total_steps].
    end_lr_ratio: the final learning rate over the peak.
    b1, b2, eps: AdamW's moment decays and epsilon.
    weight_decay: decoupled weight decay.
    grad_clip_norm: the global gradient norm to clip to (0 = no clipping).
    no_decay, freeze: tuples of parameter-path regexes.
  """

  learning_rate: float = schema.field(check=schema.number(low=0.0, low_open=True))
  warmup_steps: int = schema.field(check=schema.integer(low=0))
  end_lr_ratio: float = 0.0
  b1: float = schema.field()
  b2: float = schema.field()
  eps: float = schema.field()
  weight_decay: float = schema.field()
  grad_clip_norm: float = schema.field(0.0, schema.number(low=0.0))
  no_decay: Any = ()
  freeze: Any = ()


def parse_optim(optim: ml_collections.ConfigDict) -> OptimFields:
  """Reads `config.optim` (ConfigError naming an unknown, missing or invalid field)."""
  return schema.parse(OptimFields, optim, "config.optim")


def make_schedule(fields: OptimFields, total_steps: int) -> optax.Schedule:
  """Linear warmup then cosine decay (see the module docstring)."""
  if fields.warmup_steps > total_steps:
    raise ConfigError(f"config.optim.warmup_steps = {fields.warmup_steps} must be in "
                      f"[0, total_steps={total_steps}]; set --config.optim.warmup_steps to at "
                      f"most {total_steps} (a tenth of the steps is usual) or raise "
                      "config.total_steps")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=fields.learning_rate, warmup_steps=fields.warmup_steps,
      decay_steps=max(total_steps, fields.warmup_steps + 1),
      end_value=fields.learning_rate * fields.end_lr_ratio)


def _match_mask(params: Any, regexes: Any, field: str, *, require_match: bool) -> Any:
  """A bool pytree: True where the parameter path matches one of `regexes`."""
  compiled = [p for p, _ in compile_rules([(r, None) for r in regexes], field)]
  mask = jax.tree.map_with_path(
      lambda path, _: any(p.search(path_to_str(path)) for p in compiled), params)
  if require_match:
    paths = [path_to_str(p) for p, _ in jax.tree.flatten_with_path(params)[0]]
    for regex, pattern in zip(regexes, compiled):
      if not any(pattern.search(path) for path in paths):
        raise ConfigError(
            f"{field}: {regex!r} matches no parameter; parameter paths look like "
            f"{', '.join(paths[:4])}, ...")
  return mask


def frozen_mask(optim: ml_collections.ConfigDict, params: Any, fixed: Any = None) -> Any:
  """A bool pytree like `params`: True where a `config.optim.freeze` regex matches the path or
  `fixed` (same structure, optional) is True.

  Raises:
    ConfigError: a freeze regex matches no parameter.
  """
  frozen = _match_mask(params, parse_optim(optim).freeze, "config.optim.freeze",
                       require_match=True)
  if fixed is not None:
    frozen = jax.tree.map(lambda a, b: bool(a or b), frozen, fixed)
  return frozen


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int, params: Any,
                   frozen: Any = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optax chain for `params` (arrays or ShapeDtypeStructs).

  Args:
    frozen: a bool pytree like `params`, True for the parameters left out of the optimizer;
      None: `frozen_mask(optim, params)`.

  Returns:
    (transformation, learning-rate schedule).
  """
  fields = parse_optim(optim)
  schedule = make_schedule(fields, total_steps)
  no_decay = _match_mask(params, fields.no_decay, "config.optim.no_decay", require_match=False)
  decay_mask = jax.tree.map(lambda m: not m, no_decay)
  if frozen is None:
    frozen = frozen_mask(optim, params)
  parts = []
  if fields.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(fields.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=fields.b1, b2=fields.b2, eps=fields.eps,
                           weight_decay=fields.weight_decay, mask=decay_mask))
  tx = optax.chain(*parts)
  if any(jax.tree.leaves(frozen)):
    labels = jax.tree.map(lambda f: "frozen" if f else "trained", frozen)
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule
