"""Multi-host start-up: `jax.distributed.initialize` from flags or the cluster's environment.

* TPU pods, SLURM and Open MPI: `--multihost` lets JAX read the cluster environment.
* Anything else (or several CPU processes on one machine, as in the tests): pass
  `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` to every process.
Each process then loads only its own slice of every global batch (see clip_jax.data).
"""

from __future__ import annotations

from typing import Callable

import jax

from clip_jax.registry import ConfigError


def check_flags(coordinator_address: str | None, num_processes: int | None,
                process_id: int | None, *, auto: bool) -> None:
  """Checks that the multi-host flags form one of the two ways to start (or none).

  Either nothing (one process), or `--multihost` alone, or all three of
  `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` with N >= 1, 0 <= I < N.

  Raises:
    ConfigError: a one-line message naming the flags given, what is missing or wrong, and what to
      pass instead.
  """
  given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
           "--process_id": process_id}
  explicit = [name for name, value in given.items() if value is not None]
  if auto and explicit:
    raise ConfigError(f"--multihost reads the cluster environment and cannot be combined with "
                      f"{', '.join(explicit)}; pass either --multihost alone, or "
                      f"{', '.join(given)} without it")
  if not explicit:
    return
  missing = [name for name in given if name not in explicit]
  if missing:
    raise ConfigError(f"{', '.join(explicit)} given without {', '.join(missing)}; an explicit "
                      "multi-process start passes --coordinator_address=HOST:PORT, "
                      "--num_processes=N and --process_id=I to every process")
  host, _, port = coordinator_address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ConfigError(f"--coordinator_address={coordinator_address!r} is not HOST:PORT; give "
                      "process 0's address and a free port, e.g. 10.0.0.1:12345")
  if num_processes < 1:
    raise ConfigError(f"--num_processes={num_processes} must be at least 1")
  if not 0 <= process_id < num_processes:
    raise ConfigError(f"--process_id={process_id} must lie in [0, {num_processes}) for "
                      f"--num_processes={num_processes}")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False) -> None:
  """Initialises the JAX distributed runtime when asked to; a no-op for a single process.

  Raises:
    ConfigError: for an inconsistent set of flags (see `check_flags`), before anything starts.
  """
  check_flags(coordinator_address, num_processes, process_id, auto=auto)
  if coordinator_address is not None:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif auto:
    jax.distributed.initialize()
  else:
    return
  print(f"process {jax.process_index()} of {jax.process_count()}: "
        f"{jax.local_device_count()} local / {jax.device_count()} global devices", flush=True)


def define_flags() -> Callable[[], None]:
  """Defines the absl flags --multihost, --coordinator_address, --num_processes and
  --process_id (for the CLIs); returns a function that calls `initialize` with their values."""
  from absl import flags

  auto = flags.DEFINE_bool("multihost", False, "Initialise jax.distributed from the cluster "
                           "environment (TPU pods, SLURM, Open MPI).")
  address = flags.DEFINE_string("coordinator_address", None,
                                "HOST:PORT of process 0, for an explicit multi-process start.")
  num = flags.DEFINE_integer("num_processes", None,
                             "Number of processes, with --coordinator_address.")
  pid = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes), "
                             "with --coordinator_address.")
  return lambda: initialize(address.value, num.value, pid.value, auto=auto.value)
