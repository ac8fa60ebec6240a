"""Benchmark greedy generation: rho_jax's `Generator` against `transformers` `generate` on the same weights.

    python -m rho_jax.bench generate [--model configs/models/tiny-cpu.yaml] [--batch 8] [--prompt-len 128]
        [--new-tokens 128] [--rounds 3] [--dtype float32] [--no-peer] [--bandwidth-gbs X]
        [--gsm8k-prompts 1319] [--refill-prompts 32]

--model: a model config (random weights) or anything `load_generator` loads. Both engines decode
the same random prompts (batch x prompt-len tokens) greedily for exactly new-tokens tokens
(EOS ignored), transformers with its static cache, in one process, interleaved round by round so
machine noise hits both alike. Per engine (medians over the rounds): prefill time = a run that
generates 1 token; decode tokens/s = batch x (new-tokens - 1) / (full run - that run). Ratios are
rho_jax over transformers from the same rounds; the report also says whether both produced the
same tokens.

On accelerators the decode rate is compared with the memory-bandwidth roofline
    tokens/s <= B * bandwidth / (weight bytes + B * context * kv bytes per token),
kv bytes per token = 2 * layers * kv_heads * head_dim * bytes, context = prompt-len + new-tokens / 2
(the mean), bandwidth from the datasheet table below or --bandwidth-gbs.

Also reported: the programs a GSM8K-like run compiles (--gsm8k-prompts prompts of 750-1000 tokens,
the length of 8-shot GSM8K prompts with the TinyLlama tokenizer; simulated lengths, one new token
each, on a one-layer model: compilation does not depend on the weights), and refilling finished
slots against static batches (--refill-prompts prompts whose completions end at varying lengths).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rho_jax.bench.arguments import below_minimum
from rho_jax.generation import Generator, SamplingParams
from rho_jax.generation.buckets import default_bucket
from rho_jax.generation.loading import generation_source, generation_tokenizer
from rho_jax.models import Llama, ModelConfig, ModelOptions, save_hf
from rho_jax.sharding import MeshConfig, make_mesh
from rho_jax.training.model_sources import load_model

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "configs" / "models" / "tiny-cpu.yaml"
# Datasheet memory bandwidth in GB/s per device, by a substring of `jax.Device.device_kind`.
BANDWIDTH_GBS = {
    "H200": 4800.0,
    "H100": 3350.0,
    "A100": 2039.0,
    "L4": 300.0,
    "A10": 600.0,
    "TPU v6": 1640.0,
    "TPU v5p": 2765.0,
    "TPU v5 lite": 819.0,
    "TPU v5e": 819.0,
    "TPU v4": 1200.0,
}
GSM8K_PROMPT_TOKENS = (750, 1000)
_BENCH_TEXT = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
               "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { }"]


def bandwidth_gbs(device_kind: str) -> float | None:
    """The datasheet memory bandwidth of a known accelerator, None for others (e.g. CPUs)."""
    return next((bw for name, bw in BANDWIDTH_GBS.items() if name in device_kind), None)


def roofline_tokens_per_s(cfg: ModelConfig, batch: int, context: float, weight_bytes_per_param: int,
                          kv_bytes_per_value: int, bandwidth: float) -> float:
    """B * bandwidth / (weight bytes + B * context * kv bytes per token) with bandwidth in GB/s."""
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * kv_bytes_per_value
    return batch * bandwidth * 1e9 / (cfg.num_parameters() * weight_bytes_per_param + batch * context * kv_per_token)


def bench_tokenizer(directory: Path, vocab_size: int):
    """A small byte-level BPE tokenizer for models that come without one (only completion texts use it)."""
    from rho_jax.data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(_BENCH_TEXT * 4, min(vocab_size, 320), directory)


def load_bench_model(model: Path, dtype: str, workdir: Path) -> tuple[Llama, Any]:
    """(model, tokenizer): a config file gives random weights and a small tokenizer; anything else
    is loaded like `load_generator` does, with the model's own tokenizer."""
    if model.is_file():
        cfg = ModelConfig.from_file(model)
        llama = Llama(cfg, ModelOptions(dtype=dtype, param_dtype=dtype), rngs=nnx.Rngs(0))
        return llama, bench_tokenizer(workdir / "tokenizer", cfg.vocab_size)
    source = generation_source(model, dtype)
    return load_model(source, make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])), generation_tokenizer(source)


class TorchEngine:
    """transformers `generate`: greedy, static cache, EOS ignored, on the weights of `model`."""

    def __init__(self, model: Llama, prompts: np.ndarray, dtype: str, workdir: Path):
        import torch
        import transformers

        self.torch = torch
        save_hf(model, workdir / "hf")
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        self.model = transformers.AutoModelForCausalLM.from_pretrained(str(workdir / "hf"), dtype=torch_dtype).eval()
        self.input_ids = torch.as_tensor(prompts, dtype=torch.long)

    def __call__(self, new_tokens: int) -> list[list[int]]:
        with self.torch.inference_mode():
            out = self.model.generate(self.input_ids, attention_mask=self.torch.ones_like(self.input_ids),
                                      max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                      cache_implementation="static", eos_token_id=None, pad_token_id=0)
        return out[:, self.input_ids.shape[1]:].tolist()


def rho_engine(generator: Generator, prompts: np.ndarray) -> Callable[[int], list[list[int]]]:
    """Generator.generate for exactly `new_tokens` tokens per prompt (EOS ignored), in prompt order."""

    def run(new_tokens: int) -> list[list[int]]:
        params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
        results = dict(generator.generate(prompts.tolist(), params, progress=False))
        return [results[i].token_ids for i in range(len(prompts))]

    return run


def _timed(run: Callable[[int], Any], new_tokens: int) -> tuple[float, Any]:
    start = time.perf_counter()
    out = run(new_tokens)
    return time.perf_counter() - start, out


def time_engines(engines: dict[str, Callable[[int], Any]], new_tokens: int, rounds: int) -> dict[str, dict[str, Any]]:
    """Per engine: full-run and one-token-run times of every round (after one untimed warm-up round),
    interleaved engine by engine, and the tokens of its last full run."""
    results = {name: {"full": [], "prefill": [], "tokens": None} for name in engines}
    for round_index in range(rounds + 1):
        for name, run in engines.items():
            full, tokens = _timed(run, new_tokens)
            prefill, _ = _timed(run, 1)
            if round_index:
                results[name]["full"].append(full)
                results[name]["prefill"].append(prefill)
            results[name]["tokens"] = tokens
    return results


def summarize(times: dict[str, Any], batch: int, prompt_len: int, new_tokens: int) -> dict[str, float]:
    full, prefill = statistics.median(times["full"]), statistics.median(times["prefill"])
    decode = statistics.median(f - p for f, p in zip(times["full"], times["prefill"]))
    return {"prefill_s": prefill, "prefill_tokens_per_s": batch * prompt_len / prefill,
            "decode_tokens_per_s": batch * (new_tokens - 1) / decode if decode > 0 else float("nan"),
            "total_s": full, "total_tokens_per_s": batch * new_tokens / full}


def gsm8k_like_lengths(count: int, seed: int = 0) -> list[int]:
    """Prompt lengths like 8-shot GSM8K prompts: a ~740-token prefix plus a question, 750-1000 tokens."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.normal(860, 50, count)), *GSM8K_PROMPT_TOKENS).astype(int).tolist()


def gsm8k_compilations(tokenizer, batch: int, count: int) -> dict[str, Any]:
    """Run `count` GSM8K-like prompts (one new token each) through a one-layer model and count the
    programs the run compiled."""
    cfg = ModelConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=2048)
    generator = Generator(Llama(cfg, rngs=nnx.Rngs(0)), tokenizer, batch_size=batch)
    lengths = gsm8k_like_lengths(count)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, cfg.vocab_size, n).tolist() for n in lengths]
    start = time.perf_counter()
    done = sum(1 for _ in generator.generate(prompts, SamplingParams(max_new_tokens=1), progress=False))
    return {"prompts": done, "seconds": time.perf_counter() - start, "programs": dict(generator.programs.traces),
            "buckets": sorted({default_bucket(n) for n in lengths}), "lengths": (min(lengths), max(lengths))}


def refill_comparison(model: Llama, tokenizer, batch: int, prompt_len: int, new_tokens: int, count: int
                      ) -> dict[str, Any]:
    """`count` prompts whose greedy completions end at varying lengths, generated with refilled
    slots and with static batches. EOS ids are tokens of the free-running greedy completions, those
    that first appear latest first, added until the completions they end average at most half of
    new-tokens."""
    rng = np.random.default_rng(2)
    prompts = rng.integers(3, model.config.vocab_size, (count, prompt_len)).tolist()
    free_running = rho_engine(Generator(model, tokenizer, batch_size=batch), np.asarray(prompts))(new_tokens)
    first_step: dict[int, int] = {}
    for row in free_running:
        for step, token in enumerate(row):
            first_step[token] = min(first_step.get(token, step), step)
    eos: set[int] = set()
    ends = lambda: [next((i + 1 for i, t in enumerate(row) if t in eos), len(row)) for row in free_running]
    for token in sorted(first_step, key=lambda t: -first_step[t]):
        if statistics.mean(ends()) <= new_tokens / 2:
            break
        eos.add(token)
    params = SamplingParams(max_new_tokens=new_tokens)
    out = {}
    for refill in (True, False):
        generator = Generator(model, tokenizer, batch_size=batch, eos_token_ids=sorted(eos), refill=refill)
        list(generator.generate(prompts, params, progress=False))  # compile every program of the run
        start = time.perf_counter()
        completions = dict(generator.generate(prompts, params, progress=False))
        out[refill] = (time.perf_counter() - start, [completions[i].token_ids for i in range(count)],
                       generator.last_stats.decode_steps)
    lengths = [len(t) for t in out[True][1]]
    return {"refill_s": out[True][0], "static_s": out[False][0], "same": out[True][1] == out[False][1],
            "refill_steps": out[True][2], "static_steps": out[False][2],
            "lengths": (min(lengths), statistics.mean(lengths), max(lengths))}


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model, tokenizer = load_bench_model(args.model, args.dtype, workdir)
        cfg = model.config
        prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (args.batch, args.prompt_len))
        generator = Generator(model, tokenizer, batch_size=args.batch)
        engines = {"rho_jax": rho_engine(generator, prompts)}
        if args.peer:
            engines["transformers (static cache)"] = TorchEngine(model, prompts, args.dtype, workdir)
        times = time_engines(engines, args.new_tokens, args.rounds)
        rows = {name: summarize(t, args.batch, args.prompt_len, args.new_tokens) for name, t in times.items()}
        result: dict[str, Any] = {"rows": rows, "config": cfg, "device": jax.devices()[0].device_kind}
        if args.peer:
            ours, theirs = (times[name]["tokens"] for name in engines)
            result["same_rows"] = sum(a == b for a, b in zip(ours, theirs))
        bandwidth = args.bandwidth_gbs or bandwidth_gbs(result["device"])
        if bandwidth is not None:
            size = jnp.dtype(args.dtype).itemsize
            bound = roofline_tokens_per_s(cfg, args.batch, args.prompt_len + args.new_tokens / 2, size, size, bandwidth)
            result["roofline"] = {"bandwidth_gbs": bandwidth, "bound": bound,
                                  "fraction": rows["rho_jax"]["decode_tokens_per_s"] / bound}
        if args.gsm8k_prompts:
            result["gsm8k"] = gsm8k_compilations(tokenizer, args.batch, args.gsm8k_prompts)
        if args.refill_prompts:
            result["refill"] = refill_comparison(model, tokenizer, args.batch, args.prompt_len, args.new_tokens,
                                                 args.refill_prompts)
    return result


def format_report(result: dict[str, Any], args: argparse.Namespace) -> str:
    cfg = result["config"]
    lines = [f"device: {result['device']} x{jax.device_count()} | model {args.model.name} ({cfg.num_parameters() / 1e6:.1f}M "
             f"parameters) | batch {args.batch} | prompt {args.prompt_len} | new tokens {args.new_tokens} | "
             f"dtype {args.dtype} | {args.rounds} rounds (medians)", "",
             "| engine | prefill | prefill tokens/s | decode tokens/s | total (prefill + decode) | total tokens/s |",
             "|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        decode = "n/a" if np.isnan(r["decode_tokens_per_s"]) else f"{r['decode_tokens_per_s']:,.0f}"
        lines.append(f"| {name} | {r['prefill_s'] * 1e3:.1f} ms | {r['prefill_tokens_per_s']:,.0f} | {decode} | "
                     f"{r['total_s']:.3f} s | {r['total_tokens_per_s']:,.0f} |")
    lines.append("")
    if "same_rows" in result:
        ours, theirs = result["rows"].values()
        lines.append(f"rho_jax / transformers: prefill {theirs['prefill_s'] / ours['prefill_s']:.2f}x faster, decode "
                     f"{ours['decode_tokens_per_s'] / theirs['decode_tokens_per_s']:.2f}x, total "
                     f"{theirs['total_s'] / ours['total_s']:.2f}x")
        lines.append(f"same greedy tokens: {result['same_rows']} of {args.batch} rows")
    if "roofline" in result:
        roof = result["roofline"]
        lines.append(f"decode roofline at {roof['bandwidth_gbs']:,.0f} GB/s: {roof['bound']:,.0f} tokens/s; rho_jax "
                     f"reaches {roof['fraction']:.1%}")
    else:
        lines.append("decode roofline: no datasheet bandwidth for this device (give --bandwidth-gbs)")
    if "gsm8k" in result:
        g = result["gsm8k"]
        programs = ", ".join(f"{kind} {'x'.join(map(str, shape))}" for (kind, *shape), _ in g["programs"].items())
        lines.append(f"GSM8K-like run: {g['prompts']} prompts of {g['lengths'][0]}-{g['lengths'][1]} tokens (buckets "
                     f"{g['buckets']}) compiled {sum(g['programs'].values())} programs ({programs}); "
                     f"{g['seconds']:.1f} s with a one-layer model, 1 new token each")
    if "refill" in result:
        r = result["refill"]
        lines.append(f"refill: {args.refill_prompts} prompts, completions of {r['lengths'][0]}-{r['lengths'][2]} tokens "
                     f"(mean {r['lengths'][1]:.0f}): refilled slots {r['refill_s']:.2f} s, {r['refill_steps']} decode "
                     f"steps vs static batches {r['static_s']:.2f} s, {r['static_steps']} steps "
                     f"({r['static_s'] / r['refill_s']:.2f}x); same completions: {r['same']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rho_jax.bench generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help="model config (random weights) or a model directory / run / Hub id")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction,
                        default=importlib.util.find_spec("torch") is not None,
                        help="also time transformers (default: if torch is installed)")
    parser.add_argument("--bandwidth-gbs", type=float, default=None,
                        help="memory bandwidth per device for the roofline (default: datasheet of known accelerators)")
    parser.add_argument("--gsm8k-prompts", type=int, default=1319, help="prompts of the compile-count run (0: skip)")
    parser.add_argument("--refill-prompts", type=int, default=32, help="prompts of the refill comparison (0: skip)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = below_minimum(args, {"batch": 1, "prompt_len": 1, "new_tokens": 2, "rounds": 1})
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    print(format_report(run(args), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
