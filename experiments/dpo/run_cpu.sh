#!/usr/bin/env bash
# The DPO miniature on 2 CPU cores, seeds 0 and 1 (SEEDS="0 1 2 3 4" for more): each seed's own
# cap-100 SFT model of the length-bound miniature -> preference pairs (8 samples per toy request,
# judged on a loopback judge) -> DPO -> the toy ruler, then the miniature judge's S_q of every probe
# (task=score) and one lw-compare of SFT and DPO, each seed's pair and the mean change with its
# interval. Results in experiments/dpo/results/cpu/ (the 5 seeds: OUT=experiments/dpo/results/cpu_5seeds).
#   experiments/dpo/run_cpu.sh [extra overrides for the pairs and DPO runs]   (LW=lw, OUT=..., WORK=..., SEEDS=... to change)
set -euo pipefail
cd "$(dirname "$0")/../.."
LW="${LW:-lw}"
OUT="${OUT:-experiments/dpo/results/cpu}"
WORK="${WORK:-runs/dpo_mini}"
PY="${PYTHON:-python}"
read -r -a seeds <<< "${SEEDS:-0 1}"
# One thread per process: the tiny model gains nothing from a second one, and on a shared machine two
# threads spin-wait for each other (experiments/grpo/README.md: a GRPO step took 6-36 s with two, 0.5-3 s with one).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT" "$WORK"

# Toy requests of 10-200 words on topics the probe does not use (it asks about rivers and music).
"$PY" - "$WORK/prompts.jsonl" <<'PY'
import json, random, sys
from lw.data import toy
rng = random.Random(0)
with open(sys.argv[1], "w") as f:
    for n in (10, 15, 20, 25, 30, 40, 50, 60, 75, 100, 120, 150, 200):
        for topic in ("mountains", "cities", "forests", "oceans", "gardens", "trains"):
            f.write(json.dumps({"prompt": toy.make_prompt(rng, topic, n), "length": n}) + "\n")
PY

# The SFT starting points (not timed with the miniature: the length-bound sweep makes the same runs).
sft_start=$SECONDS
for seed in "${seeds[@]}"; do
  [ -f "$WORK/sft-seed-$seed/model/config.json" ] || \
    $LW experiment=length_bound_mini data.max_output_words=100 seed=$seed logger.group=dpo_mini \
        hydra.run.dir="$WORK/sft-seed-$seed"
done
echo "SFT starting points: $((SECONDS - sft_start)) s"

"$PY" experiments/dpo/judge_server.py "$WORK/judge_url" &
JUDGE=$!
trap 'kill $JUDGE 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -s "$WORK/judge_url" ] && break; sleep 0.2; done
URL=$(cat "$WORK/judge_url")

start=$SECONDS
# A run directory resumes what it holds (samples, judgements, a checkpoint): start the DPO stages afresh.
rm -rf "$WORK"/pairs-seed-* "$WORK"/dpo-seed-* "$WORK"/quality-*
for seed in "${seeds[@]}"; do
  $LW experiment=dpo_mini task=dpo_pairs seed=$seed model.path="$WORK/sft-seed-$seed/model" \
      pairs.prompts="$WORK/prompts.jsonl" judge.base_url="$URL" generation.temperature=1.0 \
      logger.group=dpo_mini hydra.run.dir="$WORK/pairs-seed-$seed" "$@"
  $LW experiment=dpo_mini seed=$seed trainer.init_from="$WORK/sft-seed-$seed/model" judge=none \
      data.path="$WORK/pairs-seed-$seed/pairs.jsonl" logger.group=dpo_mini hydra.run.dir="$WORK/dpo-seed-$seed" "$@"
  echo "seed $seed: pairs and DPO done at $((SECONDS - start)) s"
done
runs=()
for seed in "${seeds[@]}"; do runs+=("sft-seed-$seed" "dpo-seed-$seed"); done
# S_q of every probe's answers by the same judge: task=score reads the toy ruler's predictions as
# LongBench-Write items (prompt, length, response).
for run in "${runs[@]}"; do
  $LW experiment=dpo_mini task=score score.benchmark=longbench_write judge.base_url="$URL" judge.cache=false \
      score.predictions="$WORK/$run/eval/toy_ruler/predictions.jsonl" logger.group=dpo_mini hydra.run.dir="$WORK/quality-$run"
done
echo "pairs, DPO, probes and their S_q for ${#seeds[@]} seeds (${seeds[*]}): $((SECONDS - start)) s on $(nproc --all) cores, $OMP_NUM_THREADS thread(s) per process, $(date -u +%F)" | tee "$OUT/time.txt"

# Each run's config beside its results: lw-compare pairs a DPO run with the SFT run its
# trainer.init_from names and takes S_q from the task=score run of its predictions.
for run in "${runs[@]}" "${runs[@]/#/quality-}"; do
  mkdir -p "$OUT/$run/.hydra" && cp "$WORK/$run/metrics.json" "$OUT/$run/"
  cp "$WORK/$run/.hydra/config.yaml" "$OUT/$run/.hydra/"
  [ ! -f "$WORK/$run/results.csv" ] || cp "$WORK/$run/results.csv" "$OUT/$run/"
done
for seed in "${seeds[@]}"; do cp "$WORK/pairs-seed-$seed/pairs_stats.json" "$OUT/pairs_stats-seed-$seed.json"; done
"${LW_COMPARE:-lw-compare}" "$OUT"
