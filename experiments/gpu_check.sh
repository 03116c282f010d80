#!/usr/bin/env bash
# The GPU check of the paper-scale path (packed attention, GLM-4-9B training under ZeRO-3 offload,
# DPO, GRPO, hf vs vLLM generation): one call, one H100/H200, no network, under 15 minutes (17 if 32k
# packs run out of GPU memory and 16k packs are measured instead). Figures go to
# $OUT/gpu_check.json (or runs/gpu_check/), each stage's log beside it; a failing or timed-out stage
# is recorded and the next one still runs. STAGES="attention" (any of the names below, space
# separated) runs setup and those stages only.
#   1. setup            install the packages the device image lacks from .whl/ (made here by
#                       experiments/gpu_wheels.sh; pass carry=[".whl"] to the device run)
#   2. attention        benchmarks/packed_attention.py --gpu: sdpa, flex_attention and (where
#                       flash-attn is installed) flash_attention_2 on a 32k pack of a LongWriter-like
#                       length mix, GLM-4-9B layers, forward+backward: time and peak memory, as ratios
#                       against sdpa ($OUT/packed_attention.md, and "packed_attention" in the JSON)
#   3. train            GLM-4-9B architecture, random weights, ZeRO-3 optimizer+parameter CPU offload,
#                       torch AdamW on the offloaded states (conf/deepspeed/zero3_offload.json),
#                       32k packs, bf16, activation checkpointing: tokens/s, MFU, peak GPU memory
#                       (16k packs if 32k runs out of GPU memory)
#   4. generate         generation=hf on GLM-4-9B: static batches vs continuous batching on
#                       LongBench-Write's spread of lengths, batch-1 decode vs the measured bandwidth
#                       bound (with and without static cache + torch.compile), peak memory
#   5. dpo              lw's DPO trainer on the same architecture and offload, pairs of 16k tokens:
#                       the precomputed reference pass and the policy steps, timed
#   6. grpo             lw's length reward through TRL's GRPOTrainer on the same architecture and offload:
#                       8 completions of 256 tokens a step sampled on the gathered weights, then trained
#   7. train_cpuadam    the paper configs' DeepSpeed CPU Adam (zero3_offload_cpuadam.json; compiles
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
STAGES="${STAGES:-attention train generate dpo grpo train_cpuadam}"
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
want() { [[ " $STAGES " == *" $1 "* ]]; }

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
if want attention; then
  # SMOKE: the same script on CPU, forward only, one small pack.
  ATTENTION_ARGS=$([ "${SMOKE:-0}" = 1 ] && echo "--lengths 512 --repeats 1" || echo --gpu)
  # shellcheck disable=SC2086
  stage attention 180 "$PY" benchmarks/packed_attention.py $ATTENTION_ARGS --out "$OUT_DIR" || true
  if [ -f "$OUT_DIR/packed_attention.json" ]; then
    "$PY" experiments/gpu_check.py record --out "$RESULT" --key packed_attention \
      --value "$(cat "$OUT_DIR/packed_attention.json")" || true
  fi
fi
rc=0
if want train; then
  stage train 180 "$PY" experiments/gpu_check.py train --out "$RESULT" --ds zero3_offload $SMOKE_FLAG || rc=$?
fi
if [ "$rc" = 2 ]; then  # out of GPU memory at 32k tokens: measure 16k packs instead
  stage train_16k 120 "$PY" experiments/gpu_check.py train --out "$RESULT" --ds zero3_offload --seq-len 16384 \
    $SMOKE_FLAG || true
fi
if want generate; then stage generate 240 "$PY" experiments/gpu_check.py generate --out "$RESULT" $SMOKE_FLAG || true; fi
if want dpo; then
  stage dpo 120 "$PY" experiments/gpu_check.py dpo --out "$RESULT" --ds zero3_offload --seq-len 16384 $SMOKE_FLAG || true
fi
if want grpo; then
  stage grpo 120 "$PY" experiments/gpu_check.py grpo --out "$RESULT" --ds zero3_offload $SMOKE_FLAG || true
fi
if want train_cpuadam; then
  stage train_cpuadam 150 "$PY" experiments/gpu_check.py train --out "$RESULT" --ds zero3_offload_cpuadam $SMOKE_FLAG \
    || true
fi
echo "=== figures: $RESULT"
cat "$RESULT"
