"""Per-task output files of `evaluate run`, written so an interrupted run loses nothing and resumes.

    <out>/<task>.partial.jsonl   one line per finished generation, appended and flushed as rows
                                 finish: {"idx", "prompt", "completion", "finish_reason", "completion_tokens"}
    <out>/<task>.jsonl           the graded task, written atomically once every sample is generated:
                                 one line per sample in idx order, with the harness's field names
                                 (idx, question, gt, code=[completion], pred=[prediction], score=[verdict])
    <out>/settings.json          what the completions depend on (model, sampling); a resume with other
                                 settings is refused

A kill can only cut the partial file's last line short; that line is dropped and regenerated. A
rerun reuses every stored generation (also those of a finished task, e.g. with a larger --limit)
and grades again, so changing only the grading options costs no generation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rho_jax.integrity import write_json_atomic, write_text_atomic
from rho_jax.training.run_dir import read_jsonl

SETTINGS_FILE = "settings.json"
# What a generation records besides its prompt and completion.
GENERATION_FIELDS = ("finish_reason", "completion_tokens")


class ResumeMismatch(ValueError):
    """An output directory holds results made with other settings or prompts than this run's."""


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write `rows` as JSON lines, atomically (a reader sees the old file or the whole new one)."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def partial_path(out: Path, task: str) -> Path:
    return out / f"{task}.partial.jsonl"


def final_path(out: Path, task: str) -> Path:
    return out / f"{task}.jsonl"


def check_settings(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Record `settings` in `out`; refuse (ResumeMismatch) if `out` holds results made with others,
    unless `overwrite`, which removes every earlier task file."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / SETTINGS_FILE
    if path.is_file() and not overwrite:
        stored = json.loads(path.read_text())
        changed = sorted(key for key in settings.keys() | stored.keys() if settings.get(key) != stored.get(key))
        if changed:
            details = "; ".join(f"{key}: {stored.get(key)!r} -> {settings.get(key)!r}" for key in changed)
            raise ResumeMismatch(f"{out} holds results made with other settings ({details}). Use another "
                                 "--output, or --overwrite to discard them.")
    if overwrite:
        for old in [*out.glob("*.partial.jsonl"), *out.glob("*.jsonl")]:
            old.unlink()
    write_json_atomic(path, settings)


def _check_prompt(path: Path, idx: int, stored: str, prompts: dict[int, str]) -> None:
    if prompts.get(idx) != stored:
        raise ResumeMismatch(f"{path}: the stored prompt of sample {idx} differs from the one built now (the task's "
                             "data, exemplars or template changed). Use another --output, or --overwrite.")


def stored_generations(out: Path, task: str, prompts: dict[int, str]) -> dict[int, dict[str, Any]]:
    """The generations an earlier run of the task already made (from its graded file and its partial
    file), by idx. `prompts` maps the idx of each sample of this run to the prompt it builds; a stored
    prompt that differs means the task's data or exemplars changed: ResumeMismatch. Generations of
    samples outside this run (a smaller --limit) are returned too, so that they are kept."""
    done: dict[int, dict[str, Any]] = {}
    final = final_path(out, task)
    for row in read_jsonl(final) if final.is_file() else []:
        if row["idx"] in prompts:
            _check_prompt(final, row["idx"], row["prompt"], prompts)
        done[row["idx"]] = {"idx": row["idx"], "prompt": row["prompt"], "completion": row["code"][0],
                            **{key: row[key] for key in GENERATION_FIELDS}}
    partial = partial_path(out, task)
    if partial.is_file():
        rows = read_jsonl(partial)
        for row in rows:
            if row["idx"] in prompts:
                _check_prompt(partial, row["idx"], row["prompt"], prompts)
            done[row["idx"]] = row
        # Rewrite without a cut-short last line, so appending continues on a clean line.
        write_jsonl(partial, rows)
    return done


def write_final(out: Path, task: str, rows: list[dict[str, Any]], kept: list[dict[str, Any]]) -> None:
    """Write the graded task atomically; the partial file then keeps only the generations `kept`
    (those of samples outside this run), or is removed."""
    write_jsonl(final_path(out, task), rows)
    if kept:
        write_jsonl(partial_path(out, task), kept)
    else:
        partial_path(out, task).unlink(missing_ok=True)
