"""Few-shot evaluation of a model on tasks: generate, extract answers, grade, one result per task.

For each task: build every sample's prompt (all input checked before any generation), reuse the
generations an interrupted run already wrote, generate the rest greedily (by default) with the
task's stop strings, then extract each completion's answer and grade it against the ground truth.

    accuracy(task) = 100 * (samples whose extracted answer equals the ground truth) / (samples)

A grading timeout counts as wrong, as in the paper's harness.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rho_jax.evaluation import sample_files
from rho_jax.evaluation.answers import extract_answer
from rho_jax.evaluation.grading import grade_answers
from rho_jax.evaluation.results import TaskResult
from rho_jax.evaluation.tasks import Sample, TaskSpec
from rho_jax.generation import Generator, SamplingParams


def sampling_for(spec: TaskSpec, max_new_tokens: int | None, base: SamplingParams) -> SamplingParams:
    """`base` with the task's stop strings and its default length unless `max_new_tokens` overrides it."""
    return dataclasses.replace(base, stop=tuple(spec.stop), max_new_tokens=max_new_tokens or spec.max_new_tokens)


def generate_missing(generator: Generator, samples: Sequence[Sample], done: dict[int, dict[str, Any]],
                     params: SamplingParams, partial: Path | None, progress: bool = True) -> dict[int, dict[str, Any]]:
    """Generate the samples not in `done`, appending each finished row to `partial` (None: keep in memory)."""
    todo = [s for s in samples if s.idx not in done]
    if not todo:
        return done
    handle = partial.open("a") if partial is not None else None
    try:
        for position, completion in generator.generate([s.prompt for s in todo], params, progress=progress):
            sample = todo[position]
            row = {"idx": sample.idx, "prompt": sample.prompt, "completion": completion.text,
                   "finish_reason": completion.finish_reason, "completion_tokens": len(completion.token_ids)}
            done[sample.idx] = row
            if handle is not None:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                handle.flush()
    finally:
        if handle is not None:
            handle.close()
    return done


def graded_rows(spec: TaskSpec, samples: Sequence[Sample], generations: dict[int, dict[str, Any]], *,
                percent_leniency: bool, timeout_s: float | None = None) -> tuple[list[dict[str, Any]], TaskResult]:
    """The task's output rows (harness field names, idx order) and its result."""
    completions = [generations[s.idx]["completion"] for s in samples]
    preds = [extract_answer(text, spec.kind) for text in completions]
    grading_options = {} if timeout_s is None else {"timeout_s": timeout_s}
    graded = grade_answers(preds, [s.gt for s in samples], percent_leniency=percent_leniency, **grading_options)
    rows = []
    for sample, completion, pred, correct in zip(samples, completions, preds, graded.correct):
        generation = generations[sample.idx]
        rows.append({"idx": sample.idx, "question": sample.question, "gt": sample.gt, **sample.fields,
                     "prompt": sample.prompt, "code": [completion], "pred": [pred], "score": [bool(correct)],
                     "finish_reason": generation["finish_reason"],
                     "completion_tokens": generation["completion_tokens"]})
    result = TaskResult(spec.name, len(rows), sum(r["score"][0] for r in rows), graded.timeouts,
                        sum(not r["pred"][0] for r in rows))
    return rows, result


def evaluate_task(generator: Generator, spec: TaskSpec, samples: Sequence[Sample], params: SamplingParams, *,
                  out: Path | None, percent_leniency: bool = True, progress: bool = True) -> TaskResult:
    """Evaluate one task; with `out`, reuse the generations stored there and write its sample files
    (see `sample_files`)."""
    prompts = {s.idx: s.prompt for s in samples}
    done = sample_files.stored_generations(out, spec.name, prompts) if out is not None else {}
    partial = sample_files.partial_path(out, spec.name) if out is not None else None
    generations = generate_missing(generator, samples, done, params, partial, progress)
    rows, result = graded_rows(spec, samples, generations, percent_leniency=percent_leniency)
    if out is not None:
        sample_files.write_final(out, spec.name, rows, [g for idx, g in generations.items() if idx not in prompts])
    return result
