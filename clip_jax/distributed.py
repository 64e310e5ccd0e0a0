"""Multi-host start-up: `jax.distributed.initialize` from flags or the cluster's environment.

* TPU pods, SLURM and Open MPI: `--multihost` lets JAX read the cluster environment.
* Anything else (or several CPU processes on one machine, as in the tests): pass
  `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` to every process.
Each process then loads only its own slice of every global batch (see clip_jax.data).
"""

from __future__ import annotations

import jax


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False) -> None:
  """Initialises the JAX distributed runtime when asked to; a no-op for a single process."""
  explicit = coordinator_address is not None
  if not (explicit or auto):
    return
  if explicit and (num_processes is None or process_id is None):
    raise ValueError("--coordinator_address needs --num_processes and --process_id as well")
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()
  print(f"process {jax.process_index()} of {jax.process_count()}: "
        f"{jax.local_device_count()} local / {jax.device_count()} global devices", flush=True)
