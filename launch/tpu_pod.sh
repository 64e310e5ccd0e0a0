#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command on every worker.
#
#   launch/tpu_pod.sh [--print] [--install[=PIP_SPEC]] TPU_NAME ZONE CONFIG WORKDIR [overrides...]
#   launch/tpu_pod.sh --install my-tpu us-central2-b configs/demo/emoji.py gs://bucket/runs/exp1
#
# Every worker runs `cd $PWD && python -m clip_jax.train --multihost --config CONFIG --workdir
# WORKDIR ...`: this checkout must sit at the same path on every worker (git clone it there), and
# the workdir must be a bucket (gs://...) or a path that every worker can write.
# --install first runs `cd $PWD && python -m pip install -e '.[gcs]'` on every worker (the GCS
# extra: gcsfs); --install=PIP_SPEC installs PIP_SPEC instead (e.g. "-e .[gcs,test]"; split into
# words by the workers' shell). --print writes the gcloud commands, one per line, instead of
# running them. Each argument reaches the workers as one word, spaces and quotes included.
set -euo pipefail
PRINT=0
INSTALL=""
while [[ ${1:-} == --* ]]; do
  case $1 in
    --print) PRINT=1 ;;
    --install) INSTALL="-e '.[gcs]'" ;;
    --install=*) INSTALL=${1#--install=} ;;
    *) echo "launch/tpu_pod.sh: unknown option $1 (known: --print, --install[=PIP_SPEC])" >&2
       exit 2 ;;
  esac
  shift
done
usage="usage: launch/tpu_pod.sh [--print] [--install[=PIP_SPEC]] TPU_NAME ZONE CONFIG WORKDIR [overrides...]"
TPU=${1:?$usage}
ZONE=${2:?$usage}
CONFIG=${3:?$usage}
WORKDIR=${4:?$usage}
shift 4

# One word for a POSIX shell: as it is when it holds only safe characters, else single-quoted,
# each ' written as '\''.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    local q="'\\''"
    printf "'%s'" "${1//\'/$q}"
  fi
}

cd_here="cd $(quote "$PWD")"
remote="$cd_here && python -m clip_jax.train --multihost"
for arg in --config "$CONFIG" --workdir "$WORKDIR" "$@"; do
  remote+=" $(quote "$arg")"
done
steps=()
[[ -n $INSTALL ]] && steps+=("$cd_here && python -m pip install $INSTALL")
steps+=("$remote")
for step in "${steps[@]}"; do
  cmd=(gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$step")
  if ((PRINT)); then
    line=""
    for word in "${cmd[@]}"; do line+="${line:+ }$(quote "$word")"; done
    printf '%s\n' "$line"
  else
    "${cmd[@]}"
  fi
done
