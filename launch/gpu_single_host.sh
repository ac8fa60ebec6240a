#!/usr/bin/env bash
# One machine, N GPUs: one training process that drives all of them (the mesh spans every local GPU).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/common.sh
source "$HERE/common.sh"
# shellcheck source=launch/gpu_env.sh
source "$HERE/gpu_env.sh"

usage() {
  cat <<USAGE
Usage: launch/gpu_single_host.sh --config FILE [options] [-- key.sub=value ...]

Train on the GPUs of this machine with one process (python -m rho_jax.train).

Options:
  --config FILE     run configuration (required)
  --gpus N          use the first N GPUs (default: all; sets CUDA_VISIBLE_DEVICES)
  --python PATH     Python with rho_jax installed with the cuda extra (default: .venv/bin/python)
  --mem-fraction F  share of GPU memory JAX may take, 0 < F <= 1 (default 0.9)
  --xla-flags "..." extra XLA flags, appended to the defaults of launch/gpu_env.sh
  --print-xla-flags print the default XLA flags, one per line, and exit
  --dry-run         print the environment and command, run nothing
  -h, --help        this help
Everything after -- is passed to the trainer as config overrides.

Example:
  launch/gpu_single_host.sh --config configs/mistral7b-slm.yaml -- train.total_tokens=1000000000
USAGE
}

config="" gpus="" python=".venv/bin/python" mem_fraction="0.9" extra_flags=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --config) need_value "$@"; config=$2; shift 2 ;;
    --gpus) need_value "$@"; need_positive_int --gpus "$2"; gpus=$2; shift 2 ;;
    --python) need_value "$@"; python=$2; shift 2 ;;
    --mem-fraction) need_value "$@"; mem_fraction=$2; shift 2 ;;
    --xla-flags) need_value "$@"; extra_flags=$2; shift 2 ;;
    --print-xla-flags) printf '%s\n' "${GPU_XLA_FLAGS[@]}"; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown argument '$1' (config overrides go after --; see --help)." ;;
  esac
done
need_config "$config"
need_overrides "$@"
need_mem_fraction "$mem_fraction"

if [[ $DRY_RUN == 0 ]]; then
  [[ -x $python ]] || command -v "$python" >/dev/null || die "--python $python: not found (install: pip install -e '.[cuda]')."
  available=$(nvidia-smi --list-gpus 2>/dev/null | wc -l) || available=0
  [[ $available -gt 0 ]] || die "no NVIDIA GPU found (nvidia-smi --list-gpus lists none)."
  [[ -z $gpus || $gpus -le $available ]] || die "--gpus $gpus, but this machine has $available GPUs."
fi

env_vars=("${GPU_ENV[@]}" "XLA_FLAGS=$(gpu_xla_flags "$extra_flags")" "XLA_PYTHON_CLIENT_MEM_FRACTION=$mem_fraction")
if [[ -n $gpus ]]; then
  env_vars+=("CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((gpus - 1)))")
fi
run env "${env_vars[@]}" "$python" -m rho_jax.train --config "$config" "$@"
