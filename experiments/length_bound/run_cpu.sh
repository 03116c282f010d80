#!/usr/bin/env bash
# The CPU miniature of the length-bound ablation (caps 25/50/100 words x seeds 0/1), then its
# comparison table and figure, copied into experiments/length_bound/results/cpu/.
#   experiments/length_bound/run_cpu.sh [extra overrides]
set -euo pipefail
cd "$(dirname "$0")/../.."
# One thread per process: the tiny model gains nothing from a second one, and on a shared machine two
# threads spin-wait for each other (a base step took 1-16 s with two threads under load, 0.3 s with one).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
make -s setup
sweep=${SWEEP_DIR:-multirun/length_bound_mini}
start=$(date +%s)
.venv/bin/lw -m experiment=length_bound_mini hydra.sweep.dir="$sweep" "$@"
seconds=$(( $(date +%s) - start ))
echo "sweep took $seconds s"
.venv/bin/lw-compare "$sweep"
out=experiments/length_bound/results/cpu
rm -rf "$out" && mkdir -p "$out"
for run in "$sweep"/*/; do
  name=$(basename "$run")
  mkdir -p "$out/$name" && cp "$run/results.csv" "$run/metrics.json" "$out/$name/"
done
cp "$sweep/comparison.md" "$sweep/comparison.png" "$out/"
echo "$seconds s for the sweep on $(nproc --all) cores, $OMP_NUM_THREADS thread(s) per process, $(date -u +%F)" > "$out/sweep_time.txt"
echo "results in $out"
