"""The ring implementations: equal to all-gather, chunked or not, and memory-flat in D."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import losses_reference as ref  # tests/losses/reference.py, registered by conftest.py
from clip_jax.losses import ring, sigmoid_loss, softmax_loss

T, B = 7.0, -4.0


def _loss(name, **kwargs):
  if name == "sigmoid":
    return functools.partial(sigmoid_loss, **kwargs)
  # Same argument list as the sigmoid loss; the bias is unused.
  return lambda x, y, t, b, **kw: softmax_loss(x, y, t, **kwargs, **kw) + 0.0 * b


@functools.lru_cache(maxsize=None)
def _compiled(name, impl, chunk_size, mesh_shape, names, eps):
  loss = _loss(name, impl=impl, chunk_size=chunk_size, label_smoothing=eps)
  return ref.sharded_value_and_grad(loss, mesh_shape, names)


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
@pytest.mark.parametrize("chunk_size,mesh_shape,names", [
    (None, (4,), ("data",)),
    (2, (4,), ("data",)),  # divides the local batch of 6
    (4, (4,), ("data",)),  # does not: the last chunk is padded and masked
    (1, (4,), ("data",)),
    (5, (2, 2), ("data", "fsdp")),
])
def test_ring_equals_all_gather(name, chunk_size, mesh_shape, names):
  x, y = (jnp.asarray(a, jnp.float32) for a in ref.random_pairs(7, 24, 6))
  args = (x, y, jnp.float32(T), jnp.float32(B))
  want = _compiled(name, "all_gather", None, mesh_shape, names, 0.1)(*args)
  got = _compiled(name, "ring", chunk_size, mesh_shape, names, 0.1)(*args)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
def test_check_vma_false_also_correct(name):
  """The gradients of the replicated scale/bias also come out right without vma checking."""
  x, y = ref.random_pairs(8, 16, 4)
  mesh = ref.mesh((4,), ("data",))
  f = jax.shard_map(lambda *a: _loss(name)(*a, axis_name="data"), mesh=mesh,
                    in_specs=(P("data"), P("data"), P(), P()), out_specs=P(), check_vma=False)
  value, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))(
      *(jnp.asarray(a, jnp.float32) for a in (x, y, T, B)))
  if name == "sigmoid":
    want_value, want_grads = ref.sigmoid_loss(x, y, T, B), ref.sigmoid_grads(x, y, T, B)
  else:
    want_value, want_grads = ref.softmax_loss(x, y, T), ref.softmax_grads(x, y, T) + (0.0,)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for g, w in zip(grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def _primitive_counts(name, impl, devices):
  """Counts of collective primitives in the jaxpr of value_and_grad (nested jaxprs included)."""
  loss = _loss(name, impl=impl, chunk_size=3 if impl == "ring" else None)
  mesh = ref.mesh((devices,), ("data",))
  f = jax.shard_map(lambda *a: loss(*a, axis_name="data"), mesh=mesh,
                    in_specs=(P("data"), P("data"), P(), P()), out_specs=P())
  x = jnp.zeros((8 * devices, 4), jnp.float32)
  text = str(jax.make_jaxpr(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))(
      x, x, jnp.float32(1.0), jnp.float32(0.0)))
  return {p: text.count(p + "[") for p in ("ppermute", "all_gather")}


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
def test_ring_is_a_loop_without_all_gather(name):
  counts = {d: _primitive_counts(name, "ring", d) for d in (2, 8)}
  assert counts[2]["all_gather"] == counts[8]["all_gather"] == 0
  assert counts[2]["ppermute"] > 0
  # The program does not grow with D: the ring is a fori_loop, not D unrolled steps.
  assert counts[2]["ppermute"] == counts[8]["ppermute"]
  assert _primitive_counts(name, "all_gather", 2)["all_gather"] > 0  # the count can see one


def _temp_bytes(name, impl, devices, n, d, chunk_size=None):
  mesh = ref.mesh((devices,), ("data",))
  loss = _loss(name, impl=impl, chunk_size=chunk_size)
  f = jax.shard_map(lambda *a: loss(*a, axis_name="data"), mesh=mesh,
                    in_specs=(P("data"), P("data"), P(), P()), out_specs=P())
  batch = jax.ShapeDtypeStruct((n * devices, d), jnp.float32,
                               sharding=NamedSharding(mesh, P("data")))
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
  compiled = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3))).lower(
      batch, batch, scalar, scalar).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
def test_ring_memory_is_flat_in_devices(name):
  """Per-device temporary memory of forward + backward, local batch fixed (the real check is
  benchmarks/loss_memory.py at n = 1024, d = 768)."""
  n, d = 256, 128
  ring2, ring8 = (_temp_bytes(name, "ring", k, n, d) for k in (2, 8))
  gather2, gather8 = (_temp_bytes(name, "all_gather", k, n, d) for k in (2, 8))
  assert ring8 <= 1.25 * ring2, (ring2, ring8)
  assert gather8 >= 3 * gather2, (gather2, gather8)  # the measurement can tell growth
  assert ring8 < gather8 / 3


def test_layout():
  lay = ring.layout(10, 4)
  assert (lay.rows, lay.chunk, lay.num_chunks, lay.piece) == (12, 4, 3, 4)
  lay = ring.layout(10, None)
  assert lay.num_chunks == 1 and lay.chunk == lay.rows >= 10
  assert lay.rows % lay.piece == 0 and lay.num_pieces <= ring.RING_PIECES
  assert ring.layout(10, 0) == ring.layout(10, 10) == ring.layout(10, 99) == lay
  assert ring.layout(1, None).rows == 1
  with pytest.raises(ValueError, match="chunk_size"):
    ring.layout(10, -1)
  with pytest.raises(ValueError, match="impl"):
    sigmoid_loss(jnp.zeros((2, 2)), jnp.zeros((2, 2)), 1.0, 0.0, impl="flash")
