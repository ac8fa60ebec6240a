"""Benchmark the train step: CLM, SLM with an online reference and SLM on precomputed scores, in one run.

    python -m rho_jax.bench [--model configs/models/tiny-cpu.yaml] [--reference SAME]
                            [--batch 8] [--seq-len 256] [--steps 10] [--dtype float32]

All steps run on the same model, batch and mesh; their timed steps are interleaved round by round
so machine noise hits all alike. The precomputed variant reads the reference's per-token loss and
entropy with the batch (`reference: {init: precomputed}`), so it should cost what CLM costs; the
online one should cost about the FLOP-count ratio (6N + 2N_ref) / 6N. The reference forward of
`python -m rho_jax.score` is timed alongside (scoring throughput). Reports step time (median),
tokens/s, time relative to CLM, and memory: the compiled program's arguments + temporaries per
device (XLA's memory analysis), plus the allocator's peak where the platform reports it (GPU/TPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from rho_jax.batch import batch_from_tokens
from rho_jax.models import Llama, ModelConfig, ModelOptions
from rho_jax.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from rho_jax.score import build_reference_scorer
from rho_jax.sharding import MeshConfig, batch_sharding, make_mesh
from rho_jax.step import SLMConfig, build_train_step, init_train_state, jit_train_step, place_reference

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "configs" / "models" / "tiny-cpu.yaml"


def _memory_bytes(jitted, *args) -> int | None:
    memory = jitted.lower(*args).compile().memory_analysis()
    return memory.argument_size_in_bytes + memory.temp_size_in_bytes if memory is not None else None


def build_variant(name, model, reference, slm_cfg, mesh, batch, precomputed=False):
    """A timed train step: its jitted function, state, ref params, batch and compiled memory bytes."""
    opt_cfg = OptimizerConfig(learning_rate=1e-4, total_steps=1000)
    optimizer = make_optimizer(opt_cfg, nnx.state(model, nnx.Param))
    state, shardings = init_train_state(model, optimizer, mesh)
    ref_params, ref_shardings = place_reference(reference, mesh) if reference is not None else (None, None)
    step = build_train_step(nnx.graphdef(model), nnx.graphdef(reference) if reference is not None else None,
                            slm_cfg, optimizer, learning_rate_schedule(opt_cfg), precomputed_reference=precomputed)
    jitted = jit_train_step(step, shardings, ref_shardings, mesh, tuple(batch))
    def run_step(v):
        v["state"], metrics = jitted(v["state"], batch, ref_params)
        return metrics

    return {"name": name, "run": run_step, "state": state, "memory": _memory_bytes(jitted, state, batch, ref_params),
            "times": []}


def build_scoring(reference, mesh, batch, chunk):
    """The reference forward of `python -m rho_jax.score` on the same batch, timed like a variant."""
    ref_params, ref_shardings = place_reference(reference, mesh)
    forward = build_reference_scorer(nnx.graphdef(reference), ref_shardings, mesh, chunk)
    inputs = {k: batch[k] for k in ("input_ids", "targets", "segment_ids")}
    return {"name": "reference scoring (rho_jax.score)", "run": lambda v: forward(ref_params, inputs),
            "memory": _memory_bytes(forward, ref_params, inputs), "times": []}


def peak_allocator_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return stats.get("peak_bytes_in_use") if stats else None


def run(args: argparse.Namespace) -> list[dict]:
    options = ModelOptions(dtype=args.dtype, scan_layers=True, remat=args.remat)
    cfg = ModelConfig.from_file(args.model)
    ref_cfg = ModelConfig.from_file(args.reference or args.model)
    model = Llama(cfg, options, rngs=nnx.Rngs(0))
    reference = Llama(ref_cfg, options, rngs=nnx.Rngs(1))
    mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (args.batch, args.seq_len + 1))
    host_batch = batch_from_tokens(tokens, np.ones_like(tokens))
    scores = {"ref_loss": rng.uniform(0, 8, tokens[:, 1:].shape).astype(np.float32),
              "ref_entropy": rng.uniform(0, 8, tokens[:, 1:].shape).astype(np.float32)}
    batch = jax.device_put(host_batch, batch_sharding(mesh))  # once: the timed steps exclude the transfer
    scored_batch = batch | jax.device_put(scores, batch_sharding(mesh))
    slm_cfg = SLMConfig(ratio=args.ratio, ce_chunk_size=args.chunk)
    variants = [
        build_variant("CLM", model, None, SLMConfig(ratio=1.0, ce_chunk_size=args.chunk), mesh, batch),
        build_variant("SLM (online reference)", model, reference, slm_cfg, mesh, batch),
        build_variant("SLM (precomputed scores)", model, None, slm_cfg, mesh, scored_batch, precomputed=True),
        build_scoring(reference, mesh, batch, args.chunk),
    ]
    for round_index in range(args.warmup + args.steps):
        for v in variants:
            start = time.perf_counter()
            jax.block_until_ready(v["run"](v))
            if round_index >= args.warmup:
                v["times"].append(time.perf_counter() - start)
    tokens = args.batch * args.seq_len
    base = statistics.median(variants[0]["times"])
    flops_ratio = (6 * cfg.num_parameters() + 2 * ref_cfg.num_parameters()) / (6 * cfg.num_parameters())
    rows = []
    for v in variants:
        t = statistics.median(v["times"])
        rows.append({"variant": v["name"], "step_s": t, "tokens_per_s": tokens / t, "ratio": t / base,
                     "memory_bytes": v["memory"]})
    rows.append({"flops_ratio": flops_ratio, "peak_allocator_bytes": peak_allocator_bytes()})
    return rows


def format_table(rows: list[dict], args: argparse.Namespace) -> str:
    *variants, summary = rows
    device = jax.devices()[0]
    lines = [
        f"device: {device.device_kind} x{jax.device_count()} | model {Path(args.model).name} "
        f"| batch {args.batch}x{args.seq_len} | dtype {args.dtype} | {args.steps} timed steps",
        "",
        "| variant | step time (median) | tokens/s | time / CLM | memory (args+temps) |",
        "|---|---|---|---|---|",
    ]
    for r in variants:
        memory = f"{r['memory_bytes'] / 2**20:.1f} MiB" if r["memory_bytes"] is not None else "n/a"
        lines.append(f"| {r['variant']} | {r['step_s'] * 1e3:.1f} ms | {r['tokens_per_s']:,.0f} | {r['ratio']:.3f} | {memory} |")
    lines.append("")
    lines.append(f"FLOP-count ratio (6N + 2N_ref) / 6N = {summary['flops_ratio']:.3f}")
    if summary["peak_allocator_bytes"] is not None:  # one process ran both variants: an upper bound for each
        lines.append(f"allocator peak over the whole run: {summary['peak_allocator_bytes'] / 2**30:.2f} GiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rho_jax.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model config (YAML or config.json)")
    parser.add_argument("--reference", type=Path, default=None, help="reference config (default: same as --model)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (compilation)")
    parser.add_argument("--ratio", type=float, default=0.6)
    parser.add_argument("--chunk", type=int, default=128, help="cross-entropy chunk (sequence positions)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--remat", default="none")
    args = parser.parse_args(argv)
    print(format_table(run(args), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
