#!/usr/bin/env bash
# Run HERE (where PyPI is reachable), before experiments/gpu_check.sh runs on a device machine:
# downloads into .whl/ (git-ignored; pass carry=[".whl"] to the device run) what that machine's
# image (python 3.12, torch 2.11, transformers 5.17, accelerate 1.15, huggingface_hub 1.33,
# tokenizers 0.23.2, numpy, pyarrow, pandas, psutil, pyyaml, no network) lacks for lw's training
# path: transformers >= 5.24 (lw's floor), TRL, datasets (+ dill, multiprocess), Hydra and
# OmegaConf (+ antlr4, a source package), DeepSpeed (source only on PyPI; builds in seconds
# without its ops) and its pydantic/hjson needs. Pinned to constraints.txt's versions.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps -d .whl --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  transformers==5.24.0 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
  hydra-core==1.3.8 omegaconf==2.3.1 \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5 \
  typing_extensions==4.16.0 hjson==3.1.0
"$PY" -m pip download -q --no-deps -d .whl --no-binary=:all: deepspeed==0.19.8 antlr4-python3-runtime==4.9.3
ls -la .whl
du -sh .whl
