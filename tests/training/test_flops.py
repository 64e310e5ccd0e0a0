"""clip_jax.training.flops: the peak FLOP/s lookup (the analytic counts are pinned against
open_clip's figures in tests/test_dry_run.py)."""

import types

import ml_collections

from clip_jax.training.flops import PEAK_FLOPS_PER_DEVICE, peak_flops_per_device


def _device(kind: str):
  return types.SimpleNamespace(device_kind=kind)


def test_peak_by_device_kind_and_config_override():
  config = ml_collections.ConfigDict(dict(peak_tflops_per_device=0.0))
  assert peak_flops_per_device(_device("NVIDIA H100 80GB HBM3"), config) == 989e12
  assert peak_flops_per_device(_device("TPU v4"), config) == 275e12
  assert peak_flops_per_device(_device("cpu"), config) is None  # unknown: no MFU
  config.peak_tflops_per_device = 123.0  # the override wins, known kind or not
  assert peak_flops_per_device(_device("NVIDIA H100 80GB HBM3"), config) == 123e12
  assert peak_flops_per_device(_device("cpu"), config) == 123e12
  assert all(1e14 < peak < 2e15 for peak in PEAK_FLOPS_PER_DEVICE.values())  # FLOP/s, not TFLOP/s
