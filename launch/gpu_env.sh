# shellcheck shell=bash
# The environment that matters for sharded JAX training on NVIDIA GPUs, shared by
# gpu_single_host.sh and slurm.sbatch (sourced, not run).

# XLA flags: overlap collectives with compute (latency-hiding scheduler, pipelined and
# double-buffered collectives in the layer scan) and combine the many small FSDP all-gathers and
# reduce-scatters into large ones. The test suite checks that the installed XLA accepts them.
GPU_XLA_FLAGS=(
  --xla_gpu_enable_latency_hiding_scheduler=true
  --xla_gpu_enable_pipelined_all_gather=true
  --xla_gpu_enable_pipelined_reduce_scatter=true
  --xla_gpu_enable_pipelined_all_reduce=true
  --xla_gpu_enable_while_loop_double_buffering=true
  --xla_gpu_all_gather_combine_threshold_bytes=134217728
  --xla_gpu_reduce_scatter_combine_threshold_bytes=134217728
  --xla_gpu_all_reduce_combine_threshold_bytes=134217728
)
export GPU_XLA_FLAGS

# One hardware queue per GPU, so collectives overlapped by the scheduler keep XLA's order.
GPU_ENV=(CUDA_DEVICE_MAX_CONNECTIONS=1)
export GPU_ENV

# `gpu_xla_flags EXTRA`: the default flags followed by EXTRA, as one XLA_FLAGS value.
gpu_xla_flags() {
  echo "${GPU_XLA_FLAGS[*]}${1:+ $1}"
}

need_mem_fraction() {
  [[ $1 =~ ^(0?\.[0-9]*[1-9][0-9]*|1(\.0*)?)$ ]] || die "--mem-fraction must be in (0, 1], got '$1'."
}
