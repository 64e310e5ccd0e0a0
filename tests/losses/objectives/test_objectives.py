"""The paper objectives: sharded == single-device float64 reference, edge cases, config errors.

Every case builds its objective for several batch shardings and runs them all in ONE jitted
function (one compile per case), on the 8 simulated CPU devices:

  "1", "2", "4": a mesh with a "data" axis of size D and the other devices on further axes
      ("rest", ...), with the objective sharded over "data" only (D shards, replicated over the
      rest). (The size-1 variant uses a (1, 2, 4) mesh: with (1, 8) XLA's sharding propagation
      fails when it shares one jit with the (2, 4) variant.)
  "8": a ("data",) mesh of 8,
  "4x2": a ("data", "fsdp") mesh with axis_name = ("data", "fsdp") (a tuple of batch axes),
  "none": axis_name = None on the whole batch, outside shard_map.

Values, metrics and gradients (w.r.t. the embeddings and the loss parameters) of every variant
are compared with `reference.py` (float64, gradients by central finite differences).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import clip_jax.losses  # noqa: F401  (registers the objectives)
import objectives_reference as ref  # objectives/reference.py, registered by ../conftest.py
from clip_jax.losses.objectives import gram as gram_module
from clip_jax.losses.registry import LOSSES, initial_values, make_objective
from clip_jax.registry import ConfigError


N, DIM = 16, 6
MESHES: dict[str, tuple[tuple[int, ...], tuple[str, ...], Any] | None] = {
    "1": ((1, 2, 4), ("data", "rest", "more"), "data"),
    "2": ((2, 4), ("data", "rest"), "data"),
    "4": ((4, 2), ("data", "rest"), "data"),
    "8": ((8,), ("data",), "data"),
    "4x2": ((4, 2), ("data", "fsdp"), ("data", "fsdp")),
    "none": None,
}


# ----------------------------------------------------------------------------- cases


@dataclasses.dataclass(frozen=True)
class Case:
  """An objective config, the embeddings it reads and its reference.

  reference(inputs) -> (loss, metrics): inputs holds float64 `[N, d]` embeddings by modality,
  "instance_id", and the loss params flattened to "a.b" paths.
  """
  config: dict[str, Any]
  modalities: tuple[str, ...]
  reference: Callable[[dict[str, np.ndarray]], tuple[float, dict[str, float]]]
  metrics: tuple[str, ...] = ()
  ids: bool = False
  constant: tuple[str, ...] = ()  # inputs the reference holds fixed (not differentiated)
  variants: tuple[str, ...] = ("1", "2", "4", "8", "none")  # keys of MESHES


def _pair_refs(pairs, weights, pair_ref):
  def reference(inp):
    total, metrics = 0.0, {}
    for (a, b), w in zip(pairs, weights):
      loss, _ = pair_ref(inp, a, b, f"{a}_{b}.")
      metrics[f"{a}_{b}/loss"] = loss
      total += w * loss
    return total, metrics
  return reference


CASES: dict[str, Case] = {
    "dcl": Case(
        dict(name="dcl", learn_scale=True),
        ("image", "text"),
        lambda i: ref.dcl_ref(i["image"], i["text"], i["scale"]),
        metrics=("x_to_y", "y_to_x")),
    "dclw_intra": Case(  # detached weights (the default): the reference holds them constant
        dict(name="dcl", modalities=("text", "image"), weighting="dclw", sigma=0.3,
             intra_modal_negatives=True, learn_scale=True),
        ("image", "text"),
        lambda i: ref.dcl_ref(i["text"], i["image"], i["scale"], weighting="dclw", sigma=0.3,
                              intra_modal_negatives=True,
                              weights_from=(i["weights_text"], i["weights_image"])),
        metrics=("x_to_y", "y_to_x", "weight_min", "weight_max"),
        constant=("weights_text", "weights_image"),
        variants=("1", "2", "4", "8")),
    "dclw_through_weights": Case(
        dict(name="dcl", weighting="dclw", detach_weights=False, learn_scale=True),
        ("image", "text"),
        lambda i: ref.dcl_ref(i["image"], i["text"], i["scale"], weighting="dclw"),
        metrics=("x_to_y", "y_to_x", "weight_min", "weight_max"),
        variants=("2", "8")),
    "contrastive_gap": Case(  # its CLIP term on the ring, in column chunks (default all_gather)
        dict(name="contrastive_gap", align_weight=0.5, uniform_weight=2.0,
             cross_uniform_weight=1.5, learn_scale=True, impl="ring", chunk_size=3),
        ("image", "text"),
        lambda i: ref.contrastive_gap_ref(i["image"], i["text"], i["scale"], align_weight=0.5,
                                          uniform_weight=2.0, cross_uniform_weight=1.5),
        metrics=("clip", "align", "uniform", "cross_uniform")),
    "cwcl": Case(
        dict(name="cwcl"),
        ("image", "text"),
        lambda i: ref.cwcl_ref(i["image"], i["text"], i["scale"], q_for_weights=i["weights_text"]),
        metrics=("student_to_teacher", "teacher_to_student"),
        constant=("weights_text",)),
    "cwcl_image_teacher": Case(
        dict(name="cwcl", teacher_modality="image", directions="teacher_to_student"),
        ("image", "text"),
        lambda i: ref.cwcl_ref(i["text"], i["image"], i["scale"], q_for_weights=i["weights_image"],
                               directions="teacher_to_student"),
        metrics=("teacher_to_student",),
        constant=("weights_image",),
        variants=("2", "8")),
    "multi_positive": Case(
        dict(name="multi_positive"),
        ("image", "text"),
        lambda i: ref.multi_positive_ref(i["image"], i["text"], i["instance_id"], i["scale"]),
        metrics=("x_to_y", "y_to_x", "positives_per_row"),
        ids=True,
        variants=("1", "2", "4", "8", "4x2", "none")),
    "multi_positive_pairs": Case(
        dict(name="multi_positive", reduction="pair_mean"),
        ("image", "text"),
        lambda i: ref.multi_positive_ref(i["image"], i["text"], i["instance_id"], i["scale"],
                                         reduction="pair_mean"),
        metrics=("x_to_y", "y_to_x", "positives_per_row"),
        ids=True,
        variants=("2", "8", "none")),
    "mv_infonce": Case(
        dict(name="mv_infonce", learn_scale=True),
        ("image", "text", "audio"),
        lambda i: ref.mv_infonce_ref([i["image"], i["text"], i["audio"]], i["scale"]),
        metrics=("align", "uniform")),
    "mv_infonce_same_view": Case(
        dict(name="mv_infonce", modalities=("image", "text"), same_view_negatives=True,
             learn_scale=True),
        ("image", "text"),
        lambda i: ref.mv_infonce_ref([i["image"], i["text"]], i["scale"],
                                     same_view_negatives=True),
        metrics=("align", "uniform"),
        variants=("2", "4x2", "none")),
    "mv_dhel": Case(
        dict(name="mv_dhel", modalities=("audio", "image", "text"), learn_scale=True),
        ("image", "text", "audio"),
        lambda i: ref.mv_dhel_ref([i["audio"], i["image"], i["text"]], i["scale"]),
        metrics=("align", "uniform"),
        variants=("1", "2", "4", "8", "4x2")),
    "mv_dhel_with_self": Case(
        dict(name="mv_dhel", modalities=("image", "text"), exclude_self=False, learn_scale=True),
        ("image", "text"),
        lambda i: ref.mv_dhel_ref([i["image"], i["text"]], i["scale"], exclude_self=False),
        metrics=("align", "uniform"),
        variants=("2", "none")),
    "gram": Case(
        dict(name="gram", anchor="text"),
        ("image", "text", "audio"),
        lambda i: ref.gram_ref(i["text"], [i["image"], i["audio"]], i["scale"],
                               label_smoothing=0.1),  # the default
        metrics=("anchor_to_data", "data_to_anchor", "positive_volume", "negative_volume"),
        variants=("1", "2", "4", "8", "4x2", "none")),
    "gram_two": Case(
        dict(name="gram", modalities=("image", "text"), label_smoothing=0.0),
        ("image", "text"),
        lambda i: ref.gram_ref(i["image"], [i["text"]], i["scale"]),
        metrics=("anchor_to_data", "data_to_anchor"),
        variants=("8", "none")),
    "pairwise_dcl": Case(
        dict(name="pairwise", pairs=(("image", "text"), ("image", "audio")),
             pair_weights=(1.0, 0.5),
             pair_loss=ml_collections.ConfigDict(dict(name="dcl", learn_scale=True))),
        ("image", "text", "audio"),
        _pair_refs((("image", "text"), ("image", "audio")), (1.0, 0.5),
                   lambda i, a, b, p: ref.dcl_ref(i[a], i[b], i[p + "scale"])),
        metrics=("image_text/loss", "image_audio/loss"),
        variants=("1", "2", "4", "8")),
    "pairwise_softmax": Case(
        dict(name="pairwise"),  # all pairs of ("image", "text", "audio"), CLIP loss
        ("image", "text", "audio"),
        _pair_refs((("image", "text"), ("image", "audio"), ("text", "audio")), (1.0,) * 3,
                   lambda i, a, b, p: ref.softmax_ref(i[a], i[b], i[p + "scale"])),
        metrics=("image_text/loss", "image_audio/loss", "text_audio/loss"),
        variants=("8", "none")),
    "pairwise_sigmoid": Case(
        dict(name="pairwise", modalities=("image", "text", "audio"),
             pairs=(("text", "image"), ("text", "audio")), pair_weights=(2.0, 1.0),
             pair_loss=ml_collections.ConfigDict(dict(name="sigmoid"))),
        ("image", "text", "audio"),
        _pair_refs((("text", "image"), ("text", "audio")), (2.0, 1.0),
                   lambda i, a, b, p: ref.sigmoid_ref(i[a], i[b], i[p + "scale"], i[p + "bias"])),
        metrics=("text_image/loss", "text_audio/loss"),
        variants=("4", "4x2")),
}


# ----------------------------------------------------------------------------- helpers


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """Nested dicts (and tuples) -> {"a.b": leaf}."""
  items = (tree.items() if isinstance(tree, dict)
           else enumerate(tree) if isinstance(tree, (tuple, list)) else None)
  if items is None:
    return {prefix[:-1]: tree}
  out = {}
  for k, v in items:
    out.update(_flatten(v, f"{prefix}{k}."))
  return out


def _test_params(init: dict[str, Any]) -> dict[str, Any]:
  """The objective's params with moderate, distinct values: scales t in [5, 9), biases -2, -2.5."""
  counter = iter(range(100))

  def fill(tree):
    out = {}
    for k, v in tree.items():
      if isinstance(v, dict):
        out[k] = fill(v)
      elif k == "scale":
        out[k] = np.float32(math.log(5.0 + next(counter)))
      elif k == "bias":
        out[k] = np.float32(-2.0 - 0.5 * next(counter))
      else:
        raise AssertionError(f"unexpected loss parameter {k!r}")
    return out

  return fill(init)


def _unit_rows(rng: np.random.Generator, rows: int = N) -> np.ndarray:
  e = rng.normal(size=(rows, DIM))
  return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


def _inputs(case: Case, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  rng = np.random.default_rng(seed)
  embs = {m: _unit_rows(rng) for m in case.modalities}
  # Ids 0..5 over 16 rows: groups of several positives, spread over the shards.
  extras = {"instance_id": rng.integers(0, 6, size=N).astype(np.int32)} if case.ids else {}
  return embs, extras


@functools.lru_cache(maxsize=None)
def _runner(name: str):
  """(jitted fn(embs, extras, params) -> {variant: ((loss, metrics), (d_embs, d_params))}, init)."""
  case = CASES[name]
  variants = {}
  init = None
  for label in case.variants:
    spec = MESHES[label]
    objective = make_objective(ml_collections.ConfigDict(case.config),
                               axis_name=None if spec is None else spec[2])
    init = initial_values(objective.init_params)
    apply = objective.apply
    if spec is not None:
      shape, names, axis = spec
      mesh = jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape))
      apply = jax.shard_map(apply, mesh=mesh, in_specs=(P(axis), P()), out_specs=P())

    def loss_fn(embs, params, extras, apply=apply):
      return apply({**embs, **extras}, params)

    variants[label] = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)

  @jax.jit
  def run_all(embs, extras, params):
    return {label: fn(embs, params, extras) for label, fn in variants.items()}

  compiled = []

  def run(embs, extras, params):
    # Compiled once per case (all calls use the same shapes), with LLVM optimisations off to
    # halve the compile time on CPU (results stay within float32 round-off).
    if not compiled:
      compiled.append(run_all.lower(embs, extras, params).compile(
          compiler_options={"xla_backend_optimization_level": 0,
                            "xla_llvm_disable_expensive_passes": True}))
    return compiled[0](embs, extras, params)

  return run, init


@functools.lru_cache(maxsize=None)
def _reference(name: str, seed: int):
  """(loss, metrics, grads by flat input name) of the float64 reference."""
  case = CASES[name]
  embs, extras = _inputs(case, seed)
  params = _flatten(_test_params(_runner(name)[1]))
  inputs = {k: np.asarray(v, np.float64) for k, v in {**embs, **params}.items()}
  for m in case.modalities:
    inputs[f"weights_{m}"] = inputs[m].copy()
  inputs.update(extras)
  loss, metrics = case.reference(inputs)
  wrt = [k for k in inputs if k != "instance_id" and k not in case.constant
         and not k.startswith("weights_")]
  grads = ref.numerical_grads(lambda i: case.reference(i)[0], inputs, wrt)
  return loss, metrics, grads


# ----------------------------------------------------------------------------- tests


def test_all_objectives_registered():
  expected = {"dcl", "contrastive_gap", "cwcl", "multi_positive", "pairwise", "mv_infonce",
              "mv_dhel", "gram"}
  assert expected <= set(LOSSES.names())


@pytest.mark.parametrize("name", list(CASES))
def test_sharded_matches_reference(name):
  case = CASES[name]
  seed = 0
  run, init = _runner(name)
  embs, extras = _inputs(case, seed)
  params = _test_params(init)
  results = run(embs, extras, params)
  loss_ref, metrics_ref, grads_ref = _reference(name, seed)
  tol = dict(rtol=1e-5, atol=1e-5)
  for label, ((loss, metrics), (d_embs, d_params)) in results.items():
    err = f"{name} on mesh variant {label}"
    np.testing.assert_allclose(loss, loss_ref, **tol, err_msg=err)
    np.testing.assert_allclose(metrics["loss"], loss_ref, **tol, err_msg=err)
    for key in case.metrics:
      np.testing.assert_allclose(metrics[key], metrics_ref[key], **tol, err_msg=f"{err}: {key}")
    for m in case.modalities:
      np.testing.assert_allclose(d_embs[m], grads_ref[m], **tol, err_msg=f"{err}: d/d{m}")
    flat_d_params = _flatten(jax.tree.map(np.asarray, d_params))
    assert set(flat_d_params) == set(_flatten(params))
    for key, value in flat_d_params.items():
      np.testing.assert_allclose(value, grads_ref[key], **tol, err_msg=f"{err}: d/d{key}")
  # The reference gradients are not trivially zero (the comparison above is meaningful).
  assert all(np.abs(grads_ref[m]).max() > 1e-3 for m in case.modalities)


def _degenerate_inputs(case: Case, seed: int, pattern: str, id_pattern: str):
  embs, extras = _inputs(case, seed)
  if pattern == "rows":  # consecutive duplicated rows, within and across shards
    embs = {m: np.repeat(e[::2], 2, axis=0) for m, e in embs.items()}
  elif pattern == "cross":  # every modality the same embedding for each example
    first = embs[case.modalities[0]]
    embs = {m: first.copy() for m in embs}
  elif pattern == "all":  # one vector everywhere
    first = embs[case.modalities[0]][:1]
    embs = {m: np.repeat(first, N, axis=0) for m in embs}
  if case.ids:
    ids = {"distinct": np.arange(N), "pairs": np.arange(N) // 2, "same": np.zeros(N)}[id_pattern]
    extras = {"instance_id": ids.astype(np.int32)}
  return embs, extras


@pytest.mark.parametrize("name", list(CASES))
@hypothesis.settings(max_examples=6, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16),
    pattern=st.sampled_from(["none", "rows", "cross", "all"]),
    id_pattern=st.sampled_from(["distinct", "pairs", "same"]),
    log_scale=st.sampled_from([0.0, math.log(10.0), math.log(100.0)]),
)
def test_duplicates_and_extreme_scales_are_finite(name, seed, pattern, id_pattern, log_scale):
  case = CASES[name]
  run, init = _runner(name)
  embs, extras = _degenerate_inputs(case, seed, pattern, id_pattern)
  params = jax.tree.map(lambda v: np.float32(log_scale) if v > 0 else np.float32(-10.0),
                        _test_params(init))
  results = run(embs, extras, params)
  losses = []
  for label, ((loss, metrics), grads) in results.items():
    for key, value in _flatten({"metrics": metrics, "grads": grads}).items():
      assert np.all(np.isfinite(value)), f"{name} {label} {pattern}: {key} = {value}"
    losses.append(float(loss))
  # Every sharding still computes the same loss.
  np.testing.assert_allclose(losses, losses[0], rtol=1e-4, atol=1e-4)


def test_multi_positive_without_negatives_is_zero():
  run, init = _runner("multi_positive")
  embs, _ = _inputs(CASES["multi_positive"], 3)
  results = run(embs, {"instance_id": np.full(N, 7, np.int32)}, _test_params(init))
  for (loss, _), (d_embs, d_params) in results.values():
    assert float(loss) == 0.0
    assert all(np.all(np.asarray(g) == 0.0) for g in jax.tree.leaves((d_embs, d_params)))


def test_multi_positive_with_distinct_ids_is_decoupled_clip():
  """With all ids distinct every row has one positive, and the loss is the symmetric CLIP loss."""
  run, init = _runner("multi_positive")
  embs, _ = _inputs(CASES["multi_positive"], 4)
  params = _test_params(init)
  results = run(embs, {"instance_id": np.arange(N, dtype=np.int32)}, params)
  expected, _ = ref.softmax_ref(np.float64(embs["image"]), np.float64(embs["text"]),
                                float(params["scale"]))
  for (loss, _), _ in results.values():
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-5)


def test_frozen_scale_gets_no_gradient():
  objective = make_objective(ml_collections.ConfigDict(dict(name="dcl")), axis_name=None)
  assert initial_values(objective.init_params) == {"scale": pytest.approx(math.log(10.0))}
  rng = np.random.default_rng(0)
  outputs = {"image": _unit_rows(rng, 4), "text": _unit_rows(rng, 4)}
  grad = jax.grad(lambda p: objective.apply(outputs, p)[0])({"scale": jnp.float32(2.0)})
  assert float(grad["scale"]) == 0.0


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_det_by_minors(k):
  rng = np.random.default_rng(k)
  a = rng.normal(size=(k, k))
  det = gram_module.det_by_minors([[jnp.float32(a[r, c]) for c in range(k)] for r in range(k)])
  np.testing.assert_allclose(det, np.linalg.det(a), rtol=1e-5, atol=1e-5)


def test_pairwise_params_and_modalities():
  objective = make_objective(ml_collections.ConfigDict(CASES["pairwise_sigmoid"].config),
                             axis_name=None)
  assert set(objective.init_params) == {"text_image", "text_audio"}
  assert set(objective.init_params["text_image"]) == {"scale", "bias"}
  assert objective.modalities == ("image", "text", "audio")
  default = make_objective(ml_collections.ConfigDict(dict(name="pairwise",
                                                          modalities=("a", "b", "c"))),
                           axis_name=None)
  assert set(default.init_params) == {"a_b", "a_c", "b_c"}


BAD_CONFIGS = [
    (dict(name="dcl", weighting="dclx"), r"config\.loss\.weighting must be one of 'none', 'dclw'"),
    (dict(name="dcl", sigma=0.0), r"config\.loss\.sigma must be > 0"),
    (dict(name="dcl", modalities=("image",)), r"config\.loss\.modalities"),
    (dict(name="dcl", modalities=("image", "image")), r"config\.loss\.modalities"),
    (dict(name="dcl", temperature=0.1), r"config\.loss\.temperature is not a field"),
    (dict(name="dcl", learn_scale="yes"), r"config\.loss\.learn_scale must be True or False"),
    (dict(name="dcl", detach_weights=1), r"config\.loss\.detach_weights must be True or False"),
    (dict(name="contrastive_gap", align_weight=-1.0), r"config\.loss\.align_weight must be >= 0"),
    (dict(name="contrastive_gap", uniformity_t=0), r"config\.loss\.uniformity_t"),
    (dict(name="contrastive_gap", chunk_size=4),
     r"config\.loss\.chunk_size applies to config\.loss\.impl = 'ring' only"),
    (dict(name="cwcl", teacher_modality="audio"),
     r"config\.loss\.teacher_modality must be one of 'image', 'text'"),
    (dict(name="cwcl", directions="sideways"), r"config\.loss\.directions must be one of"),
    (dict(name="multi_positive", id_key="image"), r"config\.loss\.id_key"),
    (dict(name="multi_positive", reduction="mean"),
     r"config\.loss\.reduction must be one of 'row_mean', 'pair_mean'"),
    (dict(name="mv_infonce", modalities=("image",)), r"config\.loss\.modalities"),
    (dict(name="mv_infonce", same_view_negatives="no"),
     r"config\.loss\.same_view_negatives must be True or False"),
    (dict(name="mv_dhel", same_view_negatives=True), r"config\.loss\.same_view_negatives is not"),
    (dict(name="mv_dhel", exclude_self="yes"), r"config\.loss\.exclude_self"),
    (dict(name="gram", anchor="video"), r"config\.loss\.anchor must be one of"),
    (dict(name="gram", label_smoothing=1.0), r"config\.loss\.label_smoothing must be < 1"),
    (dict(name="gram", label_smoothing=-0.1), r"config\.loss\.label_smoothing must be >= 0"),
    (dict(name="gram", modalities=tuple("abcdefghi")), r"config\.loss\.modalities"),
    (dict(name="pairwise", pairs=(("image", "video"),)), r"config\.loss\.pairs"),
    (dict(name="pairwise", pairs=(("image", "image"),)), r"config\.loss\.pairs"),
    (dict(name="pairwise", pairs=(("image", "text"), ("image", "text"))), r"config\.loss\.pairs"),
    (dict(name="pairwise", pair_weights=(1.0,)), r"config\.loss\.pair_weights"),
    (dict(name="pairwise", pair_loss=ml_collections.ConfigDict(dict(name="nope"))),
     r"config\.loss\.pair_loss\.name = 'nope' is not a known loss"),
    (dict(name="pairwise", pair_loss=ml_collections.ConfigDict(dict(name="dcl", sigma=-1.0))),
     r"sigma"),
]


@pytest.mark.parametrize("config,message", BAD_CONFIGS,
                         ids=[f"{c['name']}-{i}" for i, (c, _) in enumerate(BAD_CONFIGS)])
def test_bad_config_raises(config, message):
  with pytest.raises(ConfigError, match=message):
    make_objective(ml_collections.ConfigDict(config), axis_name="data")


def test_missing_inputs_raise():
  objective = make_objective(ml_collections.ConfigDict(dict(name="multi_positive")),
                             axis_name=None)
  rng = np.random.default_rng(0)
  outputs = {"image": _unit_rows(rng, 4), "text": _unit_rows(rng, 4)}
  with pytest.raises(ValueError, match="instance_id"):
    objective.apply(outputs, {"scale": jnp.float32(1.0)})
  gram = make_objective(ml_collections.ConfigDict(dict(name="gram")), axis_name=None)
  with pytest.raises(ConfigError, match=r"config\.loss\.modalities.*audio"):
    gram.apply(outputs, {"scale": jnp.float32(1.0)})
