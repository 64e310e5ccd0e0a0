"""Parameter paths as "/"-joined strings, and the (regex, value) rules matched against them.

Sharding rules, optimizer masks and `config.init_from_rules` all name parameters by path:
"model/image/encoder/transformer/block_0/mlp/fc1/kernel", "loss/scale", or inside the optimizer
state "opt_state/0/mu/model/...". Regexes are applied with `re.search`.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax

from clip_jax.registry import ConfigError


def path_to_str(path: jax.tree_util.KeyPath) -> str:
  """A pytree key path as a "/"-joined string of its keys, attribute names and indices."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def named_leaves(tree: Any) -> list[tuple[str, Any]]:
  """[(path string, leaf)] for every leaf of `tree`."""
  return [(path_to_str(p), leaf) for p, leaf in jax.tree.flatten_with_path(tree)[0]]


def compile_rules(rules: Sequence[Sequence[Any]], field: str) -> list[tuple[re.Pattern, Any]]:
  """Compiles (regex, value) rules.

  Raises:
    ConfigError: naming `field[i]` for a rule that is not a pair or whose regex is invalid.
  """
  compiled = []
  for i, rule in enumerate(rules):
    if isinstance(rule, str) or len(rule) != 2:
      raise ConfigError(f"{field}[{i}] = {rule!r} must be a (regex, value) pair")
    pattern, value = rule
    try:
      compiled.append((re.compile(pattern), value))
    except (re.error, TypeError) as e:
      raise ConfigError(f"{field}[{i}]: {pattern!r} is not a valid regex ({e})") from None
  return compiled
