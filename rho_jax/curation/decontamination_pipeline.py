"""The decontamination pipeline: JSONL corpus -> n-gram filter -> (embedding near-duplicates) -> JSONL shards.

Everything that can be wrong with the input is found before any task starts (`check_corpus`,
`NGramIndex.load`, `check_run_settings`). Output folder:

    run.json                  the run's settings; a rerun into the same folder must use the same ones
    documents/NNNNN.jsonl     kept documents (modes drop and cut): text, id and the input's other fields
    excluded/NNNNN.jsonl      dropped documents, with `filter_reason` and `contamination`
    report/NNNNN.jsonl        contaminated (document, evaluation item) pairs; NNNNN.counts.json per task
    near_duplicates/NNNNN.jsonl   embedding near-duplicates (with a cosine threshold)
    logs/                     datatrove's logs, stats and completion markers (resume)
    summary.json, summary.md  `rho_jax.curation.decontamination_summary`
NNNNN is the datatrove task (rank); task r reads input files r, r + tasks, ...
"""

from __future__ import annotations

import glob
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from datatrove.data import Document
from datatrove.io import get_datafolder
from datatrove.pipeline.writers import JsonlWriter

from rho_jax.curation.corpus import SHARD_GLOB, corpus_reader
from rho_jax.curation.decontamination import CutSettings, NGramDecontamination
from rho_jax.curation.near_duplicates import NearDuplicateReport
from rho_jax.curation.ngrams import DecontaminationError

__all__ = ["RunSettings", "build_pipeline", "check_corpus", "check_run_settings", "split_input"]

RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunSettings:
    """What a decontamination run does; recorded in run.json so that a resumed run cannot change it."""

    index: str
    index_sha256: str
    input: str
    mode: str
    tasks: int
    cut: CutSettings = CutSettings()
    text_key: str = "text"
    id_key: str = "id"
    near_duplicate_threshold: float | None = None
    embed: str = "bow"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_input(spec: str) -> tuple[str, str]:
    """(folder, glob pattern relative to it) of `--input`: a folder (its JSONL shards, any depth) or a glob."""
    if not glob.has_magic(spec):
        return spec.rstrip("/") or "/", SHARD_GLOB
    parts = Path(spec).parts
    first_magic = next(k for k, part in enumerate(parts) if glob.has_magic(part))
    folder = str(Path(*parts[:first_magic])) if first_magic else "."
    return folder, str(Path(*parts[first_magic:]))


def check_corpus(folder: str, pattern: str, text_key: str) -> list[str]:
    """The corpus files, after checking that there are some and that the first record of each is a JSON
    object with a string `text_key` field (a wrong field name is found here, not after hours of work)."""
    data = get_datafolder(folder)
    try:
        files = data.list_files(glob_pattern=pattern)
    except FileNotFoundError:
        files = []
    if not files:
        raise DecontaminationError(f"no input files: {folder} holds nothing that matches {pattern!r}")
    for name in files:
        with data.open(name, "rt", compression="infer") as handle:
            first = next(((number, line) for number, line in enumerate(handle, 1) if line.strip()), None)
        if first is None:
            continue
        number, line = first
        where = f"{data.resolve_paths(name)}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DecontaminationError(f"{where}: not valid JSON ({err})") from None
        if not isinstance(record, dict) or text_key not in record:
            fields = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
            raise DecontaminationError(f"{where}: the record has no {text_key!r} field (it has: {fields}); "
                                       "name the field that holds the text with --text-field")
        if not isinstance(record[text_key], str):
            raise DecontaminationError(f"{where}: field {text_key!r} must be a string, got "
                                       f"{type(record[text_key]).__name__}")
    return files


def check_run_settings(output: Path, settings: RunSettings) -> None:
    """Record `settings` in output/run.json, or refuse if the folder holds a run made with other settings."""
    path = Path(output) / RUN_FILE
    wanted = json.loads(json.dumps(asdict(settings)))
    if path.is_file():
        found = json.loads(path.read_text())
        if found != wanted:
            changed = sorted(key for key in set(found) | set(wanted) if found.get(key) != wanted.get(key))
            raise DecontaminationError(f"{output} holds a run made with other settings ({', '.join(changed)} differ: "
                                       f"{ {key: found.get(key) for key in changed} } there); use another --output "
                                       "or the same settings to resume")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(wanted, indent=1) + "\n")


def build_pipeline(settings: RunSettings, output: Path) -> list:
    """reader -> NGramDecontamination (-> NearDuplicateReport) (-> writer of the kept documents)."""
    output = Path(output)
    folder, pattern = split_input(settings.input)
    excluded = None if settings.mode == "report" else _writer(output / "excluded")
    pipeline = [
        corpus_reader(folder, text_key=settings.text_key, id_key=settings.id_key, glob_pattern=pattern),
        NGramDecontamination(settings.index, str(output / "report"), mode=settings.mode, cut=settings.cut,
                             exclusion_writer=excluded),
    ]
    if settings.near_duplicate_threshold is not None:
        pipeline.append(NearDuplicateReport(settings.index, str(output / "near_duplicates"), embed=settings.embed,
                                            threshold=settings.near_duplicate_threshold))
    if settings.mode != "report":
        pipeline.append(_writer(output / "documents"))
    return pipeline


def _flat_record(_writer: JsonlWriter, document: Document) -> dict:
    """A document as one flat JSON object: text, id, then its metadata (the input's other fields, ...)."""
    return {"text": document.text, "id": document.id, **document.metadata}


def _writer(folder: Path) -> JsonlWriter:
    """Plain JSONL shards NNNNN.jsonl (what `rho_jax.data` reads), one per task."""
    return JsonlWriter(str(folder), compression=None, adapter=_flat_record)
