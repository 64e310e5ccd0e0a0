"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_enable_x64", False)

assert jax.device_count() == 8, (
    f"tests expect 8 simulated CPU devices, got {jax.device_count()}; was jax imported before "
    "tests/conftest.py set XLA_FLAGS?")


import pytest  # noqa: E402


@pytest.fixture
def truncate_checkpoint():
  """truncate(step_dir): cuts every data file of a checkpoint's state/ to a third, as a disk
  that lost the end of a write would; asserts that there was something to cut."""

  def truncate(step_dir):
    truncated = 0
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
      for name in files:
        path = os.path.join(root, name)
        if os.path.getsize(path) > 64 and not name.endswith(".json") and "METADATA" not in name:
          with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 3)
          truncated += 1
    assert truncated

  return truncate
