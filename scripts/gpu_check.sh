#!/usr/bin/env bash
# The prepared GPU check in one command, for a machine with no network (the device machine):
#
#   bash scripts/gpu_check.sh [OUT_DIR] [python -m rho_jax.bench gpu flags, e.g. --parts step,remat]
#
# OUT_DIR defaults to $OUT (the device machine's returned folder), else runs/gpu_check. Installs the
# wheels carried in .whl/ (scripts/gpu_wheels.sh) into /tmp/site, runs rho_jax from this checkout
# (PYTHONPATH, no install), prints nvidia-smi and jax's devices, then `python -m rho_jax.bench gpu`
# under a hard limit of GPU_CHECK_TIMEOUT_S seconds (default 480; the check's own parts take at most
# 450 s). Its output also goes to OUT_DIR/gpu_check.log; report.json and report.md grow part by part.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

out=${1:-${OUT:-runs/gpu_check}}
shift $(( $# > 0 ? 1 : 0 ))
PY=${PYTHON:-python3}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1

path=$PWD
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  path=$PWD:/tmp/site  # the checkout first: a carried wheel (latex2sympy2) ships a top-level `tests` package
fi
export PYTHONPATH=$path${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

nvidia-smi || echo "nvidia-smi: not available"
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
timeout --kill-after=10 "${GPU_CHECK_TIMEOUT_S:-480}" "$PY" -m rho_jax.bench gpu --output "$out" "$@"
status=$?
[ "$status" -eq 124 ] && echo "gpu_check.sh: stopped at its limit of ${GPU_CHECK_TIMEOUT_S:-480} s; the report holds the parts that ended"
exit "$status"
