#!/usr/bin/env bash
# Run HERE (where PyPI is reachable), before experiments/gpu_check.sh runs on a device machine:
# downloads into .whl/ (git-ignored) the packages that machine's image lacks: DeepSpeed (source
# only on PyPI) and its pydantic/hjson needs, for its Python 3.12. torch, transformers, accelerate,
# numpy, psutil, ninja, msgpack, py-cpuinfo, einops and pyyaml are in the image already.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
mkdir -p .whl
"$PY" -m pip download -q --no-deps -d .whl --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5 \
  typing_extensions==4.16.0 hjson==3.1.0
"$PY" -m pip download -q --no-deps -d .whl --no-binary=:all: deepspeed==0.19.8
ls -la .whl
