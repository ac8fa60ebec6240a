"""Document -> instruction-pair synthesis (Genstruct, ko-genstruct) with validation.

documents.py   input shards (JSONL/Parquet files of `text`, optional `title`, `id`)
chunking.py    documents cut into chunks of at most N tokens at paragraph/sentence/word boundaries
templates.py   prompt templates (shipped: templates/genstruct.toml, templates/ko-simple-qa.toml; user files)
parsing.py     question/answer parsers of generated text
validation.py  the verdict of each completion (truncated, missing marker, empty, stray marker, copy, duplicate)
perplexity.py  the optional answer-perplexity filter under a scoring model
pipeline.py    shard-by-shard generation, judging and atomic, resumable output
report.py      counts per verdict and timings as report.json / report.md
loading.py     a Generator that stops at the template's end-of-turn tokens

The command line is `python -m rho_jax.synthesize`; the workflow is in docs/synthesis.md.
"""

from rho_jax.synthesis.chunking import chunk_text, token_counter
from rho_jax.synthesis.documents import Document, input_shards, read_shard
from rho_jax.synthesis.loading import synthesis_generator
from rho_jax.synthesis.parsing import PARSERS, Parsed, parse
from rho_jax.synthesis.pipeline import Settings, synthesize
from rho_jax.synthesis.templates import Template, load_template, shipped_templates
from rho_jax.synthesis.validation import REASONS, VALID

__all__ = ["PARSERS", "REASONS", "VALID", "Document", "Parsed", "Settings", "Template", "chunk_text", "input_shards",
           "load_template", "parse", "read_shard", "shipped_templates", "synthesis_generator", "synthesize",
           "token_counter"]
