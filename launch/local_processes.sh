#!/usr/bin/env bash
# N CPU processes on this machine, each with its own simulated devices, joined through a
# coordinator on 127.0.0.1: a multi-host run without a cluster (for testing).
#
#   launch/local_processes.sh 2 configs/demo/emoji.py /tmp/mh --config.total_steps=20
set -euo pipefail
N=${1:?usage: launch/local_processes.sh NUM_PROCESSES CONFIG WORKDIR [overrides...]}
CONFIG=${2:?config}
WORKDIR=${3:?workdir}
shift 3
PORT=${PORT:-$((20000 + RANDOM % 20000))}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-2}
pids=()
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS" \
    python -m clip_jax.train --coordinator_address "127.0.0.1:$PORT" --num_processes "$N" \
      --process_id "$i" --config "$CONFIG" --workdir "$WORKDIR" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
