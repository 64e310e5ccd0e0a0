"""Where a training step's time goes: clip_jax next to PyTorch (open_clip), part by part.

For one open_clip-shaped config (default benchmarks/configs/demo_scale.py: the 8.4M-parameter
model of issue 15, batch 128, sigmoid loss, AdamW, float32), both frameworks run the same model
from the same initial weights (`clip_jax.pretrained.open_clip.from_params`) on the same random
batch, and every part below is timed in turns, one call each, so that background load hits both
alike (median of `--steps` calls after `--warmup`):

  train step             towers, loss, backward and AdamW (clip_jax: the Trainer's jitted step;
                         PyTorch: forward, SigLipLoss/ClipLoss, backward, optimizer.step)
  image/text forward     one tower's embeddings, no gradient
  image/text fwd+bwd     the gradient of <embeddings, fixed random cotangent> w.r.t. the tower
  loss fwd+bwd           the loss and its gradient w.r.t. both embeddings and the loss params
  AdamW update           the optimizer update alone, from fixed gradients (optax vs torch.optim)
  attention fwd+bwd      the attention core at the image tower's shape [B, T, H, D/H]
                         (`jax.nn.dot_product_attention`, and written out as einsum + softmax,
                         vs torch's scaled_dot_product_attention)
  MLP matmul fwd+bwd     the image MLP's first Linear, [B*T, D] x [D, 4D], bias included
  plain-JAX image tower  an independent minimal ViT in plain jax.numpy (no Flax, no clip_jax:
                         a dict of arrays, the same layer sizes, LayerNorm and exact GELU written
                         out), fwd+bwd: when it runs as slow as clip_jax's image tower, the time
                         is what JAX/XLA makes of this model, not clip_jax's code

  python benchmarks/step_breakdown.py --steps 10
  python benchmarks/step_breakdown.py --config my_open_clip_shaped_config.py --steps 5

The ratio column is PyTorch time / clip_jax time: above 1, clip_jax is faster. On one CPU device
(JAX's default on this backend) both use all cores. Needs PyTorch and open_clip (installed, or its
wheel in .whl/ or `--open_clip_wheel`, see `open_clip_peer.load_open_clip`).
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clip_jax.cli import define_config_flag, parse_flags_or_exit  # noqa: E402
from clip_jax.registry import ConfigError  # noqa: E402
import open_clip_peer  # noqa: E402  (benchmarks/, the script's folder)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "configs", "demo_scale.py")

_CONFIG = define_config_flag(f"Path to a get_config() file (default {DEFAULT_CONFIG}).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed calls per part (median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls per part first.")
_WHEEL = flags.DEFINE_string(
    "open_clip_wheel", open_clip_peer.DEFAULT_WHEEL, "open_clip_torch wheel to import open_clip "
    "from when `import open_clip` fails (default $CLIP_JAX_OPEN_CLIP_WHEEL, else the newest "
    ".whl/open_clip_torch-*.whl).")


def _parse_flags(argv: list[str]) -> list[str]:
  if not any(a in ("--config", "-config") or a.startswith(("--config=", "-config="))
             for a in argv[1:]):
    argv = [argv[0], f"--config={DEFAULT_CONFIG}", *argv[1:]]
  return parse_flags_or_exit(argv)


def _layer_norm(x, scale, bias, eps):
  import jax
  import jax.numpy as jnp
  mean = x.mean(-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def plain_vit(params: dict[str, Any], images, *, patch: int, heads: int, eps: float):
  """A minimal pre-LN ViT with a class token (open_clip's layout), in plain jax.numpy.

  params: {"patch" [p*p*3, D], "cls" [D], "pos" [T, D], "ln_pre"/"ln_post" (scale, bias),
  "blocks": [{"ln1", "ln2": (scale, bias), "q", "k", "v", "o", "fc1", "fc2": (kernel, bias)}],
  "proj" [D, E]}; images [B, S, S, 3] float32. Returns [B, E] L2-normalised embeddings.
  """
  import jax
  import jax.numpy as jnp
  b, s = images.shape[0], images.shape[1] // patch
  d = params["patch"].shape[1]
  x = images[:, :s * patch, :s * patch].reshape(b, s, patch, s, patch, 3)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, s * s, patch * patch * 3) @ params["patch"]
  x = jnp.concatenate([jnp.broadcast_to(params["cls"], (b, 1, d)), x], 1) + params["pos"]
  x = _layer_norm(x, *params["ln_pre"], eps)
  linear = lambda y, p: y @ p[0] + p[1]
  for block in params["blocks"]:
    y = _layer_norm(x, *block["ln1"], eps)
    q, k, v = (linear(y, block[n]).reshape(b, -1, heads, d // heads) for n in "qkv")
    x = x + linear(jax.nn.dot_product_attention(q, k, v).reshape(b, -1, d), block["o"])
    y = jax.nn.gelu(linear(_layer_norm(x, *block["ln2"], eps), block["fc1"]), approximate=False)
    x = x + linear(y, block["fc2"])
  x = _layer_norm(x, *params["ln_post"], eps)[:, 0] @ params["proj"]
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def plain_vit_params(model_params: dict[str, Any]) -> dict[str, Any]:
  """The clip_jax image tower's params (`params["image"]`) in `plain_vit`'s layout."""
  enc = model_params["encoder"]
  pair = lambda m, a, b: (m[a], m[b])
  blocks = []
  transformer = enc["transformer"]
  for i in range(len(transformer)):
    blk = transformer[f"block_{i}"]
    attn = blk["attn"]
    blocks.append({
        "ln1": pair(blk["attn_norm"], "scale", "bias"), "ln2": pair(blk["mlp_norm"], "scale", "bias"),
        **{n: (attn[m]["kernel"], attn[m].get("bias", np.zeros(attn[m]["kernel"].shape[1],
                                                                  np.float32)))
           for n, m in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out"))},
        "fc1": pair(blk["mlp"]["fc1"], "kernel", "bias"),
        "fc2": pair(blk["mlp"]["fc2"], "kernel", "bias")})
  return {"patch": enc["patch_embed"]["kernel"], "cls": enc["cls"], "pos": enc["pos_embedding"],
          "ln_pre": pair(enc["pre_norm"], "scale", "bias"),
          "ln_post": pair(enc["final_norm"], "scale", "bias"), "blocks": blocks,
          "proj": model_params["projection"]["kernel"]}


def time_in_turns(parts: dict[str, Callable[[], Any]], warmup: int,
                  steps: int) -> dict[str, float]:
  """{name: median seconds} of calling every part `warmup + steps` times, one call each in
  turn (each call runs to completion)."""
  for _ in range(warmup):
    for fn in parts.values():
      fn()
  times = {name: [] for name in parts}
  for _ in range(steps):
    for name, fn in parts.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  try:
    run()
  except ConfigError as e:
    print(f"Config error: {e}", file=sys.stderr)
    sys.exit(2)


def run() -> None:
  import jax
  import jax.numpy as jnp
  import torch
  from flax import nnx

  import contextlib

  from clip_jax.training.step import sharded_objective
  from clip_jax.training.trainer import Trainer

  config = _CONFIG.value
  open_clip_peer.architecture_of(config)  # an open_clip-shaped model, or a ConfigError
  stack = contextlib.ExitStack()
  open_clip = open_clip_peer.load_open_clip(_WHEEL.value, stack)
  rng = np.random.default_rng(0)
  batch = open_clip_peer.random_batch(config, rng, with_ids=False)
  devices = jax.devices()[:1]
  trainer = Trainer(config, devices=devices, batch_spec={
      k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()})
  state = trainer.init_state()
  params = jax.device_get(state["params"])
  peer = open_clip_peer.OpenClipVariant(
      "open_clip", open_clip, config, params, [batch], mode="eager",
      precision=open_clip_peer.PRECISIONS[config.model.dtype], grad_checkpointing=False)
  model = peer.model
  images, texts = peer.batches[0]
  torch_batch = {"image": images, "text": texts}
  jbatch = trainer.global_batch(batch)
  graphdef = nnx.graphdef(trainer.model)
  b = config.batch_size
  cotangent = rng.normal(size=(b, config.model.embed_dim)).astype(np.float32)
  jcot, tcot = jnp.asarray(cotangent), torch.from_numpy(cotangent)

  parts: dict[str, tuple[Callable[[], Any], Callable[[], Any] | None]] = {}

  # The train step.
  step = trainer.train_step.lower(state, jbatch).compile()
  holder = {"state": state}

  def jax_step():
    holder["state"], metrics = step(holder["state"], jbatch)
    jax.block_until_ready(metrics)
  parts["train step"] = (jax_step, lambda: peer.step(timed=False))

  # Towers.
  model_params = params["model"]
  for modality in ("image", "text"):
    def forward(p, x, m=modality):
      return nnx.merge(graphdef, p).embed(x, m)

    def backward(p, x, m=modality):
      return jax.grad(lambda q: jnp.sum(forward(q, x, m) * jcot))(p)
    fwd, bwd = jax.jit(forward), jax.jit(backward)
    x = jbatch[modality]
    encode = model.encode_image if modality == "image" else model.encode_text
    tx = torch_batch[modality]

    def torch_forward(encode=encode, tx=tx):
      with torch.no_grad():
        encode(tx, normalize=True)

    def torch_backward(encode=encode, tx=tx):
      model.zero_grad(set_to_none=True)
      (encode(tx, normalize=True) * tcot).sum().backward()
    parts[f"{modality} forward"] = (
        lambda f=fwd, x=x: jax.block_until_ready(f(model_params, x)), torch_forward)
    parts[f"{modality} fwd+bwd"] = (
        lambda f=bwd, x=x: jax.block_until_ready(f(model_params, x)), torch_backward)

  # The loss alone, on fixed embeddings.
  objective = sharded_objective(trainer.objective, trainer.mesh, trainer.batch_axes)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  embeddings = {m: unit(rng.normal(size=(b, config.model.embed_dim))).astype(np.float32)
                for m in ("image", "text")}
  jemb = {m: jnp.asarray(e) for m, e in embeddings.items()}
  loss_grad = jax.jit(jax.grad(lambda e, lp: objective(e, lp)[0], argnums=(0, 1)))
  temb = {m: torch.from_numpy(e).requires_grad_() for m, e in embeddings.items()}
  scale_bias = {"logit_scale": model.logit_scale.exp()} | (
      {"logit_bias": model.logit_bias} if getattr(model, "logit_bias", None) is not None else {})

  def torch_loss():
    for t in temb.values():
      t.grad = None
    peer.loss_fn(temb["image"], temb["text"], **scale_bias).backward(retain_graph=True)
  parts["loss fwd+bwd"] = (
      lambda: jax.block_until_ready(loss_grad(jemb, params["loss"])), torch_loss)

  # The optimizer update alone, from fixed gradients.
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype) * 1e-3,
                       state["params"])
  update = jax.jit(trainer.tx.update)
  torch_grads = [(p, torch.randn_like(p) * 1e-3) for p in model.parameters()]

  def torch_update():  # every parameter gets its gradient back (the other parts clear them)
    for p, g in torch_grads:
      p.grad = g
    peer.optimizer.step()
  parts["AdamW update"] = (
      lambda: jax.block_until_ready(update(grads, holder["state"]["opt_state"],
                                           holder["state"]["params"])),
      torch_update)

  # The attention core and one MLP matmul at the image tower's shapes.
  image = config.model.towers.image
  tokens = (config.data.image_size // image.patch_size) ** 2 + 1
  heads, width = image.num_heads, image.width
  qkv = rng.normal(size=(b, tokens, heads, width // heads)).astype(np.float32)
  jq = jnp.asarray(qkv)
  tq = torch.from_numpy(qkv.transpose(0, 2, 1, 3).copy()).requires_grad_()
  attn = jax.jit(jax.grad(lambda q: jnp.sum(jax.nn.dot_product_attention(q, q, q))))

  def einsum_attention(q):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, q) / math.sqrt(q.shape[-1])
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), q)
  attn_einsum = jax.jit(jax.grad(lambda q: jnp.sum(einsum_attention(q))))

  def torch_attention():
    tq.grad = None
    torch.nn.functional.scaled_dot_product_attention(tq, tq, tq).sum().backward()
  parts["attention fwd+bwd"] = (lambda: jax.block_until_ready(attn(jq)), torch_attention)
  parts["attention fwd+bwd (einsum)"] = (lambda: jax.block_until_ready(attn_einsum(jq)), None)
  hidden = int(width * image.get("mlp_ratio", 4.0))
  x = rng.normal(size=(b * tokens, width)).astype(np.float32)
  w = (rng.normal(size=(width, hidden)) / math.sqrt(width)).astype(np.float32)
  bias = np.zeros(hidden, np.float32)
  dense = jax.jit(jax.grad(lambda x, w, c: jnp.sum(x @ w + c), argnums=(0, 1, 2)))
  jx, jw, jb = map(jnp.asarray, (x, w, bias))
  tx_, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, w.T.copy(), bias))

  def torch_dense():
    for t in (tx_, tw, tb):
      t.grad = None
    torch.nn.functional.linear(tx_, tw, tb).sum().backward()
  parts["MLP matmul fwd+bwd"] = (lambda: jax.block_until_ready(dense(jx, jw, jb)), torch_dense)

  # An independent plain-JAX image tower.
  plain = plain_vit_params(model_params["image"])
  plain_grad = jax.jit(jax.grad(lambda p, x: jnp.sum(plain_vit(
      p, x, patch=image.patch_size, heads=heads, eps=image.get("norm_eps", 1e-6)) * jcot)))
  parts["plain-JAX image fwd+bwd"] = (
      lambda: jax.block_until_ready(plain_grad(plain, jbatch["image"])), None)
  # The same function: else the comparison would say nothing.
  ours = np.asarray(jax.jit(lambda p, x: nnx.merge(graphdef, p).embed(x, "image"))(
      model_params, jbatch["image"]))
  reference = np.asarray(jax.jit(lambda p, x: plain_vit(
      p, x, patch=image.patch_size, heads=heads, eps=image.get("norm_eps", 1e-6)))(
          plain, jbatch["image"]))
  difference = float(np.max(np.abs(ours - reference)))
  if difference > 1e-5:
    raise AssertionError(f"the plain-JAX image tower differs from clip_jax's by {difference:.2e}; "
                         "the config's image tower is not the pre-LN class-token ViT it writes")

  print(f"timing {len(parts)} parts in turns, {_WARMUP.value} warm-up + {_STEPS.value} calls "
        "each ...", file=sys.stderr, flush=True)
  calls = {}
  for name, (jax_fn, torch_fn) in parts.items():
    calls[f"jax {name}"] = jax_fn
    if torch_fn is not None:
      calls[f"torch {name}"] = torch_fn
  median = time_in_turns(calls, _WARMUP.value, _STEPS.value)

  print(f"\n### Step breakdown: clip_jax (JAX {jax.__version__}) vs PyTorch {torch.__version__} "
        f"(open_clip {getattr(open_clip, '__version__', '?')})\n")
  print(f"backend {jax.default_backend()} ({devices[0].device_kind}), "
        f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, batch {b}, "
        f"median of {_STEPS.value} calls in turns after {_WARMUP.value}; plain-JAX image tower "
        f"vs clip_jax's: max abs difference {difference:.1e}\n")
  print("| part | clip_jax ms | PyTorch ms | PyTorch / clip_jax |")
  print("|---|---:|---:|---:|")
  for name in parts:
    j = median[f"jax {name}"] * 1e3
    t = median.get(f"torch {name}")
    cells = (f"{t * 1e3:.1f}", f"{t * 1e3 / j:.2f}") if t is not None else ("-", "-")
    print(f"| {name} | {j:.1f} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
