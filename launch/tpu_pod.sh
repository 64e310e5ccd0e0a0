#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command on every worker.
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/demo/emoji.py gs://bucket/runs/exp1 [--config.x=y ...]
#
# Assumes clip_jax is installed on every worker with the GCS extra (pip install -e ".[gcs]" in
# the same path) and that the workdir is a bucket (gs://...) or a shared path that every worker
# can write. Each argument reaches the workers as one word, spaces and quotes included.
# DRY_RUN=1 prints the command the workers would run instead of calling gcloud.
set -euo pipefail
TPU=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]}
ZONE=${2:?zone}
CONFIG=${3:?config}
WORKDIR=${4:?workdir}
shift 4

# One word for a POSIX shell: single-quoted, each ' written as '\''.
quote() { local q="'\\''"; printf "'%s'" "${1//\'/$q}"; }

remote="cd $(quote "$PWD") && python -m clip_jax.train --multihost"
for arg in --config "$CONFIG" --workdir "$WORKDIR" "$@"; do
  remote+=" $(quote "$arg")"
done
if [[ ${DRY_RUN:-0} == 1 ]]; then
  printf '%s\n' "$remote"
  exit 0
fi
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$remote"
