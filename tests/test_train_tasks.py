"""Few-shot task accuracy during training (`eval.tasks`): logged beside held-out loss, generated with
the parameters of the step it is logged at, and bad task input refused before anything compiles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_runs import read_jsonl, run_config

from rho_jax.evaluation.answers import extract_answer
from rho_jax.generation import SamplingParams, load_generator
from rho_jax.train import main

TASK_YAML = """name: toy
description: toy sums
source: {file: toy/test.jsonl}
question: "{question}"
gt: {field: answer, rule: after_hashes}
query_template: "Question: {question}\\nAnswer:"
kind: number
fewshot_file: toy.md
max_new_tokens: 6
"""


def _task_files(tmp: Path, rows: int = 4) -> dict:
    (tmp / "data" / "toy").mkdir(parents=True)
    (tmp / "data" / "toy" / "test.jsonl").write_text("".join(
        json.dumps({"question": f"What is {i} plus one?", "answer": f"{i} + 1 = {i + 1}.\n#### {i + 1}"}) + "\n"
        for i in range(rows)))
    (tmp / "prompts").mkdir()
    (tmp / "prompts" / "toy.md").write_text("Question: What is one plus one?\nAnswer: The answer is 2.\n")
    (tmp / "toy.yaml").write_text(TASK_YAML)
    return {"task_data_dir": str(tmp / "data"), "fewshot_dir": str(tmp / "prompts"), "generation_batch_size": 8,
            "tasks": {str(tmp / "toy.yaml"): {"limit": 3}}}


@pytest.mark.slow
def test_task_accuracy_is_logged_at_every_evaluation_with_that_steps_parameters(tmp_path: Path) -> None:
    config = run_config(tmp_path, "run", eval=_task_files(tmp_path), optimizer={"learning_rate": 3e-2, "warmup_steps": 1})
    assert main(["--config", str(config)]) == 0
    run = tmp_path / "run"
    records = read_jsonl(run / "eval.jsonl")
    assert [(r["step"], r.get("set") or r.get("task")) for r in records] == [
        (0, "heldout"), (0, "toy"), (4, "heldout"), (4, "toy"), (8, "heldout"), (8, "toy")]
    tasks = [r for r in records if "task" in r]
    assert all(r["num_samples"] == 3 and 0 <= r["accuracy"] <= 100 for r in tasks)
    for record in tasks:
        rows = [json.loads(line) for line in (run / "eval_samples" / "toy" / f"step_{record['step']}.jsonl").open()]
        assert [r["idx"] for r in rows] == [0, 1, 2]
        assert record["num_correct"] == sum(r["score"][0] for r in rows)
        assert all(r["pred"] == [extract_answer(r["code"][0], "number")] for r in rows)
    # The last evaluation generated with the final parameters: a generator loaded from the final
    # checkpoint (not the evaluator's, which was built at step 0) writes the same completions.
    final = [json.loads(line) for line in (run / "eval_samples" / "toy" / "step_8.jsonl").open()]
    generator = load_generator(run, batch_size=1)
    params = SamplingParams(max_new_tokens=6, stop=("</s>", "\n\nQuestion:", "\n\nProblem:"))
    completions = dict(generator.generate([r["prompt"] for r in final], params, progress=False))
    assert [final[i]["code"][0] for i in range(3)] == [completions[i].text for i in range(3)]
    first = [json.loads(line) for line in (run / "eval_samples" / "toy" / "step_0.jsonl").open()]
    assert [r["code"] for r in first] != [r["code"] for r in final]  # training changed what the model writes


@pytest.mark.parametrize("change, message", [
    (lambda files: {**files, "task_data_dir": "/nonexistent"}, r"eval\.tasks: .*toy/test\.jsonl"),
    (lambda files: {**files, "tasks": {"gsm9k": {"limit": 2}}}, r"eval\.tasks: .*gsm9k.*gsm8k"),
    (lambda files: {**files, "generation_batch_size": 3}, r"generation_batch_size 3 is not divisible"),
])
def test_bad_task_input_is_refused_before_training(tmp_path: Path, capsys, change, message) -> None:
    import re

    config = run_config(tmp_path, "run", eval=change(_task_files(tmp_path)))
    assert main(["--config", str(config)]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run" / "checkpoints").exists()
