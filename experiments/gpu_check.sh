#!/usr/bin/env bash
# The GPU check of the paper-scale path (GLM-4-9B training under ZeRO-3 offload, DPO, hf vs vLLM
# generation, GRPO): one call, one H100/H200, no network, under 12 minutes (14 if 32k packs run out of GPU
# memory and 16k packs are measured instead). Figures go to
# $OUT/gpu_check.json (or runs/gpu_check/), each stage's log beside it; a failing or timed-out stage
# is recorded and the next one still runs.
#   1. setup            install the packages the device image lacks from .whl/ (made here by
#                       experiments/gpu_wheels.sh; pass carry=[".whl"] to the device run)
#   2. train            GLM-4-9B architecture, random weights, ZeRO-3 optimizer+parameter CPU offload,
#                       torch AdamW on the offloaded states (conf/deepspeed/zero3_offload.json),
#                       32k packs, bf16, activation checkpointing: tokens/s, MFU, peak GPU memory
#                       (16k packs if 32k runs out of GPU memory)
#   3. generate         hf generate vs vLLM (skipped with a message where vLLM is not installed)
#   4. dpo              lw's DPO trainer on the same architecture and offload, pairs of 16k tokens:
#                       the precomputed reference pass and the policy steps, timed
#   5. grpo             lw's length reward through TRL's GRPOTrainer on the same architecture and offload:
#                       8 completions of 256 tokens a step sampled on the gathered weights, then trained
#   6. train_cpuadam    the paper configs' DeepSpeed CPU Adam (zero3_offload_cpuadam.json; compiles
#                       cpu_adam first, into $TORCH_EXTENSIONS_DIR)
# CPU check of the script itself: SMOKE=1 bash experiments/gpu_check.sh
set -euo pipefail
SCRIPT="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$SCRIPT")/.."
OUT_DIR="${OUT:-$PWD/runs/gpu_check}"
mkdir -p "$OUT_DIR"
RESULT="$OUT_DIR/gpu_check.json"
PY="${PYTHON:-python3}"
SMOKE_FLAG=$([ "${SMOKE:-0}" = 1 ] && echo --smoke || true)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-/tmp/lw_torch_extensions}"

# stage NAME SECONDS COMMAND...: run with a time limit, log it, record its exit status and time.
stage() {
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "=== $name (at most ${limit}s)"
  set +e
  timeout --kill-after=20 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  "$PY" experiments/gpu_check.py record --out "$RESULT" --key "stage_$name" \
    --value "{\"exit_code\": $rc, \"seconds\": $((SECONDS - start))}" || true
  return "$rc"
}

setup() {
  if ! "$PY" -c "import deepspeed" 2>/dev/null && compgen -G ".whl/*" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/lw_site .whl/*.whl
    # DeepSpeed ships as source only; built here without its ops (they compile on first use).
    if compgen -G ".whl/deepspeed-*.tar.gz" >/dev/null; then
      "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/lw_site .whl/deepspeed-*.tar.gz
    fi
  fi
  "$PY" - <<'PY'
import deepspeed, torch, transformers, accelerate
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
print("transformers", transformers.__version__, "accelerate", accelerate.__version__, "deepspeed", deepspeed.__version__)
PY
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  free -g || true
}
export PYTHONPATH="/tmp/lw_site${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = setup ]; then setup; exit; fi

stage setup 75 bash "$SCRIPT" setup || { echo "setup failed: nothing else can run"; exit 1; }
stage train 180 "$PY" experiments/gpu_check.py train --out "$RESULT" --ds zero3_offload $SMOKE_FLAG && rc=0 || rc=$?
if [ "$rc" = 2 ]; then  # out of GPU memory at 32k tokens: measure 16k packs instead
  stage train_16k 120 "$PY" experiments/gpu_check.py train --out "$RESULT" --ds zero3_offload --seq-len 16384 \
    $SMOKE_FLAG || true
fi
stage generate 90 "$PY" experiments/gpu_check.py generate --out "$RESULT" $SMOKE_FLAG || true
stage dpo 120 "$PY" experiments/gpu_check.py dpo --out "$RESULT" --ds zero3_offload --seq-len 16384 $SMOKE_FLAG || true
stage grpo 120 "$PY" experiments/gpu_check.py grpo --out "$RESULT" --ds zero3_offload $SMOKE_FLAG || true
stage train_cpuadam 150 "$PY" experiments/gpu_check.py train --out "$RESULT" --ds zero3_offload_cpuadam $SMOKE_FLAG || true
echo "=== figures: $RESULT"
cat "$RESULT"
