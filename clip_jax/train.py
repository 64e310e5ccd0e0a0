"""Train a contrastive model from a config.

  python -m clip_jax.train --config configs/demo/emoji.py --workdir /tmp/emoji_demo \
      [--config.total_steps=200 ...]

Starting again with the same --workdir resumes from its latest checkpoint.

  python -m clip_jax.train --config configs/demo/emoji.py --dry_run [--target=v4-256]

builds the model and train step abstractly and prints the parameters, FLOPs, per-device memory,
the largest arrays' sharding and the config's problems (exit status 1 if any), without a
workdir, data or weights (`clip_jax.training.dry_run`).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from clip_jax import distributed
from clip_jax.cli import define_config_flag, parse_flags_or_exit
from clip_jax.registry import ConfigError

_CONFIG = define_config_flag("Path to a get_config() file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Report on the config without training (no "
                              "workdir, data or weights): clip_jax.training.dry_run.")
_TARGET = flags.DEFINE_string("target", None, "With --dry_run: the topology to check against, "
                              "e.g. v4-256, v5p-128, v5litepod-16, 8xH100, 8xA100-40 (default: "
                              "the current devices).")
_COMPILE = flags.DEFINE_enum("dry_run_compile", "auto", ["auto", "yes", "no"],
                             "With --dry_run: compile the lowered step (auto: when affordable).")
_START_DISTRIBUTED = distributed.define_flags()


def main(argv: list[str]) -> None:
  logging.set_verbosity(logging.WARNING)  # keep JAX's backend probing off the console
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    if _CONFIG.value is None:
      raise ConfigError("--config is required, e.g. --config configs/demo/emoji.py")
    if _DRY_RUN.value:
      from clip_jax.training import dry_run

      sys.exit(dry_run.main(_CONFIG.value, _TARGET.value,
                            {"auto": None, "yes": True, "no": False}[_COMPILE.value]))
    if _WORKDIR.value is None:
      raise ConfigError("--workdir is required (a directory for checkpoints, metrics and "
                        "plots), except with --dry_run")
    _START_DISTRIBUTED()
    from clip_jax.training.loop import train_and_evaluate

    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    print(f"Config error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags_or_exit)
