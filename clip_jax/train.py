"""Train a contrastive model from a config.

  python -m clip_jax.train --config configs/demo/emoji.py --workdir /tmp/emoji_demo \
      [--config.total_steps=200 ...]

Starting again with the same --workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from clip_jax.registry import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a get_config() file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from clip_jax.training.loop import train_and_evaluate

  try:
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    print(f"Config error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
