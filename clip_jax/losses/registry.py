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
  t = exp(t'); biases are stored as-is. A parameter declared with `Param(learned=False)` stays at
  its initial value: it is outside the optimizer (no update, no weight decay, no moments). A
  bound (`Param(high=...)`) is a projection applied after each optimizer update, never a clamp
  inside `apply`, so the parameter keeps its gradient at the bound.
* Returns a scalar loss that is identical on every device (the loss over the GLOBAL batch) and a
  flat dict of scalar metrics, also identical on every device.

With `axis_name=None` the objective runs on whole-batch arrays outside `shard_map`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from clip_jax.losses.collectives import AxisName
from clip_jax import schema
from clip_jax.registry import ConfigError, Registry

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Param:
  """One of an objective's own scalar parameters, as declared in `Objective.init_params`.

  Attributes:
    init: the raw initial value (e.g. t' = log t for a scale).
    learned: False keeps the value fixed at `init`: the trainer leaves it out of the optimizer
      entirely, whatever `config.optim` says.
    low, high: optional bounds on the raw value. The trainer projects the parameter into
      [low, high] after every optimizer update (open_clip's clamp of the logit scale), so the
      loss keeps its gradient with respect to it at the bound.
  """

  init: float
  learned: bool = True
  low: float | None = None
  high: float | None = None

  def __post_init__(self):
    if self.low is not None and self.high is not None and self.low > self.high:
      raise ValueError(f"Param bounds low={self.low} > high={self.high}")


def _is_param(x: Any) -> bool:
  return isinstance(x, (Param, int, float))


def _as_param(x: Any) -> Param:
  return x if isinstance(x, Param) else Param(float(x))


def initial_values(init_params: Mapping[str, Any]) -> dict[str, Any]:
  """The raw float32 initial values of an objective's (possibly nested) `init_params`."""
  return jax.tree.map(lambda p: jnp.asarray(_as_param(p).init, jnp.float32), dict(init_params),
                      is_leaf=_is_param)


def fixed_mask(init_params: Mapping[str, Any]) -> dict[str, Any]:
  """A bool pytree shaped like the loss params: True where the parameter is not learned."""
  return jax.tree.map(lambda p: not _as_param(p).learned, dict(init_params), is_leaf=_is_param)


def project(loss_params: Mapping[str, Any], init_params: Mapping[str, Any]) -> dict[str, Any]:
  """Clips every bounded parameter of `loss_params` into its declared [low, high]."""
  def clip(p, value):
    p = _as_param(p)
    if p.low is None and p.high is None:
      return value
    return jnp.clip(value, p.low, p.high).astype(value.dtype)

  return jax.tree.map(clip, dict(init_params), dict(loss_params), is_leaf=_is_param)


def scale_param(init_scale: float, *, learn_scale: bool = True, max_scale: float = 0.0) -> Param:
  """The `Param` of a temperature t = exp(t'): fixed unless `learn_scale`, t' <= log(max_scale)
  when `max_scale` > 0 (the bound is a projection after the update; see `Param`)."""
  return Param(float(init_scale), learned=bool(learn_scale),
               high=math.log(max_scale) if max_scale else None)


@dataclasses.dataclass(frozen=True)
class Objective:
  """A training objective.

  Attributes:
    init_params: the objective's own parameters by name (nested dicts allowed, as in
      `composite`), each a `Param` (initial raw value, learned or fixed, bounds) or a plain float
      (learned, unbounded), e.g. {"scale": Param(log(10)), "bias": -10.0}. Their initial values
      become `params["loss"]`.
    apply: (outputs, loss_params) -> (scalar loss, metrics); see the module docstring.
    modalities: the modalities (keys of `outputs`) the objective reads.
    batch_keys: per-example batch entries other than the modalities that the objective reads
      (e.g. "instance_id"); the trainer passes them into `outputs`, sharded like the
      embeddings, and stops at start-up if the data does not provide them.
  """

  init_params: Mapping[str, float]
  apply: Callable[[Mapping[str, Array], Mapping[str, Array]], tuple[Array, dict[str, Array]]]
  modalities: tuple[str, ...] = ("image", "text")
  batch_keys: tuple[str, ...] = ()


ObjectiveFactory = Callable[..., Objective]  # (loss_config: ConfigDict, *, axis_name) -> Objective

LOSSES: Registry[ObjectiveFactory] = Registry("loss", "config.loss.name")


def make_objective(loss_config: Any, *, axis_name: AxisName) -> Objective:
  """Builds the objective named by `loss_config.name` (raises ConfigError for unknown names)."""
  return LOSSES.get(loss_config.name)(loss_config, axis_name=axis_name)


def get_embeddings(outputs: Mapping[str, Array], modalities: Sequence[str],
                   field: str = "config.loss.modalities") -> list[Array]:
  """The float32 `[n, d]` embeddings of `modalities` from the model outputs.

  Raises:
    ConfigError: naming `field` when a modality is not among the outputs.
    ValueError: when the embeddings are not all `[n, d]` of one shape.
  """
  missing = [m for m in modalities if m not in outputs]
  if missing:
    raise ConfigError(
        f"{field} = {tuple(modalities)!r} asks for {', '.join(missing)}, but the model outputs "
        f"only have: {', '.join(sorted(outputs))}")
  embs = [jnp.asarray(outputs[m], jnp.float32) for m in modalities]
  for m, e in zip(modalities, embs):
    if e.ndim != 2 or e.shape != embs[0].shape:
      raise ValueError(f"embeddings must all be [n, d] of one shape; {m!r} has {e.shape}, "
                       f"{modalities[0]!r} has {embs[0].shape}")
  return embs


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImplFields:
  """The fields of an objective whose CLIP or SigLIP term runs on `softmax_loss` /
  `sigmoid_loss`: `impl` ("ring" | "all_gather") and `chunk_size` (ring only; 0 = whole
  blocks)."""

  impl: str = schema.field("ring", schema.one_of("ring", "all_gather"))
  chunk_size: int = schema.field(0, schema.integer(low=0))

  def check(self, path: str) -> None:
    if self.chunk_size and self.impl != "ring":
      raise ConfigError(f"{path}.chunk_size applies to {path}.impl = 'ring' only; "
                        f"got impl {self.impl!r} with chunk_size {self.chunk_size}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContrastiveFields(ImplFields):
  """The fields shared by the pairwise contrastive objectives (sigmoid, softmax); each adds its
  own `init_scale` (t' with t = exp(t')).

  Attributes:
    modalities: (x, y).
    label_smoothing: in [0, 1).
    learn_scale: False: t stays exp(init_scale), outside the optimizer, without a gradient.
    max_scale: 0 = no bound, else t' is projected into (-inf, log max_scale] after each update.
  """

  modalities: tuple[str, ...] = schema.field(("image", "text"), schema.modalities(count=2))
  label_smoothing: float = schema.field(0.0, schema.number(low=0.0, high=1.0, high_open=True))
  learn_scale: bool = True
  max_scale: float = schema.field(0.0, schema.number(low=0.0))


def temperature(raw_scale: Array, learned: bool = True) -> Array:
  """t = exp(t') in float32; without a gradient unless `learned`.

  A fixed scale (`scale_param(learn_scale=False)`) is also left out of the optimizer by the
  trainer; the stop_gradient makes the objective mean the same when it is differentiated
  directly. Bounding t is the trainer's job (see `scale_param`).
  """
  t = jnp.exp(jnp.asarray(raw_scale, jnp.float32))
  return t if learned else lax.stop_gradient(t)


ScaledLoss = Callable[[list[Array], Array, Mapping[str, Array]], tuple[Array, dict[str, Array]]]


def scaled_objective(loss_fn: ScaledLoss, *, modalities: tuple[str, ...], init_scale: float,
                     learn_scale: bool, max_scale: float = 0.0,
                     read: Sequence[str] | None = None,
                     batch_keys: tuple[str, ...] = ()) -> Objective:
  """An objective whose one parameter is a temperature, {"scale": t'} with t = exp(t').

  Args:
    loss_fn: (embeddings, t, outputs) -> (loss, metrics): the float32 `[n, d]` embeddings of
      `read` in that order, the scale t (see `temperature`) and all the outputs.
    modalities: the objective's modalities (`Objective.modalities`).
    init_scale, learn_scale, max_scale: the scale's `Param` (see `scale_param`).
    read: the modalities handed to `loss_fn`, in order (default `modalities`).
    batch_keys: see `Objective`.

  Returns:
    The Objective; its metrics are "loss", "scale" (t) and those of `loss_fn`.
  """
  read = modalities if read is None else tuple(read)

  def apply(outputs: Mapping[str, Array],
            loss_params: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
    t = temperature(loss_params["scale"], learn_scale)
    loss, metrics = loss_fn(get_embeddings(outputs, read), t, outputs)
    return loss, {"loss": loss, "scale": t, **metrics}

  return Objective(
      init_params={"scale": scale_param(init_scale, learn_scale=learn_scale,
                                        max_scale=max_scale)},
      apply=apply, modalities=modalities, batch_keys=batch_keys)
