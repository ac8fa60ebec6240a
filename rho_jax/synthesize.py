"""Synthesize question/answer pairs from documents with any model rho_jax loads.

    python -m rho_jax.synthesize --model M [--adapter PEFT_DIR] --input docs/*.jsonl --output OUT [--template ko-simple-qa]
        [--samples K] [--seed S] [--chunk-tokens N] [--max-new-tokens N] [--temperature T] [--top-p P]
        [--top-k K] [--batch-size B] [--max-overlap F] [--ngram N] [--max-perplexity X --scoring-model R]
        [--tokenizer DIR] [--dtype bfloat16] [--prompt-format '{question}\\n']

Every input file (JSONL or Parquet rows with `text`, optional `title` and `id`) is one shard;
OUT/shards/<shard>/pairs.jsonl holds its accepted pairs (`prompt`, `response` and provenance),
rejected.jsonl the rest with their reason, and OUT/report.json / report.md the counts per reason.
Rerunning the command skips the finished shards. `--template` is a shipped template
(genstruct, ko-simple-qa), a TOML template file, or a text file with `{text}` (and `{title}`)
read with `--parser` (and `--chat` to wrap it in the tokenizer's chat template). Sampling
settings default to the template's. See docs/synthesis.md and `rho_jax.synthesis`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rho_jax.synthesis import PARSERS, Settings, input_shards, load_template, shipped_templates, synthesis_generator, synthesize
from rho_jax.synthesis.report import markdown


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rho_jax.synthesize", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True,
                        help="HF directory or Hub id, rho_jax run, checkpoint or model directory that generates")
    parser.add_argument("--input", required=True, nargs="+", help="JSONL/Parquet document files or globs (one shard each)")
    parser.add_argument("--output", required=True, help="output directory (resumable)")
    parser.add_argument("--template", default="ko-simple-qa",
                        help=f"shipped template ({', '.join(shipped_templates())}), a .toml template or a text prompt file")
    parser.add_argument("--parser", choices=PARSERS, default=None, help="parser of a text template's output")
    parser.add_argument("--chat", action="store_true", help="wrap a text template in the tokenizer's chat template")
    parser.add_argument("--adapter", default=None, help="PEFT LoRA adapter directory merged into --model")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's own)")
    parser.add_argument("--samples", type=int, default=1, help="completions per chunk")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-tokens", type=int, default=512, help="chunk length at most, in tokens")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the template's")
    parser.add_argument("--temperature", type=float, default=None, help="default: the template's")
    parser.add_argument("--top-p", type=float, default=None, help="default: the template's")
    parser.add_argument("--top-k", type=int, default=None, help="default: the template's")
    parser.add_argument("--batch-size", type=int, default=32, help="decode slots of the generator")
    parser.add_argument("--dtype", default=None, help="compute dtype (default float32)")
    parser.add_argument("--ngram", type=int, default=4, help="word n-gram length of the copy check")
    parser.add_argument("--max-overlap", type=float, default=0.5,
                        help="reject a question whose n-gram overlap with its chunk exceeds this")
    parser.add_argument("--max-perplexity", type=float, default=None, help="reject answers above this perplexity")
    parser.add_argument("--scoring-model", default=None, help="model that scores answers for --max-perplexity")
    parser.add_argument("--prompt-format", default="{question}\n", help="the training prompt made of {question}")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run(args: argparse.Namespace) -> dict:
    """Synthesize as `args` say; returns the run's summary (`rho_jax.synthesis.report`)."""
    template = load_template(args.template, parser=args.parser, chat=args.chat)
    shards = input_shards(args.input)
    settings = Settings.for_template(
        template, model=args.model, adapter=args.adapter, chunk_tokens=args.chunk_tokens, samples=args.samples, seed=args.seed,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        ngram=args.ngram, max_overlap=args.max_overlap, max_perplexity=args.max_perplexity,
        scoring_model=args.scoring_model, prompt_format=args.prompt_format)
    generator = synthesis_generator(args.model, template, adapter=args.adapter, tokenizer=args.tokenizer, dtype=args.dtype,
                                    batch_size=args.batch_size)
    scorer = None
    if args.scoring_model is not None:
        from rho_jax.synthesis.perplexity import AnswerScorer

        scorer = AnswerScorer(args.scoring_model, generator.mesh)
    return synthesize(shards, args.output, generator, template, settings, scorer, progress=not args.no_progress)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.max_perplexity is None) != (args.scoring_model is None):
        raise SystemExit("--max-perplexity and --scoring-model go together: give both or neither.")
    try:
        summary = run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(f"error: {e}") from e
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
