"""The ring that the memory-flat contrastive losses (sigmoid, softmax) run on.

The losses run inside `jax.shard_map` over one or more batch axes (or on whole-batch arrays with
`axis_name=None`; see `clip_jax.losses.collectives`). With `axes=None` the ring has one block and
nothing is sent.

Ring order: device k (k = the linearised index `lax.axis_index(axes)` over all batch axes) sends
to device (k + 1) mod D. After s shifts, device k holds the block that device (k - s) mod D
started with.

Layout (see `Layout`): a travelling `[n, d]` block is zero-padded once so that it splits into
equal column chunks (the kernels mask the padded columns out) and equal pieces for sending. A
block moves on in place, piece by piece: once a device is done with a piece it sends it on and
receives the next block's piece into the same slot, so it never holds two whole travelling
blocks. Together with recomputation in the backward pass (`custom_vjp`), per-device memory is
independent of the number of devices D.

`after` (an optimization barrier) orders the reads of a travelling buffer before its in-place
update; without it XLA copies the whole buffer first.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from clip_jax.losses.collectives import Axes

Array = jax.Array

IMPLS = ("ring", "all_gather")
# Without column chunks, a travelling block is sent in this many pieces (see Layout.piece).
RING_PIECES = 8


def shift(tree: Any, axes: Axes, size: int) -> Any:
  """Sends every leaf one step along the ring: device k -> device (k + 1) mod D."""
  if axes is None or size == 1:
    return tree
  perm = [(k, (k + 1) % size) for k in range(size)]
  return jax.tree.map(lambda x: lax.ppermute(x, axes, perm), tree)


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a travelling `[n, ...]` block is padded, computed on and sent.

  Attributes:
    n: real rows (columns of the logit block).
    rows: padded rows, a multiple of `chunk` and of `piece`; rows >= n are zeros, masked out.
    chunk: columns of the logit block computed at once (`[n, chunk]` logits).
    num_chunks: rows // chunk.
    piece: rows sent per `lax.ppermute`. The ring shifts a block in place, piece by piece:
      piece k is sent as soon as it is no longer needed and the next block's piece k is written
      into its slot, so a device holds one travelling block plus one piece in flight, instead of
      two whole blocks.
  """

  n: int
  rows: int
  chunk: int
  num_chunks: int
  piece: int

  @property
  def num_pieces(self) -> int:
    return self.rows // self.piece


def layout(n: int, chunk_size: int | None, max_pieces: int = RING_PIECES) -> Layout:
  """The layout for n rows and column chunks of `chunk_size` (None/0/>=n: whole blocks).

  With chunks, each chunk is also the piece that is sent right after it is computed on. Without,
  the whole block is computed on at once and then sent in `max_pieces` pieces.
  """
  if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)):
    raise TypeError(f"chunk_size must be an int or None, got {chunk_size!r}")
  if chunk_size is not None and chunk_size < 0:
    raise ValueError(f"chunk_size must be >= 0, got {chunk_size}")
  if chunk_size and chunk_size < n:
    num_chunks = math.ceil(n / chunk_size)
    return Layout(n, num_chunks * chunk_size, chunk_size, num_chunks, chunk_size)
  piece = math.ceil(n / min(max_pieces, n))
  rows = math.ceil(n / piece) * piece
  return Layout(n, rows, rows, 1, piece)


def shift_piece(tree: Any, k: Array | int, piece: int, axes: Axes, size: int) -> Any:
  """Shifts rows [k * piece, (k + 1) * piece) of every leaf one step along the ring, in place."""
  if axes is None or size == 1:
    return tree

  def one(x):
    if piece == x.shape[0]:
      return shift(x, axes, size)
    sent = lax.dynamic_slice_in_dim(x, k * piece, piece, axis=0)
    return lax.dynamic_update_slice_in_dim(x, shift(sent, axes, size), k * piece, axis=0)

  return jax.tree.map(one, tree)


def shift_all(tree: Any, lay: Layout, axes: Axes, size: int) -> Any:
  """Shifts whole `[rows, ...]` leaves one step along the ring, piece by piece, in place."""
  if axes is None or size == 1:
    return tree
  if lay.num_pieces == 1:
    return shift(tree, axes, size)
  return lax.fori_loop(0, lay.num_pieces,
                       lambda k, t: shift_piece(t, k, lay.piece, axes, size), tree)


Exchange = Callable[[Any, Any], Any]


def ring_loop(size: int, step: Callable[[Array, Any, Any, Exchange], tuple[Any, Any]],
              travelling: Any, local: Any, axes: Axes, lay: Layout) -> tuple[Any, Any]:
  """Runs `step` once per ring position; the travelling state moves on between steps.

  Args:
    size: D, the number of devices on the ring.
    step: (s, travelling, local, exchange) -> (travelling, local). At ring step s (0 <= s < D)
      device k holds the travelling state of device (k - s) mod D; s == 0 is its own block.
      `step` loops over the column chunks and calls `travelling = exchange(travelling, c)` once
      it is done with chunk c: this sends the chunk on and puts the next block's chunk in its
      slot (with one chunk, the whole block, in pieces). At the last step `exchange` is the
      identity.
    travelling: pytree of `[lay.rows, ...]` arrays that moves around the ring (a block of the
      other modality, plus whatever per-block accumulators go with it).
    local: pytree that stays on the device (accumulators for the device's own rows).
    axes: the batch axes.
    lay: the block layout.

  Returns:
    (travelling, local) after the last step, WITHOUT a final shift: for D > 1 device k then
    holds the travelling state of device (k + 1) mod D, so one more `shift_all` brings it home.
    The loop is a `lax.fori_loop` (D - 1 exchanging steps, then the last step), so the compiled
    program holds two copies of `step`, not D.
  """

  def exchange(trav, c):
    if lay.num_chunks == 1:
      return shift_all(trav, lay, axes, size)
    return shift_piece(trav, c, lay.chunk, axes, size)

  def body(s, carry):
    return step(s, *carry, exchange)

  carry = (travelling, local)
  if size > 1:
    carry = lax.fori_loop(0, size - 1, body, carry)
  return step(jnp.asarray(size - 1, jnp.int32), *carry, lambda trav, c: trav)


def pad_rows(x: Array, rows: int) -> Array:
  """Zero-pads the leading dimension of `x` to `rows`."""
  extra = rows - x.shape[0]
  if extra == 0:
    return x
  return jnp.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1))


def chunk_loop(num_chunks: int, body: Callable[[Array | int, Any], Any], carry: Any) -> Any:
  """`lax.fori_loop` over column chunks, or a plain call when there is only one chunk."""
  if num_chunks == 1:
    return body(0, carry)
  return lax.fori_loop(0, num_chunks, body, carry)


def take_chunk(x: Array, k: Array | int, chunk: int) -> Array:
  """Rows [k * chunk, (k + 1) * chunk) of `x` (k may be traced)."""
  if chunk == x.shape[0]:
    return x
  return lax.dynamic_slice_in_dim(x, k * chunk, chunk, axis=0)


def add_chunk(x: Array, k: Array | int, chunk: int, update: Array) -> Array:
  """Adds `update` to rows [k * chunk, (k + 1) * chunk) of `x`."""
  if chunk == x.shape[0]:
    return x + update
  old = lax.dynamic_slice_in_dim(x, k * chunk, chunk, axis=0)
  return lax.dynamic_update_slice_in_dim(x, old + update, k * chunk, axis=0)


def set_chunk(x: Array, k: Array | int, chunk: int, update: Array) -> Array:
  """Overwrites rows [k * chunk, (k + 1) * chunk) of `x` with `update`."""
  if chunk == x.shape[0]:
    return update
  return lax.dynamic_update_slice_in_dim(x, update, k * chunk, axis=0)


def after(tree: Any, *deps: Any) -> Any:
  """Returns `tree` unchanged, but only once `deps` are computed.

  Used before updating a travelling buffer in place: when the reads of the buffer are ordered
  before the update by a data dependency, XLA updates it in place instead of copying it first.
  """
  return lax.optimization_barrier((tree, deps))[0]


def check_args(x: Array, y: Array, impl: str, label_smoothing: float) -> None:
  """The argument checks shared by the pairwise losses: impl, label smoothing, [n, d] shapes."""
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got {impl!r}")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
  if x.shape != y.shape or x.ndim != 2:
    raise ValueError(f"x and y must both be [n, d]; got {x.shape} and {y.shape}")
