#!/usr/bin/env bash
# N CPU processes on this machine, each with its own simulated devices, joined through a
# coordinator on 127.0.0.1: a multi-host run without a cluster (for testing).
#
#   launch/local_processes.sh [--print] NUM_PROCESSES CONFIG WORKDIR [overrides...]
#   launch/local_processes.sh 2 configs/demo/emoji.py /tmp/mh --config.total_steps=20 \
#       --config.optim.warmup_steps=2
#
# --print writes the commands instead of running them: one line per process (its environment,
# coordinator and process id; ending in &), then a line that waits for each and exits with the
# status of the last one that failed. Pasted into bash, they do what the script does.
# PORT (default: random in 20000-39999) and DEVICES_PER_PROCESS (default 2) are read from the
# environment.
set -euo pipefail
PRINT=0
if [[ ${1:-} == --print ]]; then PRINT=1; shift; fi
N=${1:?usage: launch/local_processes.sh [--print] NUM_PROCESSES CONFIG WORKDIR [overrides...]}
CONFIG=${2:?config}
WORKDIR=${3:?workdir}
shift 3
PORT=${PORT:-$((20000 + RANDOM % 20000))}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-2}
env=(JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS")
pids=()
for ((i = 0; i < N; i++)); do
  cmd=(python -m clip_jax.train --coordinator_address "127.0.0.1:$PORT" --num_processes "$N"
       --process_id "$i" --config "$CONFIG" --workdir "$WORKDIR" "$@")
  if ((PRINT)); then
    printf '%q ' "${env[@]}" "${cmd[@]}"
    echo '&'
  else
    env "${env[@]}" "${cmd[@]}" &
    pids+=($!)
  fi
done
if ((PRINT)); then
  echo 's=0; for p in $(jobs -p); do wait "$p" || s=$?; done; (exit $s)'
  exit 0
fi
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
