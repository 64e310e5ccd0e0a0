"""Parity with the PyTorch peer: open_clip's ClipLoss and SigLipLoss, single process.

Needs PyTorch (CPU) and the open_clip_torch wheel, which is read without being installed: only
its `open_clip/loss.py` is loaded by file path (importing the open_clip package would import
torchvision). Set up with

    pip install torch==2.13.0
    pip download --no-deps open_clip_torch -d .whl/

(`.whl/` at the repository root is git-ignored; or point CLIP_JAX_OPEN_CLIP_WHEEL at the
wheel). Without them the tests are skipped with a reason saying so (visible with `pytest -rs`);
with CLIP_JAX_REQUIRE_PARITY=1 a missing requirement is a failure instead.
"""

from __future__ import annotations

import functools
import importlib.util
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import losses_reference as ref  # tests/losses/reference.py, registered by conftest.py
from clip_jax.losses import sigmoid_loss, softmax_loss

SETUP = "pip install torch==2.13.0 && pip download --no-deps open_clip_torch -d .whl/"


@pytest.fixture(scope="module")
def open_clip_loss(open_clip_wheel, parity_missing, tmp_path_factory):
  """The open_clip/loss.py module of the open_clip_torch wheel, loaded by file path."""
  try:
    import torch  # noqa: F401
  except ImportError:
    parity_missing("PyTorch", SETUP)
  path = tmp_path_factory.mktemp("open_clip") / "open_clip_loss.py"
  with zipfile.ZipFile(open_clip_wheel) as wheel:
    path.write_bytes(wheel.read("open_clip/loss.py"))
  spec = importlib.util.spec_from_file_location("open_clip_loss_for_parity", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _torch_value_and_grads(loss_module, x, y, *scalars):
  import torch
  tensors = [torch.tensor(np.asarray(a, np.float32), requires_grad=True) for a in (x, y, *scalars)]
  value = loss_module(*tensors)
  value.backward()
  return float(value.detach()), [t.grad.numpy() for t in tensors]


def _ours(loss, x, y, *scalars):
  args = [jnp.asarray(a, jnp.float32) for a in (x, y, *scalars)]
  value, grads = jax.value_and_grad(loss, argnums=tuple(range(len(args))))(*args)
  return float(value), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("impl,chunk_size", [("ring", None), ("ring", 3), ("all_gather", None)])
def test_clip_loss_parity(open_clip_loss, impl, chunk_size):
  x, y = ref.random_pairs(21, 10, 6)
  want_value, want_grads = _torch_value_and_grads(open_clip_loss.ClipLoss(), x, y, 14.0)
  value, grads = _ours(functools.partial(softmax_loss, impl=impl, chunk_size=chunk_size), x, y,
                       14.0)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for g, w in zip(grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl,chunk_size", [("ring", None), ("ring", 3), ("all_gather", None)])
def test_siglip_loss_parity(open_clip_loss, impl, chunk_size):
  x, y = ref.random_pairs(22, 10, 6)
  want_value, want_grads = _torch_value_and_grads(open_clip_loss.SigLipLoss(), x, y, 10.0, -10.0)
  value, grads = _ours(functools.partial(sigmoid_loss, impl=impl, chunk_size=chunk_size), x, y,
                       10.0, -10.0)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for g, w in zip(grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
