"""The package's console log: the `logging` logger "clip_jax", set up once, when first imported.

    from clip_jax.log import get_logger
    log = get_logger(__name__)
    log.info("Resumed from %s.", path)     # process 0 only:   "Resumed from ..."
    log.warning("%s cannot be read", p)    # every process:    "WARNING: ... cannot be read"

Lines go to the current `sys.stdout`, looked up for every line (so pytest's capture and
redirection see them), as the bare message for INFO and as "LEVEL: message" above it. Info lines
come from process 0 alone (every process would print the same line); warnings and errors from
every process, those of process i > 0 prefixed "[process i]". The logger does not propagate, so
absl's handler on the root logger (the CLIs) does not print its lines a second time.
"""

from __future__ import annotations

import logging
import sys

import jax

ROOT = "clip_jax"


class _ProcessFilter(logging.Filter):
  """Lets info lines through on process 0 only; marks lines of the other processes."""

  def filter(self, record: logging.LogRecord) -> bool:
    index = jax.process_index()
    record.process_prefix = f"[process {index}] " if index else ""
    return index == 0 or record.levelno >= logging.WARNING


class _Formatter(logging.Formatter):
  def format(self, record: logging.LogRecord) -> str:
    level = "" if record.levelno <= logging.INFO else f"{record.levelname}: "
    return f"{record.process_prefix}{level}{record.getMessage()}"


class _StdoutHandler(logging.Handler):
  """Writes each line to whatever `sys.stdout` is at that moment, and flushes it."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      sys.stdout.write(self.format(record) + "\n")
      sys.stdout.flush()
    except Exception:  # noqa: BLE001  (logging must never raise into the caller)
      self.handleError(record)


def _setup() -> None:
  logger = logging.getLogger(ROOT)
  handler = _StdoutHandler()
  handler.addFilter(_ProcessFilter())
  handler.setFormatter(_Formatter())
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False


def get_logger(name: str) -> logging.Logger:
  """The logger for module `name` (a "clip_jax." module: a child of the configured logger)."""
  if not name.startswith(f"{ROOT}."):
    raise ValueError(f"get_logger({name!r}): pass a clip_jax module's __name__")
  return logging.getLogger(name)


_setup()
