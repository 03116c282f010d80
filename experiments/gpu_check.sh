#!/usr/bin/env bash
# The GPU check of lw's paper-scale path, on a bare device in ONE call of at most 10 minutes: one
# H100/H200, no network. Figures go to $OUT/gpu_check.json (or runs/gpu_check/), each stage's log
# beside it; a failing or timed-out stage is recorded and the next one still runs. The stages share
# a deadline (BUDGET_S, default 540 s from the start, install included): each runs under the smaller
# of its own limit and what is left, and one with under 20 s left is skipped and recorded so.
# STAGES="train" (any of the names below, space separated) runs setup and those stages only.
#   setup          install what the image lacks from .whl/ (made here by experiments/gpu_wheels.sh;
#                  pass carry=[".whl"] to the device run) into /tmp/lw_site, first on PYTHONPATH
#   loss           benchmarks/fused_loss.py --gpu: lw's SFT loss step through TRL's fused LM head vs full
#                  logits, one layer of GLM-4-9B's shapes and its 151,552 vocabulary, packs of 16k and
#                  32k tokens, bf16: peak memory and step time of each (full logits may run out of memory)
#   attention      benchmarks/packed_attention.py --gpu: sdpa vs flex_attention (and flash where
#                  installed) on a 32k pack of a LongWriter-like mix, GLM-4-9B layers, forward+backward
#   train          lw's SFT path (lw's packer, pack collator and trainer, the paper recipe's loss through
#                  TRL's fused LM head, attn_implementation auto) on 32k packs, GLM-4-9B width at the most
#                  layers lw's planner fits on this GPU, ZeRO-3 WITHOUT offload (zero3.json): tokens/s, MFU
#                  from per-sample FLOPs, the forward/backward/optimizer-step time of each step, the
#                  planner's estimate beside the measured peak
#   train_offload  the same at 12 layers with optimizer and parameters offloaded, torch AdamW (zero3_offload.json)
#   generate       generation=hf on GLM-4-9B: static batches vs continuous batching on LongBench-Write's
#                  spread of lengths, batch-1 decode vs the measured bandwidth bound (with and without a
#                  static cache + torch.compile), peak memory (vLLM too where it is installed)
#   grpo           lw's length reward through TRL's GRPOTrainer, 8 completions a step, offload
#   dpo            lw's DPO trainer, pairs of 16k tokens: the precomputed reference pass and the steps
#   train_cpuadam  train_offload with DeepSpeed's CPU Adam (zero3_offload_cpuadam.json; compiles
#                  cpu_adam first, into $TORCH_EXTENSIONS_DIR): last, it gets what time is left
# CPU check of the script itself: SMOKE=1 bash experiments/gpu_check.sh
set -euo pipefail
SCRIPT="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$SCRIPT")/.."
OUT_DIR="${OUT:-$PWD/runs/gpu_check}"
mkdir -p "$OUT_DIR"
RESULT="$OUT_DIR/gpu_check.json"
PY="${PYTHON:-python3}"
SMOKE_FLAG=$([ "${SMOKE:-0}" = 1 ] && echo --smoke || true)
STAGES="${STAGES:-loss train attention train_offload generate grpo dpo train_cpuadam}"
DEADLINE=$((SECONDS + ${BUDGET_S:-540}))
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-/tmp/lw_torch_extensions}"
export PYTHONPATH="/tmp/lw_site${PYTHONPATH:+:$PYTHONPATH}"

# stage NAME SECONDS COMMAND...: run under min(SECONDS, time left), log it, record its exit status and time.
stage() {
  local name=$1 limit=$2 start=$SECONDS rc left
  shift 2
  left=$((DEADLINE - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    echo "=== $name skipped: ${left}s left of the budget"
    "$PY" experiments/gpu_check.py record --out "$RESULT" --key "stage_$name" \
      --value "{\"skipped\": \"${left}s left of the budget\"}" || true
    return 0
  fi
  echo "=== $name (at most ${limit}s)"
  set +e
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  "$PY" experiments/gpu_check.py record --out "$RESULT" --key "stage_$name" \
    --value "{\"exit_code\": $rc, \"seconds\": $((SECONDS - start)), \"limit\": $limit}" || true
  return "$rc"
}
want() { [[ " $STAGES " == *" $1 "* ]]; }

setup() {
  if ! "$PY" -c "import deepspeed, trl, datasets, hydra" 2>/dev/null && compgen -G ".whl/*" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/lw_site .whl/*.whl
    # The source packages (DeepSpeed without its ops, antlr4) build here, against the image's setuptools.
    for sdist in .whl/*.tar.gz; do
      "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/lw_site "$sdist"
    done
  fi
  "$PY" - <<'PY'
import deepspeed, torch, transformers, accelerate, trl, datasets, hydra, omegaconf
import lw.data.packing, lw.train.sft, lw.train.dpo, lw.train.rewards  # what the stages import
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
print("transformers", transformers.__version__, "accelerate", accelerate.__version__, "deepspeed", deepspeed.__version__,
      "trl", trl.__version__, "datasets", datasets.__version__)
PY
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  free -g || true
}
if [ "${1:-}" = setup ]; then setup; exit; fi

stage setup 90 bash "$SCRIPT" setup || { echo "setup failed: nothing else can run"; exit 1; }
train() {  # train STAGE DEEPSPEED_CONFIG SECONDS [ARGS...]
  local name=$1 ds=$2 seconds=$3
  shift 3
  stage "$name" "$seconds" "$PY" experiments/gpu_check.py train --out "$RESULT" --ds "$ds" $SMOKE_FLAG "$@" || true
}
if want loss; then
  # SMOKE: the same script on CPU, a 256-token pack over a 4,096-token vocabulary.
  LOSS_ARGS=$([ "${SMOKE:-0}" = 1 ] && echo "--tokens 256 --vocab 4096 --repeats 1" || echo --gpu)
  # shellcheck disable=SC2086
  stage loss 75 "$PY" benchmarks/fused_loss.py $LOSS_ARGS --out "$OUT_DIR" || true
  for name in fused_loss_gpu fused_loss; do
    if [ -f "$OUT_DIR/$name.json" ]; then
      "$PY" experiments/gpu_check.py record --out "$RESULT" --key fused_loss --value "$(cat "$OUT_DIR/$name.json")" || true
    fi
  done
fi
if want train; then train train zero3 150 --layers auto; fi
if want attention; then
  # SMOKE: the same script on CPU, forward only, one small pack.
  ATTENTION_ARGS=$([ "${SMOKE:-0}" = 1 ] && echo "--lengths 512 --repeats 1" || echo --gpu)
  # shellcheck disable=SC2086
  stage attention 90 "$PY" benchmarks/packed_attention.py $ATTENTION_ARGS --out "$OUT_DIR" || true
  if [ -f "$OUT_DIR/packed_attention.json" ]; then
    "$PY" experiments/gpu_check.py record --out "$RESULT" --key packed_attention \
      --value "$(cat "$OUT_DIR/packed_attention.json")" || true
  fi
fi
if want train_offload; then train train_offload zero3_offload 110; fi
if want generate; then stage generate 150 "$PY" experiments/gpu_check.py generate --out "$RESULT" $SMOKE_FLAG || true; fi
if want grpo; then
  stage grpo 50 "$PY" experiments/gpu_check.py grpo --out "$RESULT" --ds zero3_offload --layers 8 --steps 1 \
    $SMOKE_FLAG || true
fi
if want dpo; then
  stage dpo 60 "$PY" experiments/gpu_check.py dpo --out "$RESULT" --ds zero3_offload --layers 8 --steps 1 \
    --seq-len 16384 $SMOKE_FLAG || true
fi
if want train_cpuadam; then train train_cpuadam zero3_offload_cpuadam 150; fi
echo "=== figures: $RESULT (${SECONDS}s)"
cat "$RESULT"
