#!/usr/bin/env bash
# The GRPO miniature on 2 CPU cores, 2 seeds: the length-bound miniature's cap-50 SFT model -> GRPO
# with the length reward on toy requests of 10-200 words -> the toy ruler, then one lw-compare
# table and figure of the cap-50 and cap-100 SFT runs and GRPO. Results in experiments/grpo/results/cpu/.
#   experiments/grpo/run_cpu.sh [extra overrides for the GRPO runs]   (LW=lw, OUT=..., WORK=... to change)
set -euo pipefail
cd "$(dirname "$0")/../.."
LW="${LW:-lw}"
OUT="${OUT:-experiments/grpo/results/cpu}"
WORK="${WORK:-runs/grpo_mini}"
# One thread per process: the tiny model gains nothing from a second one, and on a shared machine two
# threads spin-wait for each other (README: a GRPO step took 6-36 s with two threads, 0.5-3 s with one).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT" "$WORK"

# The SFT runs (not timed with the miniature: the length-bound sweep makes the same runs).
for cap in 50 100; do
  for seed in 0 1; do
    [ -f "$WORK/sft$cap-seed-$seed/results.csv" ] || \
      $LW experiment=length_bound_mini data.max_output_words=$cap seed=$seed logger.group=grpo_mini \
          hydra.run.dir="$WORK/sft$cap-seed-$seed"
  done
done

start=$SECONDS
# A run directory resumes what it holds (a checkpoint, finished predictions): start the GRPO runs afresh.
rm -rf "$WORK"/grpo-seed-0 "$WORK"/grpo-seed-1
for seed in 0 1; do
  $LW experiment=grpo_mini seed=$seed trainer.init_from="$WORK/sft50-seed-$seed/model" logger.group=grpo_mini \
      hydra.run.dir="$WORK/grpo-seed-$seed" "$@"
done
# The CPU is part of the result: the same code and seeds train other weights on another CPU (README).
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
echo "GRPO and probes for 2 seeds: $((SECONDS - start)) s on $(nproc --all) cores ($cpu), $OMP_NUM_THREADS thread(s) per process, $(date -u +%F)" | tee "$OUT/time.txt"

rm -rf "$OUT"/sft* "$OUT"/grpo-seed-*
for run in sft50-seed-0 sft50-seed-1 sft100-seed-0 sft100-seed-1 grpo-seed-0 grpo-seed-1; do
  mkdir -p "$OUT/$run" && cp "$WORK/$run/results.csv" "$WORK/$run/metrics.json" "$OUT/$run/"
done
for seed in 0 1; do
  cp "$WORK/grpo-seed-$seed/reward_curve.png" "$OUT/reward_curve-seed-$seed.png"
  cp "$WORK/grpo-seed-$seed/train_log.json" "$OUT/train_log-seed-$seed.json"
done
"${LW_COMPARE:-lw-compare}" "$OUT"
