#!/usr/bin/env bash
# clip_jax vs open_clip 3.3.0 training throughput on one GPU, in one call of a 15-minute lease.
#
# Runs benchmarks/train_throughput.py five times, each under its own `timeout` (8 min in all),
# on CLIP ViT-B/32 and ViT-B/16 (configs/paper/clip_vit_b{32,16}_laion400m.py: 224 px, context
# 77, bfloat16 compute, float32 params and AdamW state, softmax loss), each at 256 examples per
# device and at the largest batch that fits (--batch_per_device=max): clip_jax (all_gather loss)
# against open_clip amp_bf16, eager and torch.compile; then ViT-B/16 at 256 with cuDNN's fused
# attention (config.model.attention_impl = "cudnn"), clip_jax alone. It writes under $OUT:
#   results.md    the versions, nvidia-smi and every run's markdown table;
#   results.json  {run name: the run's --json record} (raw step times, versions, device, date);
#   session.log   everything the runs printed (stderr included).
# A run cut off by its timeout leaves its log; the others still run; the exit status is 1 when
# any run failed (their names printed last).
#
# On the device machine (the wheels below in .whl/, carried; the repository is the working
# tree, put on PYTHONPATH):
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=540)
# Options (environment): GPU_SESSION_XLA_FLAGS, XLA flags added for every run (e.g.
# "--xla_gpu_enable_latency_hiding_scheduler=true"); PEAK_TFLOPS (default 989: H100 SXM dense
# bf16; the H200 is the same silicon); CLIP_JAX_GPU_SESSION_SMOKE=1, the CPU smoke run (tests):
# benchmarks/configs/demo_scale.py:tiny, one max-batch run with --memory_gib, open_clip eager,
# one step, no wheels installed.
#
# Wheels the device image lacks (KINDS.md's package list; what the benchmark imports, checked
# with sys.modules after importing it): open_clip_torch (its needs torch, torchvision, regex,
# tqdm, huggingface-hub, safetensors and timm are there; ftfy is not), ml_collections (configs),
# ftfy and its wcwidth (the clip_bpe tokenizer), braceexpand (shard lists), grain and its
# array_record and portpicker (the data pipeline, imported by the trainer). Fetch them here, at
# the repository root (.gitignore has /.whl/; about 7 MB, grain and array_record binary):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     open_clip_torch==3.3.0 ml_collections==1.1.0 ftfy==6.3.1 wcwidth==0.7.0 \
#     braceexpand==0.1.7 grain==0.2.18 array_record==0.8.6 portpicker==1.6.0
# (keep one version of each in .whl/; a clip_benchmark wheel there is installed too, harmlessly).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
LOG="$OUT/session.log"
MD="$OUT/results.md"
RAW="$(mktemp -d)"
: >"$LOG"
SMOKE=${CLIP_JAX_GPU_SESSION_SMOKE:-0}
PYTHON=${PYTHON:-python3}

if [[ $SMOKE != 1 ]] && compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 || { echo "wheel install failed" | tee -a "$LOG"; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
# JAX and PyTorch share the GPU: JAX allocates as it goes (no 75 % up front), up to 90 %.
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
if [[ -n ${GPU_SESSION_XLA_FLAGS:-} ]]; then
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$GPU_SESSION_XLA_FLAGS"
fi

{
  echo "# clip_jax vs open_clip training throughput, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo '```'
  "$PYTHON" - <<'EOF'
import importlib
for name in ("jax", "jaxlib", "flax", "optax", "torch", "open_clip"):
  try:
    print(name, importlib.import_module(name).__version__)
  except Exception as e:  # noqa: BLE001
    print(name, "not importable:", type(e).__name__, e)
import jax
print("devices", jax.devices())
EOF
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
  echo "XLA_FLAGS=${XLA_FLAGS:-}"
  echo '```'
} >"$MD" 2>>"$LOG"

# bench NAME SECONDS ARGS...: one train_throughput.py run, its table appended to results.md.
bench() {
  local name=$1 seconds=$2
  shift 2
  echo "== $name (timeout ${seconds} s): $*" | tee -a "$LOG"
  {
    echo
    echo "## $name"
  } >>"$MD"
  timeout --kill-after=10 "$seconds" "$PYTHON" benchmarks/train_throughput.py --devices 1 \
    --impls all_gather --json "$RAW/$name.json" "$@" >>"$MD" 2>>"$LOG"
  local rc=$?
  [[ $rc == 0 ]] || { echo "($name ended with status $rc; see session.log)" | tee -a "$MD" "$LOG"; FAILED+=("$name"); }
}
FAILED=()

if [[ $SMOKE == 1 ]]; then
  bench smoke_max 120 --config benchmarks/configs/demo_scale.py:tiny --batch_per_device max \
    --memory_gib 0.004 --open_clip eager --steps 1 --warmup 0 --batches 1
else
  PEAK=${PEAK_TFLOPS:-989}
  common=(--dtypes bfloat16 --open_clip eager,compile --peak_tflops "$PEAK" --warmup 3)
  bench b32_256 80 --config configs/paper/clip_vit_b32_laion400m.py --batch_per_device 256 \
    --steps 20 "${common[@]}"
  bench b16_256 110 --config configs/paper/clip_vit_b16_laion400m.py --batch_per_device 256 \
    --steps 15 "${common[@]}"
  bench b32_max 100 --config configs/paper/clip_vit_b32_laion400m.py --batch_per_device max \
    --steps 10 "${common[@]}"
  bench b16_max 120 --config configs/paper/clip_vit_b16_laion400m.py --batch_per_device max \
    --steps 10 "${common[@]}"
  # cuDNN's fused attention (config.model.attention_impl), clip_jax alone, against b16_256.
  bench b16_256_cudnn 70 --config configs/paper/clip_vit_b16_laion400m.py --batch_per_device 256 \
    --steps 15 --dtypes bfloat16 --peak_tflops "$PEAK" --warmup 3 \
    --config.model.attention_impl=cudnn
fi

"$PYTHON" - "$RAW" "$OUT/results.json" <<'EOF'
import glob, json, os, sys
runs = {os.path.basename(p)[:-5]: json.load(open(p)) for p in sorted(glob.glob(sys.argv[1] + "/*.json"))}
json.dump(runs, open(sys.argv[2], "w"), indent=1)
EOF
rm -rf "$RAW"
cat "$MD"
# Every run has been tried; the status says whether all of them finished.
[[ ${#FAILED[@]} == 0 ]] || { echo "runs that failed: ${FAILED[*]}"; exit 1; }
