"""Benchmark synthesis: pairs/s, generated tokens/s and the time share of generation vs the rest.

    python -m rho_jax.bench synthesize [--model configs/models/tiny-cpu.yaml] [--documents 16] [--shards 2]
        [--samples 4] [--new-tokens 32] [--chunk-tokens 96] [--batch 32] [--dtype float32]

Runs `rho_jax.synthesis.synthesize` (template genstruct at temperature 1) over made-up English and
Korean documents twice, into fresh directories: a warm-up run that compiles the programs, then the
timed run whose report is shown. Figures of the timed run: completions/s and accepted pairs/s,
generated tokens/s, and the seconds of each phase (prepare = chunking, rendering and tokenizing;
generate; validate = parsing and judging; write) with generation's share of their sum.

A random model's completions are nearly all truncated, and a truncated completion is rejected
before the copy and duplicate checks. So the validation cost of real output is measured apart:
the time `pipeline.judge` takes per completion on made-up completions that pass every check up to
the duplicate one (an n-gram overlap against their chunk included), and the share of the timed
run's time it would take at that cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rho_jax.bench.arguments import below_minimum
from rho_jax.bench.generation_bench import DEFAULT_MODEL, load_bench_model
from rho_jax.generation import Completion, Generator
from rho_jax.synthesis import Settings, input_shards, load_template, synthesize
from rho_jax.synthesis.documents import Document
from rho_jax.synthesis.pipeline import Row, judge

_SENTENCES = [
    "Natalia sold clips to {n} of her friends in April, and then she sold half as many clips in May.",
    "Selective language modeling trains only on the tokens that a reference model marks as useful.",
    "나탈리아는 4월에 친구 {n}명에게 클립을 팔았고, 5월에는 그 절반을 팔았다.",
    "참조 모델이 유용하다고 표시한 토큰만으로 언어 모델을 학습한다.",
]


def write_documents(directory: Path, documents: int, shards: int) -> list[Path]:
    """`documents` made-up documents of a few paragraphs each, spread over `shards` JSONL files."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"shard{s:03d}.jsonl" for s in range(shards)]
    files = [open(p, "w", encoding="utf-8") for p in paths]
    for d in range(documents):
        paragraphs = [" ".join(_SENTENCES[(d + p + i) % len(_SENTENCES)].format(n=d + i) for i in range(3))
                      for p in range(3)]
        files[d % shards].write(json.dumps({"id": f"doc{d}", "title": f"Document {d}", "text": "\n\n".join(paragraphs)},
                                           ensure_ascii=False) + "\n")
    for f in files:
        f.close()
    return paths


def validation_cost(settings: Settings, count: int = 2000) -> float:
    """Seconds per completion that `judge` takes on `count` made-up completions that reach the duplicate check."""
    chunk = " ".join(s.format(n=7) for s in _SENTENCES) * 3
    rows = [Row(Document("d", chunk), 0, chunk, i) for i in range(count)]
    texts = [f" What did Natalia sell in month {i}?\n[[[Assistant]]] She sold {i} clips, 나탈리아는 {i}개를 팔았다."
             for i in range(count)]
    completions = [Completion(text, [0] * 40, "eos", 100) for text in texts]
    template = load_template("genstruct")
    start = time.perf_counter()
    _, _, counts = judge("bench", rows, completions, template, settings)
    elapsed = time.perf_counter() - start
    assert counts["valid"] == count, counts  # every made-up pair reaches the end of the checks
    return elapsed / count


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, tokenizer = load_bench_model(args.model, args.dtype, work)
        generator = Generator(model, tokenizer, batch_size=args.batch)
        template = load_template("genstruct")
        settings = Settings.for_template(template, model=str(args.model), samples=args.samples, temperature=1.0,
                                         max_new_tokens=args.new_tokens, chunk_tokens=args.chunk_tokens)
        shards = input_shards([str(p) for p in write_documents(work / "docs", args.documents, args.shards)])
        synthesize(shards, work / "warm-up", generator, template, settings, progress=False)
        summary = synthesize(shards, work / "timed", generator, template, settings, progress=False)
    per_completion = validation_cost(settings)
    total = sum(summary["seconds"].values())
    summary["validation_s_per_completion"] = per_completion
    summary["validation_share_real_output"] = per_completion * summary["completions"] / total if total else 0.0
    summary["completions_per_s"] = summary["completions"] / total if total else 0.0
    return summary


def format_report(summary: dict[str, Any], args: argparse.Namespace) -> str:
    seconds = summary["seconds"]
    total = sum(seconds.values())
    other = total - seconds["generate"]
    return "\n".join([
        f"synthesis on {args.model} ({args.dtype}): {summary['documents']} documents in {args.shards} shards, "
        f"{summary['chunks']} chunks x {args.samples} samples = {summary['completions']} completions, "
        f"{args.new_tokens} new tokens at most, batch {args.batch}",
        f"  completions/s {summary['completions_per_s']:.2f}, accepted pairs/s {summary['pairs_per_s']:.2f}, "
        f"generated tokens/s {summary['tokens_per_s']:.1f} ({summary['generated_tokens']} tokens)",
        "  seconds: " + ", ".join(f"{k} {v:.3f}" for k, v in seconds.items()) + f" (total {total:.2f})",
        f"  generation {summary['generation_share']:.1%} of the time, everything else {other / total if total else 0:.2%} "
        "(target < 5%)",
        f"  validation of real-looking output: {summary['validation_s_per_completion'] * 1e6:.0f} us per completion, "
        f"{summary['validation_share_real_output']:.2%} of this run's time at that cost",
        "  verdicts: " + ", ".join(f"{k} {v}" for k, v in summary["counts"].items() if v),
    ])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rho_jax.bench synthesize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help="model config (random weights) or a model directory / run / Hub id")
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4, help="completions per chunk")
    parser.add_argument("--new-tokens", type=int, default=32, help="max_new_tokens")
    parser.add_argument("--chunk-tokens", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32, help="decode slots")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = below_minimum(args, dict.fromkeys(("documents", "shards", "samples", "new_tokens", "chunk_tokens", "batch"), 1))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.shards > args.documents:
        print(f"error: --shards ({args.shards}) must not exceed --documents ({args.documents}).", file=sys.stderr)
        return 2
    print(format_report(run(args), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
