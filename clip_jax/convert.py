"""Convert released weights into a clip_jax checkpoint with its config.

  python -m clip_jax.convert --source open_clip --name ViT-B-32 \
      --checkpoint open_clip_model.safetensors --output /tmp/vit_b32 \
      [--tokenizer_path bpe_simple_vocab_16e6.txt.gz] [--config configs/custom/csv.py:path=...]

writes

* `<output>/checkpoints/0/state`: an orbax checkpoint of the params, laid out as training writes
  them ({"params": {"model": the `MultiTower` params, "loss": the objective's scale (and bias)}});
* `<output>/config.json`: a training config for that model: the converted `config.model`, the
  loss starting at the checkpoint's logit scale, and `config.data` with the image size, text
  length, tokenizer and normalisation the weights expect (`pretrained.PretrainedModel.config`).

Without --config its other fields are those of `default_run()` (the "csv" data source, whose
`config.data.path` and `eval_path` are left empty: set them in config.json to evaluate or train);
with --config they are that file's (its data source, optimizer, evaluations, ...).

Use: `python -m clip_jax.evaluate --workdir <output>` (after setting the data paths), or
`--config.init_from=<output>` in training (every param restores onto the run's mesh and
sharding, whatever the device count). Training with `--workdir <output>` itself is not a resume:
the checkpoint has no optimizer state.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags, logging

from clip_jax import fs
from clip_jax.cli import define_config_flag, parse_flags_or_exit
from clip_jax.registry import ConfigError

# The step the converted params are saved at.
STEP = 0


def default_run() -> ml_collections.ConfigDict:
  """The config.json fields a conversion without --config gets besides the model's own: one
  data-parallel mesh axis and an FSDP axis, the "csv" source with empty paths, fine-tuning
  optimizer settings, and a retrieval evaluation of the held-out table."""
  return ml_collections.ConfigDict(dict(
      seed=0, total_steps=1000, batch_size=256, log_every_steps=50, eval_every_steps=500,
      ckpt_every_steps=500,
      mesh=(("data", -1), ("fsdp", 1)), batch_axes=("data", "fsdp"),
      sharding_rules=((".*", "fsdp"),),
      data=dict(name="csv", path="", eval_path="", image_key="filepath", caption_key="title",
                cache_dir=""),
      optim=dict(learning_rate=1e-5, warmup_steps=100, end_lr_ratio=0.0, b1=0.9, b2=0.98,
                 eps=1e-6, weight_decay=0.1, grad_clip_norm=1.0,
                 no_decay=(r".*/bias$", r".*norm.*", r"^loss/.*",
                           r".*/(cls|pos_embedding|probe)$"),
                 freeze=()),
      evals=dict(heldout=dict(name="retrieval", split="heldout"))))


def run_config(model_config: ml_collections.ConfigDict,
               base: ml_collections.ConfigDict | None = None,
               tokenizer_path: str = "") -> ml_collections.ConfigDict:
  """The training config of a converted model.

  Args:
    model_config: `PretrainedModel.config`: `model`, `loss` and `data` (image_size, max_len,
      tokenizer, preprocess).
    base: the config whose other fields are kept (default: `default_run()`); not modified.
    tokenizer_path: the tokenizer's file: `data.tokenizer.merges_path` of "clip_bpe" (CLIP's
      merges; "" = the one of an installed open_clip_torch), `data.tokenizer.path` of
      "siglip" (SigLIP's spiece.model; required).

  Returns:
    A new ConfigDict: `base` with `model`, `loss` replaced and `data` updated (its `preprocess`
    section keeps its other fields, `normalize` set).
  """
  config = ml_collections.ConfigDict((base or default_run()).to_dict())
  data = model_config.data.to_dict()
  with config.unlocked():
    config.model = model_config.model.to_dict()
    config.loss = model_config.loss.to_dict()
    preprocess = dict(config.data.get("preprocess") or {}, **data.pop("preprocess"))
    tokenizer = data.pop("tokenizer")
    tokenizer["merges_path" if tokenizer["name"] == "clip_bpe" else "path"] = tokenizer_path
    config.data.update(data, tokenizer=tokenizer, preprocess=preprocess)
  return config


def loss_params(loss_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The objective's initial params (`params["loss"]` of the train state), float32 scalars."""
  from clip_jax.losses.registry import initial_values, make_objective

  return initial_values(make_objective(loss_config, axis_name=None).init_params)


def write(output: str, params: dict[str, Any], config: ml_collections.ConfigDict) -> None:
  """Writes `params` (the `MultiTower` tree) with the loss params of `config.loss` as checkpoint
  STEP of `output`, and `config` as `output/config.json`.

  Raises:
    ConfigError: `output` already holds checkpoints or a config.json.
  """
  from clip_jax.checkpoint import Checkpointer

  output = fs.resolve(output)
  for taken in ("checkpoints", "config.json"):
    if fs.exists(fs.join(output, taken)):
      raise ConfigError(f"--output {output!r} already has {taken}; choose a new or empty "
                        "directory")
  state = {"params": {"model": jax.tree.map(jnp.asarray, params),
                      "loss": loss_params(config.loss)}}
  ckpt = Checkpointer(output, async_save=False)
  try:
    ckpt.save(STEP, state, {}, force=True, wait=True)
  finally:
    ckpt.close()
  fs.write_text(fs.join(output, "config.json"), config.to_json_best_effort(indent=2))


def convert(source: str, name: str, checkpoint: str | os.PathLike, output: str, *,
            base: ml_collections.ConfigDict | None = None,
            tokenizer_path: str = "") -> ml_collections.ConfigDict:
  """Converts `checkpoint` (`pretrained.load(source, name, ...)`) into `output` (module
  docstring); returns the config written.

  Raises:
    As `pretrained.load` and `write`.
  """
  from clip_jax import pretrained

  model, params = pretrained.load(source, name, checkpoint=checkpoint)
  config = run_config(model.config, base, tokenizer_path)
  write(output, params, config)
  return config


def define_flags() -> dict[str, flags.FlagHolder]:
  """The CLI's flags (defined by the `__main__` run only, so that importing this module beside
  other CLIs that define --config, e.g. in tests, defines nothing)."""
  return dict(
      config=define_config_flag(
          "Optional training config: config.json keeps its fields other than the model, the "
          "loss and the data's image size, text length, tokenizer and normalisation."),
      source=flags.DEFINE_string("source", None, "Where the weights come from "
                                 "(clip_jax.pretrained.SOURCES)."),
      name=flags.DEFINE_string("name", None, "The architecture, e.g. ViT-B-32."),
      checkpoint=flags.DEFINE_string("checkpoint", None, "The checkpoint file."),
      output=flags.DEFINE_string("output", None, "The directory to write (new or empty)."),
      tokenizer_path=flags.DEFINE_string(
          "tokenizer_path", "", "The tokenizer's file: CLIP's BPE merges (bpe_simple_vocab_16e6"
          ".txt.gz; '' = the one of an installed open_clip_torch) or SigLIP's spiece.model."))


def main(argv: list[str], values: dict[str, flags.FlagHolder]) -> None:
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  v = {k: holder.value for k, holder in values.items()}
  try:
    config = convert(v["source"], v["name"], v["checkpoint"], v["output"], base=v["config"],
                     tokenizer_path=v["tokenizer_path"])
  except (ConfigError, FileNotFoundError, ValueError) as e:
    print(f"Error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"Wrote {v['output']}: checkpoint {STEP} and config.json (logits scaled by "
        f"{math.exp(config.loss.init_scale):.2f}).")
  tokenizer = config.data.tokenizer
  if tokenizer.name != "clip_bpe" and not tokenizer.get("path"):
    print(f"Before training or evaluating, set data.tokenizer.path in {v['output']}/config.json "
          f"to the {tokenizer.name!r} tokenizer's file (for SigLIP: the model's spiece.model), "
          "or convert again with --tokenizer_path.")


if __name__ == "__main__":
  _FLAGS = define_flags()
  flags.mark_flags_as_required(["source", "name", "checkpoint", "output"])
  app.run(lambda argv: main(argv, _FLAGS), flags_parser=parse_flags_or_exit)
