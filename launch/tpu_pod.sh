#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command on every worker.
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/demo/emoji.py gs://bucket/runs/exp1 [--config.x=y ...]
#
# Assumes clip_jax is installed on every worker (pip install -e . in the same path) and that the
# workdir is a bucket or shared path that every worker can write.
set -euo pipefail
TPU=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]}
ZONE=${2:?zone}
CONFIG=${3:?config}
WORKDIR=${4:?workdir}
shift 4
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
  "cd $(pwd) && python -m clip_jax.train --multihost --config $CONFIG --workdir $WORKDIR $*"
