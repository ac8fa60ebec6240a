"""Benchmark n-gram decontamination: rho_jax's datatrove filter against lm-eval's Janitor on the same data.

    python -m rho_jax.bench decontaminate [--corpus 'DIR/*.jsonl'] [--text-field text] [--index index.npz]
        [--megabytes 16] [--items 1319] [--contaminate 0.01] [--tasks 4] [--scaling-copies 4] [--seed 0]
        [--json FILE]

Data: the documents of --corpus (JSONL, repeated until --megabytes of UTF-8 text), by default the
quickstart's word problems and Python documentation. Evaluation items: those of --index, by default --items
made-up items of 60 words drawn from the corpus's own words (so that clean text shares no 13-gram with them);
a --contaminate fraction of the documents gets one item pasted into its middle. Both implementations see
exactly these documents and items, n = 13, cut mode (window 200, more than 10 hits drops).

    rho_jax     `NGramDecontamination.filter_batch` in this process (one core): normalization, hashing
                and the vectorized index lookup, locating hits and cutting; report rows to a temp file
    Janitor     `JanitorPeer`, lm-eval's Janitor (its Python path) written out: ASCII lowercase, ASCII
                punctuation deleted, whitespace-split 13-grams as strings in a set, the same cutting
Both are timed on the same documents in one process; throughput = UTF-8 megabytes per second on one core.
Scaling: the whole pipeline (JSONL reader -> filter -> JSONL writer) under LocalPipelineExecutor on
--scaling-copies copies of the documents written as --tasks shards, with 1 and then 2 workers (worker
processes start by forkserver, which the time includes); speed-up = time(1) / time(2). It needs 2 free
cores: the report gives the machine's load average next to it.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import random
import re
import string
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datatrove.data import Document

from rho_jax.curation.decontamination import CutSettings, NGramDecontamination
from rho_jax.curation.eval_index import EvalItem, NGramIndex, build_index
from rho_jax.curation.ngrams import NGramSettings, words
from rho_jax.jsonl import json_lines

QUICKSTART_DATA = Path(__file__).resolve().parents[1] / "quickstart" / "data"
BATCH = 256


class JanitorPeer:
    """lm-eval's `Janitor` (decontamination/janitor.py, pure-Python path), same parameters and conventions:
    contaminant n-grams are the whitespace-split n-grams of the lowercased, punctuation-deleted text; a
    document's n-grams are its raw whitespace-split n-grams, normalized one by one and looked up."""

    def __init__(self, n: int = 13, window: int = 200, max_hits: int = 10, min_piece: int = 200):
        self.n, self.window, self.max_hits, self.min_piece = n, window, max_hits, min_piece
        self.table = str.maketrans(string.ascii_uppercase, string.ascii_lowercase, string.punctuation)
        self.ngrams: set[str] = set()

    def register(self, text: str) -> None:
        tokens = text.translate(self.table).split()
        self.ngrams.update(" ".join(tokens[j: j + self.n]) for j in range(len(tokens) - self.n + 1))

    def hits(self, text: str) -> list[tuple[int, int]]:
        """(first character, last character) of each contaminated n-gram, in order."""
        tokens = [(match.group(), match.start(), match.end() - 1) for match in re.finditer(r"\S+", text)]
        return [(tokens[j][1], tokens[j + self.n - 1][2]) for j in range(len(tokens) - self.n + 1)
                if " ".join(token for token, _, _ in tokens[j: j + self.n]).translate(self.table) in self.ngrams]

    def clean(self, text: str, hits: list[tuple[int, int]]) -> list[str]:
        """The Janitor's pieces of `text` around `hits` ([] when there are more than max_hits)."""
        pieces, resume, end = [], 0, -1
        for count, (start, last) in enumerate(hits):
            if count >= self.max_hits:
                return []
            start, end = max(0, start - self.window), min(len(text), last + self.window)
            if start - resume > self.min_piece:
                pieces.append(text[resume:start])
            resume = end
        if end < len(text) - self.min_piece:
            pieces.append(text[end + 1:])
        return pieces


def load_documents(corpus: str | None, text_field: str, megabytes: float) -> list[str]:
    """The corpus's texts (default: the quickstart data), repeated until they hold `megabytes` MB of UTF-8."""
    paths = sorted(glob.glob(corpus)) if corpus else sorted(str(path) for path in QUICKSTART_DATA.glob("*.jsonl.gz"))
    if not paths:
        raise ValueError(f"no corpus files match {corpus!r}")
    texts = []
    for path in paths:
        texts += [record[text_field] for record in json_lines(path)]
    documents, size = [], 0
    while size < megabytes * 1e6:
        for text in texts:
            documents.append(text)
            size += len(text.encode("utf-8"))
            if size >= megabytes * 1e6:
                break
    return documents


def made_up_items(documents: Sequence[str], count: int, rng: random.Random) -> list[EvalItem]:
    """`count` items of 60 words drawn independently from the documents' words (their frequencies)."""
    vocabulary = " ".join(documents[:2000]).split()
    return [EvalItem("made_up", k, " ".join(rng.choices(vocabulary, k=60))) for k in range(count)]


def plant(documents: list[str], items: Sequence[EvalItem], fraction: float, rng: random.Random) -> int:
    """Paste a random item into the middle of a `fraction` of the documents (in place); returns how many."""
    chosen = rng.sample(range(len(documents)), round(fraction * len(documents)))
    for k in chosen:
        text, middle = documents[k], len(documents[k]) // 2
        documents[k] = f"{text[:middle]}\n{rng.choice(items).text}\n{text[middle:]}"
    return len(chosen)


def time_rho_jax(documents: Sequence[str], index_path: Path, report_dir: Path) -> tuple[float, int]:
    """(seconds, contaminated documents) of the rho_jax filter over `documents`, one process."""
    step = NGramDecontamination(str(index_path), str(report_dir), mode="cut", cut=CutSettings())
    step._index = NGramIndex.load(index_path)
    step._report = io.StringIO()
    words("\u00e9")  # the per-process code-point table, built before the clock starts
    batches = [[Document(text=text, id=str(k)) for k, text in enumerate(documents[begin: begin + BATCH], begin)]
               for begin in range(0, len(documents), BATCH)]
    start = time.perf_counter()
    for batch in batches:
        step.filter_batch(batch)
    return time.perf_counter() - start, step._counts["contaminated_documents"]


def time_janitor(documents: Sequence[str], items: Sequence[EvalItem]) -> tuple[float, int]:
    """(seconds, contaminated documents) of the Janitor peer over `documents`, one process."""
    janitor = JanitorPeer()
    for item in items:
        janitor.register(item.text)
    start = time.perf_counter()
    contaminated = 0
    for text in documents:
        hits = janitor.hits(text)
        janitor.clean(text, hits)
        contaminated += bool(hits)
    return time.perf_counter() - start, contaminated


def time_pipeline(documents: Sequence[str], index_path: Path, root: Path, tasks: int, workers: int,
                  copies: int) -> float:
    """Seconds of the whole pipeline (reader -> filter -> writer) under LocalPipelineExecutor, on `copies` copies
    of the documents written as `tasks` shards."""
    from datatrove.executor import LocalPipelineExecutor

    from rho_jax.curation.decontamination_pipeline import RunSettings, build_pipeline

    corpus = root / "corpus"
    if not corpus.is_dir():
        corpus.mkdir(parents=True)
        for shard in range(tasks):
            with open(corpus / f"{shard:05d}.jsonl", "w", encoding="utf-8") as handle:
                for k in range(shard, copies * len(documents), tasks):
                    handle.write(json.dumps({"id": str(k), "text": documents[k % len(documents)]}) + "\n")
    output = root / f"out-{workers}"
    settings = RunSettings(index=str(index_path), index_sha256="", input=str(corpus), mode="cut", tasks=tasks)
    executor = LocalPipelineExecutor(build_pipeline(settings, output), tasks=tasks, workers=workers,
                                     logging_dir=str(output / "logs"))
    start = time.perf_counter()
    executor.run()
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    documents = load_documents(args.corpus, args.text_field, args.megabytes)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.index:
            index_path, items = Path(args.index), NGramIndex.load(args.index).items
        else:
            items = made_up_items(documents, args.items, rng)
            index_path = root / "index.npz"
            build_index(items, NGramSettings()).save(index_path)
        planted = plant(documents, items, args.contaminate, rng)
        megabytes = sum(len(text.encode("utf-8")) for text in documents) / 1e6
        ours, ours_found = time_rho_jax(documents, index_path, root / "report")
        janitor, janitor_found = time_janitor(documents, items)
        one = time_pipeline(documents, index_path, root, args.tasks, 1, args.scaling_copies)
        two = time_pipeline(documents, index_path, root, args.tasks, 2, args.scaling_copies)
    return {"megabytes": round(megabytes, 2), "documents": len(documents), "items": len(items), "planted": planted,
            "rho_jax_mb_per_s": round(megabytes / ours, 2), "janitor_mb_per_s": round(megabytes / janitor, 2),
            "speedup_vs_janitor": round(janitor / ours, 1), "rho_jax_contaminated": ours_found,
            "janitor_contaminated": janitor_found, "pipeline_1_worker_s": round(one, 2),
            "pipeline_2_workers_s": round(two, 2), "pipeline_megabytes": round(args.scaling_copies * megabytes, 2),
            "pipeline_mb_per_s_1_worker": round(args.scaling_copies * megabytes / one, 2),
            "scaling_1_to_2_workers": round(one / two, 2), "tasks": args.tasks, "load_average": os.getloadavg(),
            "cpus": os.cpu_count()}


def format_report(result: dict[str, Any]) -> str:
    return "\n".join([
        f"data: {result['megabytes']} MB, {result['documents']} documents, {result['items']} evaluation items, "
        f"{result['planted']} planted",
        f"rho_jax filter  {result['rho_jax_mb_per_s']:8.2f} MB/s per core  ({result['rho_jax_contaminated']} contaminated)",
        f"Janitor (peer)  {result['janitor_mb_per_s']:8.2f} MB/s per core  ({result['janitor_contaminated']} contaminated)",
        f"rho_jax / Janitor: {result['speedup_vs_janitor']}x",
        f"pipeline ({result['pipeline_megabytes']} MB, {result['tasks']} tasks): 1 worker {result['pipeline_1_worker_s']} s "
        f"({result['pipeline_mb_per_s_1_worker']} MB/s), 2 workers {result['pipeline_2_workers_s']} s: "
        f"{result['scaling_1_to_2_workers']}x  (load average {', '.join(f'{x:.1f}' for x in result['load_average'])}"
        f" on {result['cpus']} CPUs)",
    ])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rho_jax.bench decontaminate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", help="JSONL files (a glob; .gz allowed); default: the quickstart data")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--index", help="an index from `decontaminate index` (default: made-up items)")
    parser.add_argument("--megabytes", type=float, default=16.0, help="corpus size (documents repeat to reach it)")
    parser.add_argument("--items", type=int, default=1319, help="made-up evaluation items (without --index)")
    parser.add_argument("--contaminate", type=float, default=0.01, help="fraction of documents given a planted item")
    parser.add_argument("--tasks", type=int, default=4, help="datatrove tasks of the scaling runs")
    parser.add_argument("--scaling-copies", type=int, default=4, help="the scaling runs read the documents this many times")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.megabytes <= 0 or args.items < 1 or not 0 <= args.contaminate <= 1 or args.tasks < 2 or args.scaling_copies < 1:
        print("error: --megabytes > 0, --items >= 1, 0 <= --contaminate <= 1, --tasks >= 2 and --scaling-copies >= 1 "
              "are required.", file=sys.stderr)
        return 2
    result = run(args)
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
