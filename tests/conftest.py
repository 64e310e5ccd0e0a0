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
