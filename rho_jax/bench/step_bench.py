"""Benchmark the train step against the hardware and against the PyTorch way of doing SLM.

    python -m rho_jax.bench [--model configs/models/tiny-cpu.yaml] [--reference SAME]
                            [--batch 8] [--seq-len 256] [--steps 10] [--dtype float32] [--attention auto]
                            [--peak-tflops X] [--no-peer] [--selection-tokens N] [--profile DIR]

In one process, on the same model config, batch and mesh, interleaved round by round so machine
noise hits all alike:
    CLM                        the plain causal-LM step
    SLM (online reference)     reference forward + selection inside the step
    SLM (precomputed scores)   the reference's losses come with the batch (`reference: precomputed`)
    reference scoring          the forward of `python -m rho_jax.score` (scoring throughput)
    selection (top-k)          the SLM selection alone on the batch's scores (and, with
                               --selection-tokens N, on a global batch of N tokens)
    PyTorch peer               `rho_jax.bench.peer`: transformers + torch.topk, same model and batch
Reports step time (median), tokens/s, time relative to CLM, model FLOPs utilization (`rho_jax.bench.flops`)
against the device's peak (the datasheet figure of common accelerators, --peak-tflops, or else the
measured throughput of a large matmul in the benchmark's dtype, e.g. on CPUs), memory (the
compiled program's arguments + temporaries per device, and the allocator's peak where the platform
reports it), the selection's share of the SLM step, and rho_jax SLM time / PyTorch peer time; with
--profile DIR, a profiler trace of the SLM step and its time per XLA operation (`rho_jax.bench.op_profile`).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from rho_jax import slm
from rho_jax.batch import batch_from_tokens
from rho_jax.bench import flops, op_profile
from rho_jax.bench.peer import TorchSLMStep
from rho_jax.models import Llama, ModelConfig, ModelOptions
from rho_jax.models.attention import ATTENTION_IMPLEMENTATIONS
from rho_jax.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from rho_jax.sharding import MeshConfig, batch_sharding, make_mesh
from rho_jax.slm import SLMConfig
from rho_jax.step import build_train_step, init_train_state, jit_train_step, place_reference
from rho_jax.training.scoring import build_reference_scorer

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "configs" / "models" / "tiny-cpu.yaml"


def _memory_bytes(jitted: Any, *args: Any) -> int | None:
    memory = jitted.lower(*args).compile().memory_analysis()
    return memory.argument_size_in_bytes + memory.temp_size_in_bytes if memory is not None else None


def _variant(name: str, run: Callable[[], Any], memory: int | None, flops_per_step: float | None,
             hlo: Callable[[], str] | None = None) -> dict[str, Any]:
    """A timed program: `run()` runs one step, `hlo()` gives its compiled HLO text (for --profile)."""
    return {"name": name, "run": run, "memory": memory, "flops": flops_per_step, "times": [], "hlo": hlo}


def train_variant(name, model, reference, slm_cfg, mesh, batch, flops_per_step, precomputed=False) -> dict[str, Any]:
    """A train step (its state is carried from call to call, the buffers donated)."""
    opt_cfg = OptimizerConfig(learning_rate=1e-4, total_steps=1000)
    optimizer = make_optimizer(opt_cfg, nnx.state(model, nnx.Param))
    state, shardings = init_train_state(model, optimizer, mesh)
    ref_params, ref_shardings = place_reference(reference, mesh) if reference is not None else (None, None)
    step = build_train_step(nnx.graphdef(model), nnx.graphdef(reference) if reference is not None else None,
                            slm_cfg, optimizer, learning_rate_schedule(opt_cfg), precomputed_reference=precomputed)
    jitted = jit_train_step(step, shardings, ref_shardings, mesh, tuple(batch))
    memory = _memory_bytes(jitted, state, batch, ref_params)
    carried = {"state": state}

    def run() -> Any:
        carried["state"], metrics = jitted(carried["state"], batch, ref_params)
        return metrics

    def hlo() -> str:
        return jitted.lower(carried["state"], batch, ref_params).compile().as_text()

    return _variant(name, run, memory, flops_per_step, hlo)


def scoring_variant(reference, mesh, batch, chunk, flops_per_step) -> dict[str, Any]:
    """The reference forward of `python -m rho_jax.score` on the same batch."""
    ref_params, _ = place_reference(reference, mesh)
    forward = build_reference_scorer(nnx.graphdef(reference), mesh, chunk)
    inputs = {k: batch[k] for k in ("input_ids", "targets", "segment_ids")}
    return _variant("reference scoring (rho_jax.score)", lambda: forward(ref_params, inputs),
                    _memory_bytes(forward, ref_params, inputs), flops_per_step)


def selection_variant(loss, ref_loss, valid, ratio) -> dict[str, Any]:
    """The SLM selection alone: excess scores and the global top-k over the whole batch."""
    select = jax.jit(lambda loss, ref_loss, valid: slm.select_by_score("excess", ratio, valid, loss=loss, ref_loss=ref_loss))
    args = (loss, ref_loss, valid)
    return _variant("selection (top-k over the batch)", lambda: select(*args), _memory_bytes(select, *args), None)


def _warm_timings(run: Callable[[], Any], repeats: int) -> list[float]:
    """Seconds of `repeats` calls of `run` (each waited for), after one untimed call (compilation)."""
    jax.block_until_ready(run())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return times


def large_selection_seconds(n_tokens: int, seq_len: int, ratio: float, mesh, repeats: int) -> float:
    """Median time of the selection alone over a global batch of `n_tokens` (rows of `seq_len`,
    sharded like a training batch, random scores)."""
    rng = np.random.default_rng(1)
    shape = (max(1, n_tokens // seq_len), seq_len)
    arrays = jax.device_put((rng.uniform(0, 8, shape).astype(np.float32), rng.uniform(0, 8, shape).astype(np.float32),
                             np.ones(shape, bool)), batch_sharding(mesh))
    return statistics.median(_warm_timings(selection_variant(*arrays, ratio)["run"], repeats))


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def measured_matmul_tflops(dtype: str, size: int = 2048, repeats: int = 5) -> float:
    """TFLOP/s of a jitted `size`^3 matmul in `dtype` on the default device (best of `repeats`):
    the practical peak of a device without a datasheet figure, e.g. a CPU."""
    a = jax.numpy.ones((size, size), dtype)
    matmul = jax.jit(lambda x: x @ x)
    return 2 * size**3 / min(_warm_timings(lambda: matmul(a), repeats)) / 1e12


def peak_allocator_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return stats.get("peak_bytes_in_use") if stats else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    options = ModelOptions(dtype=args.dtype, scan_layers=True, remat=args.remat, attention=args.attention)
    cfg = ModelConfig.from_file(args.model)
    ref_cfg = ModelConfig.from_file(args.reference or args.model)
    model = Llama(cfg, options, rngs=nnx.Rngs(0))
    reference = Llama(ref_cfg, options, rngs=nnx.Rngs(1))
    mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (args.batch, args.seq_len + 1))
    host_batch = batch_from_tokens(tokens, np.ones_like(tokens))
    host_scores = {"ref_loss": rng.uniform(0, 8, tokens[:, 1:].shape).astype(np.float32),
                   "ref_entropy": rng.uniform(0, 8, tokens[:, 1:].shape).astype(np.float32)}
    batch = jax.device_put(host_batch, batch_sharding(mesh))  # once: the timed steps exclude the transfer
    scores = jax.device_put(host_scores, batch_sharding(mesh))
    n_tokens = args.batch * args.seq_len
    train_flops = n_tokens * flops.train_flops_per_token(cfg, args.seq_len)
    ref_flops = n_tokens * flops.reference_flops_per_token(ref_cfg, args.seq_len)
    slm_cfg = SLMConfig(ratio=args.ratio, ce_chunk_size=args.chunk)
    variants = [
        train_variant("CLM", model, None, SLMConfig(ratio=1.0, ce_chunk_size=args.chunk), mesh, batch, train_flops),
        train_variant("SLM (online reference)", model, reference, slm_cfg, mesh, batch, train_flops + ref_flops),
        train_variant("SLM (precomputed scores)", model, None, slm_cfg, mesh, batch | scores, train_flops,
                      precomputed=True),
        scoring_variant(reference, mesh, batch, args.chunk, ref_flops),
        selection_variant(scores["ref_entropy"], scores["ref_loss"], batch["valid"], args.ratio),  # any two float arrays
    ]
    if args.peer:
        peer = TorchSLMStep(cfg, ref_cfg, host_batch, args.ratio, args.dtype)
        variants.append(_variant("PyTorch peer SLM (transformers, torch.topk)", peer, None, train_flops + ref_flops))
    for round_index in range(args.warmup + args.steps):
        for v in variants:
            start = time.perf_counter()
            jax.block_until_ready(v["run"]())
            if round_index >= args.warmup:
                v["times"].append(time.perf_counter() - start)
    peak, peak_source = args.peak_tflops, "given"
    if peak is None:
        peak, peak_source = flops.peak_tflops(jax.devices()[0].device_kind), "datasheet, dense bf16"
    if peak is None:
        peak, peak_source = measured_matmul_tflops(args.dtype), f"measured {args.dtype} 2048^3 matmul"
    base = statistics.median(variants[0]["times"])
    rows = []
    for v in variants:
        t = statistics.median(v["times"])
        mfu = v["flops"] / t / (peak * 1e12 * jax.device_count()) if v["flops"] else None
        rows.append({"variant": v["name"], "step_s": t, "tokens_per_s": n_tokens / t, "ratio": t / base,
                     "mfu": mfu, "memory_bytes": v["memory"]})
    by_name = {r["variant"]: r for r in rows}
    online = by_name["SLM (online reference)"]["step_s"]
    profile = None
    if args.profile is not None:
        slm_online = variants[1]
        ops = op_profile.profile_ops(slm_online["run"], slm_online["hlo"](), args.steps, args.profile)
        profile = op_profile.format_profile(ops, online)
    large_selection = None
    if args.selection_tokens:
        seconds = large_selection_seconds(args.selection_tokens, args.seq_len, args.ratio, mesh, args.steps)
        # the SLM step's time for that many tokens at the measured tokens/s (steps scale linearly in tokens)
        large_selection = {"seconds": seconds, "share": seconds / (args.selection_tokens * online / n_tokens)}
    peer_row = next((r for r in rows if r["variant"].startswith("PyTorch")), None)
    return {"rows": rows, "peak_tflops": peak, "peak_source": peak_source, "peak_allocator_bytes": peak_allocator_bytes(),
            "flops_ratio": (train_flops + ref_flops) / train_flops, "large_selection": large_selection,
            "selection_share": by_name["selection (top-k over the batch)"]["step_s"] / online,
            "memory_ratio": _ratio(by_name["SLM (online reference)"]["memory_bytes"], by_name["CLM"]["memory_bytes"]),
            "peer_ratio": online / peer_row["step_s"] if peer_row else None, "profile": profile}


def format_table(result: dict[str, Any], args: argparse.Namespace) -> str:
    device = jax.devices()[0]
    peak = result["peak_tflops"]
    lines = [
        f"device: {device.device_kind} x{jax.device_count()} | model {Path(args.model).name} | attention {args.attention} "
        f"| batch {args.batch}x{args.seq_len} | dtype {args.dtype} | {args.steps} timed steps "
        f"| peak {peak:.3g} TFLOP/s per device ({result['peak_source']})",
        "",
        "| variant | step time (median) | tokens/s | time / CLM | MFU | memory (args+temps) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        memory = f"{r['memory_bytes'] / 2**20:.1f} MiB" if r["memory_bytes"] is not None else "n/a"
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        lines.append(f"| {r['variant']} | {r['step_s'] * 1e3:.1f} ms | {r['tokens_per_s']:,.0f} | {r['ratio']:.3f} | "
                     f"{mfu} | {memory} |")
    lines += ["", f"FLOP-count ratio (6N + 2N_ref) / 6N, attention included = {result['flops_ratio']:.3f}",
              f"selection alone / SLM (online) step = {result['selection_share']:.2%}"]
    if result["large_selection"] is not None:
        large = result["large_selection"]
        lines.append(f"selection alone over {args.selection_tokens:,} tokens = {large['seconds'] * 1e3:.1f} ms, "
                     f"{large['share']:.3%} of an SLM (online) step of that many tokens at the measured tokens/s")
    if result["memory_ratio"] is not None:
        lines.append(f"memory SLM (online) / CLM = {result['memory_ratio']:.3f}")
    if result["peer_ratio"] is not None:
        lines.append(f"rho_jax SLM (online) step / PyTorch peer step = {result['peer_ratio']:.3f} "
                     f"({1 / result['peer_ratio']:.2f}x faster)")
    if result["peak_allocator_bytes"] is not None:  # one process ran every variant: an upper bound for each
        lines.append(f"allocator peak over the whole run: {result['peak_allocator_bytes'] / 2**30:.2f} GiB")
    if result["profile"] is not None:
        lines += ["", f"profile of the SLM (online) step (trace in {args.profile}):", result["profile"]]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rho_jax.bench", description=__doc__.split("\n\n")[0],
        epilog="Other suites: python -m rho_jax.bench generate|decontaminate|embed --help (see rho_jax.bench.cli).")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model config (YAML or config.json)")
    parser.add_argument("--reference", type=Path, default=None, help="reference config (default: same as --model)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (compilation)")
    parser.add_argument("--ratio", type=float, default=0.6)
    parser.add_argument("--chunk", type=int, default=SLMConfig.ce_chunk_size,
                        help="cross-entropy chunk in sequence positions (default: the trainer's)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--remat", default="none")
    parser.add_argument("--attention", default="auto", choices=ATTENTION_IMPLEMENTATIONS)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak TFLOP/s per device for MFU (default: the datasheet bf16 peak of "
                             "H100/H200/A100/TPU v4-v6, else a measured large matmul)")
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction,
                        default=importlib.util.find_spec("torch") is not None,
                        help="also time the PyTorch peer (default: if torch is installed)")
    parser.add_argument("--selection-tokens", type=int, default=None, metavar="N",
                        help="also time the selection alone over a global batch of N tokens (e.g. 1048576)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="also trace the SLM (online) step into DIR and print where its time goes")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(format_table(run(args), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
