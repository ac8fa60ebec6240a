"""Documents -> chunks -> prompts -> completions -> validated question/answer pairs, shard by shard.

For each input shard (`rho_jax.synthesis.documents`): every document is chunked
(`chunking.chunk_text`, at most `chunk_tokens` tokens), every chunk rendered by the template
(`templates.Template.encode`) and generated `samples` times in ONE `Generator.generate` call over
all of the shard's rows (row r = the chunk's position in the shard * samples + sample index).
Seeds: the call's seed is `shard_seed(seed, shard)`, and the generator folds each row's index
into it, so every sample of every chunk draws its own random stream, and a rerun with the same
inputs and settings reproduces the same completions whatever the batch size or the devices.
Then, in row order, each completion is parsed and judged (`validation`; perplexity by an
optional `perplexity.AnswerScorer`).

Output directory:
    settings.json               the settings of the run; a rerun with other settings is refused
    shards/<shard>/pairs.jsonl  accepted pairs: prompt, response + provenance
    shards/<shard>/rejected.jsonl  rejected completions with their reason
    shards/<shard>/report.json  the shard's counts and timings
    report.json, report.md      the totals over all shards (`report`)
A shard's directory appears complete or not at all (`rho_jax.models.atomic_dir`); a rerun skips
every shard that has one, so an interrupted run resumes at the first unfinished shard.
"""

from __future__ import annotations

import dataclasses
import json
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rho_jax.generation import Completion, Generator, SamplingParams
from rho_jax.models.atomic_dir import atomic_directory
from rho_jax.synthesis.chunking import chunk_text, token_counter
from rho_jax.synthesis.documents import Document, read_shard, shard_name
from rho_jax.synthesis.parsing import parse
from rho_jax.synthesis.perplexity import AnswerScorer
from rho_jax.synthesis.report import SHARD_REPORT, SHARDS_DIR, write_report
from rho_jax.synthesis.templates import Template
from rho_jax.synthesis.validation import DUPLICATE, PERPLEXITY, VALID, Deduplicator, StrayMarkers, first_check

SETTINGS_FILE = "settings.json"


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a run is made with (stored in settings.json; provenance fields go into every row).

    prompt_format: the training prompt made of the question (`{question}`); the trainer
      concatenates the prompt's and the response's tokens directly, so it ends with a separator.
    max_overlap / ngram: the copy check (`validation.overlap`). max_perplexity: the answer
      perplexity limit (None: no filter; needs a scorer). Sampling fields override the template's.
    """

    template: str
    model: str
    adapter: str | None = None
    chunk_tokens: int = 512
    samples: int = 1
    seed: int = 0
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    ngram: int = 4
    max_overlap: float = 0.5
    max_perplexity: float | None = None
    scoring_model: str | None = None
    prompt_format: str = "{question}\n"

    def __post_init__(self) -> None:
        if not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"samples must be an integer >= 1, got {self.samples!r}.")
        if not isinstance(self.chunk_tokens, int) or self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be an integer >= 1, got {self.chunk_tokens!r}.")
        if not isinstance(self.ngram, int) or self.ngram < 1:
            raise ValueError(f"ngram must be an integer >= 1, got {self.ngram!r}.")
        if not 0 <= self.max_overlap <= 1:
            raise ValueError(f"max_overlap must lie in [0, 1], got {self.max_overlap!r}.")
        try:
            formats = "{question}" in self.prompt_format and self.prompt_format.format(question="") is not None
        except (KeyError, IndexError, ValueError):
            formats = False
        if not formats:
            raise ValueError(f"prompt_format must contain {{question}} and no other field (write literal braces as "
                             f"{{{{ }}}}), got {self.prompt_format!r}.")

    @classmethod
    def for_template(cls, template: Template, **fields: Any) -> Settings:
        """Settings with the template's sampling defaults where `fields` give none (None = default)."""
        defaults = {k: getattr(template, k) for k in ("max_new_tokens", "temperature", "top_p", "top_k")}
        given = {k: v for k, v in fields.items() if v is not None}
        return cls(template=template.name, **{**defaults, **given})

    def sampling(self, shard: str) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, seed=shard_seed(self.seed, shard))


def shard_seed(seed: int, shard: str) -> int:
    """The sampling seed of one shard: a function of the run's seed and the shard's name."""
    return (seed * 1_000_003 + zlib.crc32(shard.encode("utf-8"))) % (1 << 31)


@dataclasses.dataclass(frozen=True)
class Row:
    """One generation request: a chunk of a document and a sample index."""

    document: Document
    chunk_index: int
    chunk: str
    sample: int


def shard_rows(documents: Sequence[Document], template: Template, tokenizer, settings: Settings
               ) -> tuple[list[Row], list[list[int]]]:
    """The rows of a shard in order (document, chunk, sample) and their prompt token ids."""
    count = token_counter(tokenizer)
    rows, prompts = [], []
    for document in documents:
        for index, chunk in enumerate(chunk_text(document.text, count, settings.chunk_tokens)):
            ids = template.encode(tokenizer, chunk, document.title)
            for sample in range(settings.samples):
                rows.append(Row(document, index, chunk, sample))
                prompts.append(ids)
    return rows, prompts


def _provenance(row: Row, shard: str, settings: Settings, completion: Completion) -> dict[str, Any]:
    return {"document_id": row.document.id, "shard": shard, "chunk": row.chunk_index, "sample": row.sample,
            "template": settings.template, "model": settings.model, "adapter": settings.adapter,
            "finish_reason": completion.finish_reason, "completion_tokens": len(completion.token_ids)}


def judge(shard: str, rows: Sequence[Row], completions: Sequence[Completion], template: Template, settings: Settings,
          scorer: AnswerScorer | None = None, markers: StrayMarkers | None = None
          ) -> tuple[list[dict], list[dict], Counter]:
    """(accepted rows, rejected rows, count per verdict) of a shard's completions, in row order (`validation`).

    markers: the stray markers (`Template.stray_markers` of the generator's tokenizer); default:
    the template's own, without a tokenizer's special tokens.
    """
    markers = markers if markers is not None else template.stray_markers()
    parsed = [parse(template.parser, c.text) for c in completions]
    verdicts: list[str | None] = [
        first_check(p, c.token_ids, c.finish_reason, r.chunk, settings.ngram, settings.max_overlap, markers)
        for p, c, r in zip(parsed, completions, rows, strict=True)]
    if settings.max_perplexity is not None:
        if scorer is None:
            raise ValueError("max_perplexity is set but no scoring model was given.")
        candidates = [i for i, v in enumerate(verdicts) if v is None]
        values = scorer.perplexities([settings.prompt_format.format(question=parsed[i].question) for i in candidates],
                                     [parsed[i].answer or "" for i in candidates])
        for i, value in zip(candidates, values, strict=True):
            if value > settings.max_perplexity:
                verdicts[i] = PERPLEXITY
    seen = Deduplicator()
    accepted, rejected, counts = [], [], Counter()
    for row, completion, pair, verdict in zip(rows, completions, parsed, verdicts, strict=True):
        if verdict is None and seen.is_duplicate(pair.question):
            verdict = DUPLICATE
        counts[verdict or VALID] += 1
        provenance = _provenance(row, shard, settings, completion)
        if verdict is None:
            accepted.append({"prompt": settings.prompt_format.format(question=pair.question), "response": pair.answer,
                             **provenance})
        else:
            rejected.append({"reason": verdict, "completion": completion.text, **provenance})
    return accepted, rejected, counts


def check_end_of_turn(generator: Generator, template: Template) -> None:
    """Raise ValueError when the generator would not stop at the template's end-of-turn tokens."""
    missing = set(template.end_token_ids(generator.tokenizer)) - set(generator.eos_token_ids)
    if missing:
        raise ValueError(f"template {template.name!r} ends completions at token ids {sorted(missing)}, which are not "
                         f"among the generator's eos_token_ids {generator.eos_token_ids}; build it with "
                         "`synthesis_generator` (or pass them as eos_token_ids).")


def synthesize_shard(path: Path, out_dir: Path, generator: Generator, template: Template, settings: Settings,
                     scorer: AnswerScorer | None = None, bar: tqdm | None = None) -> dict[str, Any]:
    """Generate, judge and write one shard (see the module docstring); returns its report.

    seconds: prepare (chunking, rendering, tokenizing), generate, validate (parsing and judging,
    perplexity included), write.
    """
    shard = shard_name(path)
    documents = read_shard(path)
    start = time.perf_counter()
    rows, prompts = shard_rows(documents, template, generator.tokenizer, settings)
    prepared = time.perf_counter()
    completions: list[Completion | None] = [None] * len(rows)
    remaining = Counter(id(r.document) for r in rows)
    for index, completion in generator.generate(prompts, settings.sampling(shard), progress=False):
        completions[index] = completion
        key = id(rows[index].document)
        remaining[key] -= 1
        if bar is not None and remaining[key] == 0:
            bar.update(1)
    generated = time.perf_counter()
    accepted, rejected, counts = judge(shard, rows, completions, template, settings, scorer,  # type: ignore[arg-type]
                                       template.stray_markers(generator.tokenizer))
    judged = time.perf_counter()
    report = {"shard": shard, "documents": len(documents), "chunks": len(rows) // settings.samples,
              "completions": len(rows), "counts": {k: counts[k] for k in sorted(counts)},
              "generated_tokens": sum(len(c.token_ids) for c in completions if c is not None),
              "seconds": {"prepare": prepared - start, "generate": generated - prepared, "validate": judged - generated}}
    with atomic_directory(out_dir / SHARDS_DIR / shard) as staging:
        _write_jsonl(staging / "pairs.jsonl", accepted)
        _write_jsonl(staging / "rejected.jsonl", rejected)
        report["seconds"]["write"] = time.perf_counter() - judged
        (staging / SHARD_REPORT).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _check_settings(out_dir: Path, settings: Settings) -> None:
    """Store the run's settings, or refuse a directory made with other ones (its shards would mix)."""
    path = out_dir / SETTINGS_FILE
    current = dataclasses.asdict(settings)
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored != current:
            changed = sorted(k for k in current.keys() | stored.keys() if stored.get(k) != current.get(k))
            raise ValueError(f"{out_dir} was made with other settings ({', '.join(changed)} differ); "
                             "use a new output directory or the same settings to resume.")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def synthesize(shards: Sequence[Path], out_dir: str | Path, generator: Generator, template: Template, settings: Settings,
               scorer: AnswerScorer | None = None, progress: bool = True) -> dict[str, Any]:
    """Synthesize every shard not finished yet in `out_dir`, then write the totals (`report.write_report`).

    The progress bar counts documents and shows accepted pairs per second.
    """
    out_dir = Path(out_dir)
    check_end_of_turn(generator, template)
    if settings.max_perplexity is not None and scorer is None:
        raise ValueError("max_perplexity is set but no scoring model was given.")
    _check_settings(out_dir, settings)
    todo = [p for p in shards if not (out_dir / SHARDS_DIR / shard_name(p) / SHARD_REPORT).is_file()]
    start = time.perf_counter()
    accepted = 0
    with tqdm(disable=not progress, unit="doc", desc="synthesize") as bar:
        for path in todo:
            report = synthesize_shard(path, out_dir, generator, template, settings, scorer, bar)
            accepted += report["counts"].get(VALID, 0)
            bar.set_postfix_str(f"{accepted / max(time.perf_counter() - start, 1e-9):.2f} pairs/s")
    return write_report(out_dir, [shard_name(p) for p in shards])
