"""Benchmark document embedding (`rho_jax.curation.embeddings`): documents per second on this machine's devices.

    python -m rho_jax.bench embed [--model configs/models/tiny-cpu.yaml] [--docs 2048] [--batch-size 32]
        [--max-length 512] [--pooling mean] [--rounds 3] [--dtype float32] [--seed 0] [--json PATH]

--model: a model config (random weights, and a byte-level BPE tokenizer trained on the benchmark's own
words) or anything `load_embedder` loads. The documents are made-up prose whose lengths in words follow
a log-normal law (median ~150 words, a long tail past max_length, as web pages have), the same for every
run with the same seed. Two embedders over the same mesh (every local device) and documents:
    bucketed      the default length buckets (32, 64, ..., max_length)
    one bucket    every document padded to max_length (what a single compiled shape costs)
Each is run once to compile, then `--rounds` times; reported: the median time of a full pass
(tokenization included), documents/s, document tokens/s, the share of computed positions that are padding,
and the number of compiled programs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from rho_jax.curation.embeddings import POOLINGS, DocumentEmbedder, load_embedder
from rho_jax.data.tokenizer import train_bpe_tokenizer
from rho_jax.models import Llama, ModelConfig, ModelOptions

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "configs" / "models" / "tiny-cpu.yaml"
_WORDS = ("the of and a to in is that for it as with was on be by this are from or an which at have not has "
          "number sum equals twice half apples clips April May total each more than less value solution problem "
          "answer therefore because triangle angle area circle radius equation variable function derivative").split()


def make_documents(count: int, seed: int = 0) -> list[str]:
    """`count` made-up documents whose word counts are log-normal (median 150, sigma 1), at least one word."""
    rng = np.random.default_rng(seed)
    lengths = np.maximum(1, rng.lognormal(np.log(150), 1.0, count).astype(int))
    return [" ".join(rng.choice(_WORDS, size=n)) for n in lengths]


def make_embedders(args: argparse.Namespace, documents: list[str], workdir: Path) -> dict[str, DocumentEmbedder]:
    """The two variants' embedders of `args.model` (a model config gives random weights and a tokenizer
    trained on the documents' words)."""
    variants = {"bucketed": None, "one bucket": (args.max_length,)}
    options = dict(pooling=args.pooling, max_length=args.max_length, batch_size=args.batch_size)
    if Path(args.model).suffix not in (".yaml", ".yml", ".json"):
        return {name: load_embedder(args.model, dtype=args.dtype, buckets=buckets, **options)
                for name, buckets in variants.items()}
    cfg = ModelConfig.from_file(args.model)
    tokenizer = train_bpe_tokenizer([" ".join(_WORDS)] * 4, min(cfg.vocab_size, 1024), workdir / "tokenizer")
    llama = Llama(cfg, ModelOptions(dtype=args.dtype), rngs=nnx.Rngs(args.seed))
    return {name: DocumentEmbedder(llama, tokenizer, buckets=buckets, **options) for name, buckets in variants.items()}


def computed_positions(embedder: DocumentEmbedder, lengths: np.ndarray) -> int:
    """Token positions the model computes for documents of `lengths`: per bucket, whole batches of its length."""
    bucket_of = np.searchsorted(np.asarray(embedder.buckets), lengths)
    return sum(-(-int(np.sum(bucket_of == b)) // embedder.batch_size) * embedder.batch_size * length
               for b, length in enumerate(embedder.buckets))


def time_embedder(embedder: DocumentEmbedder, documents: list[str], rounds: int) -> dict[str, Any]:
    """Compile (one pass), then time `rounds` full passes over `documents`."""
    embedder.embed(documents)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        embedder.embed(documents)
        times.append(time.perf_counter() - start)
    lengths = np.array([len(ids) for ids in embedder.tokenize(documents)[0]])
    seconds = statistics.median(times)
    return {
        "seconds": seconds,
        "docs_per_s": len(documents) / seconds,
        "tokens_per_s": float(lengths.sum()) / seconds,
        "padding_fraction": 1 - float(lengths.sum()) / computed_positions(embedder, lengths),
        "programs": len(np.unique(np.searchsorted(np.asarray(embedder.buckets), lengths))),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    documents = make_documents(args.docs, args.seed)
    with tempfile.TemporaryDirectory() as workdir:
        embedders = make_embedders(args, documents, Path(workdir))
    first = embedders["bucketed"]
    return {"model": str(args.model), "docs": args.docs, "devices": first.mesh.size, "platform": jax.devices()[0].platform,
            "max_length": first.max_length, "batch_size": first.batch_size, "pooling": first.pooling,
            "truncated": int(np.sum(first.tokenize(documents)[1] > first.max_length)),
            "variants": {name: time_embedder(embedder, documents, args.rounds) for name, embedder in embedders.items()}}


def format_report(result: dict[str, Any]) -> str:
    lines = [f"embedding {result['docs']} documents with {result['model']} on {result['devices']} "
             f"{result['platform']} device(s): pooling {result['pooling']}, max_length {result['max_length']}, "
             f"batch {result['batch_size']} rows, {result['truncated']} documents truncated",
             f"{'variant':<12} {'pass (s)':>9} {'docs/s':>9} {'tokens/s':>11} {'padding':>8} {'programs':>9}"]
    for name, v in result["variants"].items():
        lines.append(f"{name:<12} {v['seconds']:>9.3f} {v['docs_per_s']:>9.1f} {v['tokens_per_s']:>11,.0f} "
                     f"{v['padding_fraction']:>8.1%} {v['programs']:>9}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rho_jax.bench embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model config (random weights) or model path")
    parser.add_argument("--docs", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--pooling", choices=POOLINGS, default="mean")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("docs", "batch_size", "max_length", "rounds"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.", file=sys.stderr)
            return 2
    result = run(args)
    print(format_report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0
