#!/usr/bin/env bash
# Download into .whl/ the wheels of rho_jax's dependencies that the GPU machine's image lacks
# (/work/.library/device/KINDS.md lists what it has: jax, flax, optax, orbax, transformers, torch,
# scikit-learn, sympy, absl-py, etils, cloudpickle, protobuf, fsspec, huggingface-hub, humanize, ...).
# It has no network: scripts/gpu_check.sh installs .whl/*.whl into /tmp/site there.
#
#   bash scripts/gpu_wheels.sh        (here, with network; .whl/ is git-ignored and travels with carry [".whl"])
#
# Versions are the ones this checkout's .venv runs (pyproject's pins and lower bounds), for CPython 3.12
# on x86-64 Linux, dependencies named one by one (--no-deps): pyproject's missing direct dependencies
# and their own dependencies that the image lacks. A package published only as a source archive
# (word2number) is built into a pure-Python wheel here.
set -euo pipefail
cd "$(dirname "$0")/.."

PIP=${PIP:-.venv/bin/pip}
DEST=.whl
WHEELS=(
  grain==0.2.18 array-record==0.8.6 portpicker==1.6.0  # grain (data loading) and its missing dependencies
  tensorboardX==2.6.5
  datatrove==0.10.1 loguru==0.7.3 multiprocess==0.70.19 dill==0.4.1  # curation executors
  orjson==3.13.0
  skops==0.16.0 prettytable==3.18.0 wcwidth==0.9.4  # the quality classifier's file format
  pebble==5.2.3
  latex2sympy2-llmmath==1.9.1 antlr4-python3-runtime==4.11.1  # math grading
)
SOURCE_ONLY=(word2number==1.1)

rm -rf "$DEST"
mkdir -p "$DEST"
platforms=()
for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${WHEELS[@]}"
"$PIP" wheel -q --no-deps --no-build-isolation -w "$DEST" "${SOURCE_ONLY[@]}"
ls "$DEST"
du -sh "$DEST"
