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

from typing import Any

import jax
import ml_collections
import optax

from clip_jax.tree_paths import compile_rules, path_to_str
from clip_jax.registry import ConfigError


def make_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup then cosine decay (see the module docstring)."""
  warmup = int(optim.warmup_steps)
  if not 0 <= warmup <= total_steps:
    raise ConfigError(f"config.optim.warmup_steps = {warmup} must be in [0, total_steps="
                      f"{total_steps}]")
  if optim.learning_rate <= 0:
    raise ConfigError(f"config.optim.learning_rate = {optim.learning_rate} must be > 0")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim.learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=optim.learning_rate * optim.get("end_lr_ratio", 0.0))


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
  frozen = _match_mask(params, optim.get("freeze", ()), "config.optim.freeze",
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
  schedule = make_schedule(optim, total_steps)
  no_decay = _match_mask(params, optim.get("no_decay", ()), "config.optim.no_decay",
                         require_match=False)
  decay_mask = jax.tree.map(lambda m: not m, no_decay)
  if frozen is None:
    frozen = frozen_mask(optim, params)
  parts = []
  if optim.get("grad_clip_norm", 0.0):
    parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                           weight_decay=optim.weight_decay, mask=decay_mask))
  tx = optax.chain(*parts)
  if any(jax.tree.leaves(frozen)):
    labels = jax.tree.map(lambda f: "frozen" if f else "trained", frozen)
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule
