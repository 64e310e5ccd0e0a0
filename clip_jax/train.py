"""Train a contrastive model from a config.

  python -m clip_jax.train --config configs/demo/emoji.py --workdir /tmp/emoji_demo \
      [--config.total_steps=200 ...]

Starting again with the same --workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from clip_jax import distributed
from clip_jax.cli import define_config_flag, parse_flags_or_exit
from clip_jax.registry import ConfigError

_CONFIG = define_config_flag("Path to a get_config() file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
_START_DISTRIBUTED = distributed.define_flags()


def main(argv: list[str]) -> None:
  logging.set_verbosity(logging.WARNING)  # keep JAX's backend probing off the console
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    if _CONFIG.value is None:
      raise ConfigError("--config is required, e.g. --config configs/demo/emoji.py")
    _START_DISTRIBUTED()
    from clip_jax.training.loop import train_and_evaluate

    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    print(f"Config error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main, flags_parser=parse_flags_or_exit)
