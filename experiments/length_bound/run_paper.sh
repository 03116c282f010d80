#!/usr/bin/env bash
# The paper's length-bound ablation at full scale (8 GPUs per run, ZeRO-3 CPU offload):
# GLM-4-9B on general SFT data capped at 500/1000/2000 words, the uncapped general-only row
# (-LongWriter-6k) and the LongWriter recipe (LongWriter-6k + general), each probed on
# LongWrite-Ruler and LongBench-Write; then the comparison. Extra arguments go to every lw call
# (launcher=slurm to submit to a cluster, model=llama3_1_8b, data.mix.*.path=... for local copies).
set -euo pipefail
cd "$(dirname "$0")/../.."
make -s setup
sweep=${SWEEP_DIR:-multirun/length_bound}
.venv/bin/lw -m experiment=length_bound data.max_output_words=500,1000,2000,null hydra.sweep.dir="$sweep/caps" "$@"
.venv/bin/lw -m experiment=longwriter_glm4_9b eval=longwriter hydra.sweep.dir="$sweep/longwriter6k" "$@"
.venv/bin/lw-compare "$sweep" --benchmark longwrite_ruler
