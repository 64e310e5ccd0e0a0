"""Where each parameter of a clip_jax model lives in another library's state dict.

A converter lists one `Rule` per parameter: our path in the `MultiTower` params, their key, and
the two layout changes. `to_params` and `from_params` apply a list of them, with the checks
every converter needs (missing, surplus and misshapen keys named).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, TypeVar

import numpy as np

from clip_jax.registry import ConfigError

T = TypeVar("T")

# One parameter: (our path, their key, theirs -> ours, ours -> theirs; None for a converter
# that only imports).
Rule = tuple[tuple[str, ...], str, Callable[[np.ndarray], np.ndarray],
             Callable[[np.ndarray], np.ndarray] | None]


def same(x: np.ndarray) -> np.ndarray:
  return x


def transpose(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x.T)


def linear(ours: tuple[str, ...], theirs: str, bias: bool = True) -> list[Rule]:
  """A torch Linear `<theirs>.{weight [out, in], bias}` as our `<ours>/{kernel [in, out], bias}`."""
  rules = [(ours + ("kernel",), f"{theirs}.weight", transpose, transpose)]
  if bias:
    rules.append((ours + ("bias",), f"{theirs}.bias", same, same))
  return rules


def norm(ours: tuple[str, ...], theirs: str) -> list[Rule]:
  """A torch LayerNorm `<theirs>.{weight, bias}` as our `<ours>/{scale, bias}`."""
  return [(ours + ("scale",), f"{theirs}.weight", same, same),
          (ours + ("bias",), f"{theirs}.bias", same, same)]


def patch_embedding(ours: tuple[str, ...], theirs: str, patch_size: int,
                    bias: bool) -> list[Rule]:
  """A torch stride-p Conv2d `<theirs>.weight` [D, C, p, p] as our patch Linear over patches
  flattened in (row, column, channel) order, `<ours>/kernel` [p*p*C, D] (and its bias)."""
  p = patch_size

  def to_ours(w: np.ndarray) -> np.ndarray:  # [D, C, p, p] -> [p*p*C, D]
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]))

  def to_theirs(k: np.ndarray) -> np.ndarray:  # [p*p*C, D] -> [D, C, p, p]
    return np.ascontiguousarray(k.reshape(p, p, -1, k.shape[1]).transpose(3, 2, 0, 1))

  rules = [(ours + ("kernel",), f"{theirs}.weight", to_ours, to_theirs)]
  if bias:
    rules.append((ours + ("bias",), f"{theirs}.bias", same, same))
  return rules


def attention(ours: tuple[str, ...], theirs: str) -> list[Rule]:
  """Attention `<theirs>.{q,k,v,out}_proj` (torch's in_proj split by `split_attention`) as our
  `<ours>/{query,key,value,out}`, every projection with its bias (the towers' `key_bias=True`)."""
  return [*linear(ours + ("query",), f"{theirs}.q_proj"),
          *linear(ours + ("key",), f"{theirs}.k_proj"),
          *linear(ours + ("value",), f"{theirs}.v_proj"),
          *linear(ours + ("out",), f"{theirs}.out_proj")]


def blocks(ours: tuple[str, ...], theirs: str, depth: int,
           names: tuple[str, str, str, str, str]) -> list[Rule]:
  """The rules of `depth` pre-LN transformer blocks: ours `<ours>/block_<i>`, theirs
  `<theirs>.<i>`, whose parts are named `names` = (attention norm, attention, MLP norm, MLP
  fc1, MLP fc2), e.g. open_clip's ("ln_1", "attn", "ln_2", "mlp.c_fc", "mlp.c_proj")."""
  attn_norm, attn, mlp_norm, fc1, fc2 = names
  rules = []
  for i in range(depth):
    o, t = ours + (f"block_{i}",), f"{theirs}.{i}"
    rules += norm(o + ("attn_norm",), f"{t}.{attn_norm}")
    rules += attention(o + ("attn",), f"{t}.{attn}")
    rules += norm(o + ("mlp_norm",), f"{t}.{mlp_norm}")
    rules += linear(o + ("mlp", "fc1"), f"{t}.{fc1}")
    rules += linear(o + ("mlp", "fc2"), f"{t}.{fc2}")
  return rules


def split_attention(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Splits every `<prefix>.in_proj_{weight,bias}` ([3D, D], [3D]: torch's MultiheadAttention)
  into `<prefix>.{q,k,v}_proj.{weight,bias}`; the rest is kept as it is."""
  out = {}
  for key, value in state_dict.items():
    prefix, dot, leaf = key.rpartition(".")
    if leaf in ("in_proj_weight", "in_proj_bias"):
      for name, part in zip("qkv", np.split(value, 3, axis=0)):
        out[f"{prefix}{dot}{name}_proj.{leaf.removeprefix('in_proj_')}"] = part
    else:
      out[key] = value
  return out


def join_attention(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The inverse of `split_attention`."""
  out = {}
  for key, value in state_dict.items():
    prefix, _, leaf = key.rpartition(".")
    block, _, proj = prefix.rpartition(".")
    if proj not in ("q_proj", "k_proj", "v_proj"):
      out[key] = value
    elif proj == "q_proj":
      parts = [state_dict[f"{block}.{n}_proj.{leaf}"] for n in "qkv"]
      out[f"{block}.in_proj_{leaf}"] = np.concatenate(parts, axis=0)
  return out


def to_params(state: Mapping[str, np.ndarray], rules: Iterable[Rule],
              expected: Mapping[tuple[str, ...], tuple[int, ...]], model: str,
              other_keys: Iterable[str] = ()) -> dict[str, Any]:
  """The nested params the rules read from `state`.

  Args:
    state: {their key: float32 array} (attention already split).
    rules: one per parameter of the model.
    expected: {our path: shape} of the model (e.g. from `nnx.eval_shape`).
    model: what the checkpoint should be, for errors (e.g. "an open_clip model of ...").
    other_keys: their keys that are read elsewhere (e.g. the logit scale).

  Raises:
    ValueError naming the missing keys, the keys the model has no place for, or a key whose
    shape differs from the one the model needs.
  """
  rules = list(rules)
  wanted = {key for _, key, _, _ in rules} | set(other_keys)
  missing = sorted(wanted - set(state))
  extra = sorted(set(state) - wanted)
  problems = [f"{what} {', '.join(keys[:5])}" + (" ..." if len(keys) > 5 else "")
              for what, keys in (("missing keys", missing), ("keys with no place in it", extra))
              if keys]
  if problems:
    raise ValueError(f"the checkpoint is not {model}: " + "; ".join(problems))
  params: dict[str, Any] = {}
  for path, key, to_ours, _ in rules:
    value = to_ours(state[key])
    if value.shape != expected[path]:
      raise ValueError(f"checkpoint key {key!r} has shape {state[key].shape}, which does not fit "
                       f"{model} (it needs {'/'.join(path)} {expected[path]}); is it another "
                       "model size or image size?")
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  paths = {path for path, _, _, _ in rules}
  assert paths == set(expected), paths ^ set(expected)  # the rules cover the model
  return params


def get(params: Mapping[str, Any], path: tuple[str, ...]) -> np.ndarray:
  """The float32 array at `path` of nested `params`.

  Raises:
    KeyError naming the path.
  """
  node = params
  for name in path:
    if name not in node:
      raise KeyError(f"params have no {'/'.join(path)}")
    node = node[name]
  return np.asarray(node, np.float32)


def from_params(params: Mapping[str, Any], rules: Iterable[Rule]) -> dict[str, np.ndarray]:
  """{their key: float32 array} of the rules' parameters in nested `params`.

  Raises:
    KeyError naming a path `params` lacks.
  """
  return {key: to_theirs(get(params, path)) for path, key, _, to_theirs in rules}


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
  """`table[name]` (a converter's named architectures).

  Raises:
    ConfigError naming `what` (e.g. "open_clip architecture"), `name` and the known names.
  """
  if name not in table:
    raise ConfigError(f"{what} {name!r} is not known; choose one of: {', '.join(table)}")
  return table[name]
