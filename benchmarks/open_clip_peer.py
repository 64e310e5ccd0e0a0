"""open_clip (PyTorch) as the peer of clip_jax's train step in benchmarks/train_throughput.py.

`OpenClipVariant` trains `open_clip.model.CLIP` on the same architecture, initial weights and
random batches as a clip_jax trainer state, so that their step times compare like for like:

* the architecture: `architecture_of(config)` reads the open_clip `Architecture` of a clip_jax
  config whose `config.model` is `Architecture.model_config()` (dtype and remat aside), the
  image side `config.data.image_size`;
* the weights: the clip_jax state's initial params, exported with `open_clip.from_params` (the
  loss's scale t' becomes `logit_scale`, a sigmoid loss's bias `logit_bias`);
* the loss: `open_clip.loss.SigLipLoss` for config.loss.name "sigmoid", `ClipLoss` for
  "softmax" (one process: world size 1);
* the optimizer: `torch.optim.AdamW` with config.optim's learning_rate (constant: the warm-up
  and decay schedules cost nothing measurable), b1, b2, eps and weight_decay, no weight decay on
  open_clip's exclusions (parameters of fewer than 2 dimensions, "bn"/"ln"/"bias"/"logit_scale"
  in the name, as its training script does), gradients clipped to config.optim.grad_clip_norm
  when set, and `logit_scale` clamped to log(config.loss.max_scale) after each step when set;
* precision: "float32", or "amp_bf16" (`torch.autocast` bfloat16 around the forward and the
  loss, float32 params: open_clip's `--precision amp_bf16`); grad checkpointing
  (`model.set_grad_checkpointing(True)`) for a clip_jax variant with remat;
* mode: "eager", or "compile" (`torch.compile(model)`, as open_clip's `--torchcompile`:
  compiled on the first step, whose wall time is kept as `compile_s`).

Images go in NCHW (the clip_jax batch's NHWC, transposed once up front). The text batches must
end each text with the largest token id (`random_batch` does): open_clip pools
the token of the largest id, clip_jax the last non-pad token.

open_clip itself comes from `load_open_clip`: the installed package, else an open_clip_torch
wheel unpacked with torchvision stood in for (`clip_jax.pretrained.open_clip.open_clip_from_wheel`).
The device is "cuda" when torch sees a GPU, else the CPU; on a GPU each step ends with
`torch.cuda.synchronize()`.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import sys
import tempfile
import time
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from clip_jax.pretrained.open_clip import Architecture, from_params, open_clip_from_wheel
from clip_jax.registry import ConfigError

# The open_clip_torch wheel to fall back on when `import open_clip` fails (as tests/conftest.py
# finds it): $CLIP_JAX_OPEN_CLIP_WHEEL, else the newest in the repository's .whl/, else "".
DEFAULT_WHEEL = os.environ.get("CLIP_JAX_OPEN_CLIP_WHEEL") or ([""] + sorted(glob.glob(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".whl",
                 "open_clip_torch-*.whl"))))[-1]
MODES = ("eager", "compile")
PRECISIONS = {"float32": "float32", "bfloat16": "amp_bf16"}  # clip_jax dtype -> open_clip's
INSTALL = ("pip install torch torchvision open_clip_torch==3.3.0, or pip download --no-deps "
           "open_clip_torch==3.3.0 -d .whl/ (with torch installed) and pass --open_clip_wheel")


def load_open_clip(wheel: str | None, stack: contextlib.ExitStack) -> Any:
  """The open_clip package: `import open_clip` when that works, else the one of `wheel` (an
  open_clip_torch .whl) unpacked into a temporary folder with torchvision stood in for, both
  held until `stack` closes.

  Raises:
    ConfigError: neither works (saying what to install).
  """
  try:
    import open_clip  # noqa: PLC0415
    return open_clip
  except Exception as e:  # noqa: BLE001  (a broken torchvision raises its own types)
    plain = f"{type(e).__name__}: {e}"
  if not wheel:
    raise ConfigError(f"--open_clip needs open_clip ({plain}) and no --open_clip_wheel is "
                      f"given; {INSTALL}")
  try:
    import torch  # noqa: F401, PLC0415
  except ImportError as e:
    raise ConfigError(f"--open_clip needs PyTorch ({e}); {INSTALL}") from e
  folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="open_clip_"))
  try:
    return stack.enter_context(open_clip_from_wheel(wheel, folder))
  except (OSError, ImportError) as e:
    raise ConfigError(f"--open_clip_wheel={wheel}: {type(e).__name__}: {e}; {INSTALL}") from e


def architecture_of(config: ml_collections.ConfigDict) -> Architecture:
  """The open_clip architecture of a clip_jax training config.

  Raises:
    ConfigError: config.model is not open_clip-shaped (naming the first field that differs from
      `Architecture.model_config()`), or config.loss is not a plain "sigmoid" / "softmax" loss.
  """
  towers = config.model.get("towers") or {}
  image, text = towers.get("image"), towers.get("text")
  if (set(towers) != {"image", "text"} or image.get("name") != "vit" or
      text.get("name") != "text_transformer"):
    raise ConfigError(f"config.model.towers = {sorted(towers)}: the open_clip peer needs an "
                      "'image' vit and a 'text' text_transformer tower, as "
                      "clip_jax.pretrained.open_clip.Architecture.model_config() builds them")
  try:
    arch = Architecture(
        embed_dim=config.model.embed_dim, image_size=config.data.image_size,
        patch_size=image.patch_size, vision_width=image.width, vision_layers=image.depth,
        vision_heads=image.num_heads, text_width=text.width, text_layers=text.depth,
        text_heads=text.num_heads, quick_gelu=image.get("activation") == "quick_gelu",
        context_length=text.context_length, vocab_size=text.vocab_size)
  except AttributeError as e:
    raise ConfigError(f"config.model lacks a field the open_clip peer reads ({e}); build it "
                      "with clip_jax.pretrained.open_clip.Architecture.model_config()") from e
  want = arch.model_config().towers.to_dict()
  for modality, fields in want.items():
    given = towers[modality].to_dict()
    for name in sorted(set(fields) | set(given)):
      if given.get(name) != fields.get(name):
        raise ConfigError(
            f"config.model.towers.{modality}.{name} = {given.get(name)!r}, but open_clip's "
            f"architecture has {fields.get(name)!r}; the open_clip peer needs config.model = "
            "clip_jax.pretrained.open_clip.Architecture(...).model_config()")
  loss = config.loss
  if loss.get("name") not in ("sigmoid", "softmax"):
    raise ConfigError(f"config.loss.name = {loss.get('name')!r}: the open_clip peer has "
                      "SigLipLoss ('sigmoid') and ClipLoss ('softmax') only")
  for name, default in (("label_smoothing", 0.0), ("learn_scale", True), ("use_bias", True)):
    if loss.get(name, default) != default:
      raise ConfigError(f"config.loss.{name} = {loss.get(name)!r}: the open_clip peer's losses "
                        f"have {name} = {default}")
  return arch


def state_dict(open_clip: Any, params: Mapping[str, Any], arch: Architecture,
               loss_name: str) -> dict[str, Any]:
  """clip_jax params {"model", "loss"} (numpy) -> the torch state dict of open_clip's CLIP."""
  import torch  # noqa: PLC0415

  state = from_params(params["model"], arch, float(np.asarray(params["loss"]["scale"])))
  if loss_name == "sigmoid":
    state["logit_bias"] = np.asarray(params["loss"]["bias"], np.float32).reshape(1)
  state["logit_scale"] = state["logit_scale"].reshape(())
  return {k: torch.from_numpy(np.array(v, np.float32)) for k, v in state.items()}


class OpenClipVariant:
  """open_clip's CLIP, loss and AdamW on one device, initialised from clip_jax params.

  Attributes (as `train_throughput.Variant`): label, kind ("open_clip"), batch_size, devices (1), compile_s (the
  first step's wall time with torch.compile, else None), times (timed steps, s), first_loss,
  loss (the last step's), median (after `finish`), peak_bytes (CUDA's peak allocation, None on
  the CPU).
  """

  def __init__(self, label: str, open_clip: Any, config: ml_collections.ConfigDict,
               params: Mapping[str, Any], batches: Sequence[Mapping[str, np.ndarray]], *,
               mode: str, precision: str, grad_checkpointing: bool):
    """`params`: the clip_jax state's {"model", "loss"} params (numpy); `batches`: host batches
    {"image": float32 [B, S, S, 3], "text": int32 [B, L]}.

    Raises:
      ConfigError: see `architecture_of`; an unknown mode or precision.
      torch.OutOfMemoryError: the model or batches do not fit the GPU.
    """
    import torch  # noqa: PLC0415

    if mode not in MODES or precision not in PRECISIONS.values():
      raise ConfigError(f"open_clip mode {mode!r} / precision {precision!r}: choose from "
                        f"{MODES} / {tuple(PRECISIONS.values())}")
    arch = architecture_of(config)
    self.label, self.kind = label, "open_clip"
    self.devices, self.batch_size = 1, len(batches[0]["image"])
    self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loss = config.loss
    self.model = open_clip.model.CLIP(
        **arch.open_clip_config(), output_dict=True,
        init_logit_scale=float(np.asarray(params["loss"]["scale"])),
        init_logit_bias=(float(np.asarray(params["loss"]["bias"])) if loss.name == "sigmoid"
                         else None))
    self.model.load_state_dict(state_dict(open_clip, params, arch, loss.name), strict=True)
    self.model.to(self.device).train()
    self.model.set_grad_checkpointing(grad_checkpointing)
    self.loss_fn = (open_clip.loss.SigLipLoss() if loss.name == "sigmoid" else
                    open_clip.loss.ClipLoss())
    decay, no_decay = [], []
    for name, p in self.model.named_parameters():
      excluded = p.ndim < 2 or any(k in name for k in ("bn", "ln", "bias", "logit_scale"))
      (no_decay if excluded else decay).append(p)
    optim = config.optim
    self.optimizer = torch.optim.AdamW(
        [{"params": no_decay, "weight_decay": 0.0},
         {"params": decay, "weight_decay": optim.weight_decay}],
        lr=optim.learning_rate, betas=(optim.b1, optim.b2), eps=optim.eps)
    self.clip_norm = optim.get("grad_clip_norm", 0.0)
    self.max_log_scale = math.log(loss.max_scale) if loss.get("max_scale") else None
    self.forward = torch.compile(self.model) if mode == "compile" else self.model
    self.mode, self.amp = mode, precision == "amp_bf16"
    self.batches = [(torch.from_numpy(b["image"]).permute(0, 3, 1, 2).contiguous().to(self.device),
                     torch.from_numpy(b["text"]).long().to(self.device)) for b in batches]
    self.compile_s = None
    self.times: list[float] = []
    self.first_loss = self.loss = self.median = self.peak_bytes = None
    self.steps_run = 0
    if self.device.type == "cuda":
      torch.cuda.reset_peak_memory_stats(self.device)

  def step(self, timed: bool) -> None:
    """Runs one training step to completion; records its wall time if `timed`."""
    import torch  # noqa: PLC0415

    images, texts = self.batches[self.steps_run % len(self.batches)]
    start = time.perf_counter()
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
      loss = self.loss_fn(**self.forward(images, texts))
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if self.clip_norm:
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
    self.optimizer.step()
    if self.max_log_scale is not None:
      with torch.no_grad():
        self.model.logit_scale.clamp_(max=self.max_log_scale)
    if self.device.type == "cuda":
      torch.cuda.synchronize(self.device)
    elapsed = time.perf_counter() - start
    if timed:
      self.times.append(elapsed)
    if self.steps_run == 0:
      self.first_loss = float(loss.item())
      if self.mode == "compile":
        self.compile_s = elapsed
    self.steps_run += 1
    self.last = loss

  def finish(self) -> None:
    """Frees the model, optimizer and batches; keeps the measurements."""
    import torch  # noqa: PLC0415

    self.loss = float(self.last.item())
    self.median = float(np.median(self.times))
    if self.device.type == "cuda":
      self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
    del self.model, self.forward, self.optimizer, self.batches, self.last
    if self.device.type == "cuda":
      torch.cuda.empty_cache()
    print(f"[{self.label}] median {self.median * 1e3:.1f} ms/step, first loss "
          f"{self.first_loss:.6f}, last loss {self.loss:.4f}", file=sys.stderr, flush=True)


def random_batch(config: ml_collections.ConfigDict, rng: np.random.Generator,
                 with_ids: bool) -> dict[str, np.ndarray]:
  """A host batch of `config.batch_size` random examples with the model's input shapes.

  "vit" towers get float32 `[B, S, S, 3]` in [-1, 1] (S = config.data.image_size);
  "text_transformer" towers int32 `[B, context_length]` ids, 2 to L tokens padded with 0,
  each text ending with the largest id (vocab_size - 1, as CLIP's EOS: open_clip pools the token
  of the largest id, clip_jax the last non-pad token).
  """
  n = config.batch_size
  batch = {}
  for modality, tower in config.model.towers.items():
    if tower.name == "vit":
      size = config.data.image_size
      batch[modality] = rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
    elif tower.name == "text_transformer":
      length = tower.context_length
      tokens = rng.integers(1, tower.vocab_size - 1, (n, length)).astype(np.int32)
      lengths = rng.integers(2, length + 1, n)
      tokens[np.arange(n), lengths - 1] = tower.vocab_size - 1
      tokens[np.arange(length)[None, :] >= lengths[:, None]] = 0  # pad after each text
      batch[modality] = tokens
    else:
      raise ConfigError(f"config.model.towers.{modality}.name = {tower.name!r}: this benchmark "
                        "makes random inputs for 'vit' and 'text_transformer' towers only")
  if with_ids:
    batch["instance_id"] = np.arange(n, dtype=np.int32)
  return batch
