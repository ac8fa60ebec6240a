"""`python -m rho_jax.evaluate`: end to end on a tiny model, resume after an interruption, regrading, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rho_jax import evaluate
from rho_jax.evaluation.answers import extract_answer
from rho_jax.evaluation.sample_files import partial_path
from rho_jax.generation import Generator, SamplingParams, load_generator

EXEMPLARS = ("Question: How many clips did Natalia sell?\nAnswer: She sold 48 clips. The answer is 48.\n\n\n"
             "Question: What is 2 + 2?\nAnswer: 2 + 2 = 4. The answer is 4.\n")
TASK_YAML = """name: toy
description: toy word problems
source: {file: toy/test.jsonl}
question: "{question}"
gt: {field: answer, rule: after_hashes}
query_template: "Question: {question}\\nAnswer:"
kind: number
fewshot_file: toy.md
max_new_tokens: 12
"""


@pytest.fixture(scope="module")
def toy(tmp_path_factory, tiny_hf_dir) -> dict[str, Path]:
    """A tiny random model and a 6-sample task (its own data, exemplars and spec)."""
    root = tmp_path_factory.mktemp("toy")
    (root / "data" / "toy").mkdir(parents=True)
    rows = [{"question": f"Natalia sold {i} clips in May. How many clips?", "answer": f"She sold {i}.\n#### {i}"}
            for i in range(6)]
    (root / "data" / "toy" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "prompts").mkdir()
    (root / "prompts" / "toy.md").write_text(EXEMPLARS)
    (root / "toy.yaml").write_text(TASK_YAML)
    return {"root": root, "model": tiny_hf_dir("llama-gqa"), "task": root / "toy.yaml"}


def _run(toy: dict[str, Path], output: Path, *extra: str) -> int:
    return evaluate.main(["run", "--model", str(toy["model"]), "--tasks", str(toy["task"]),
                          "--data-dir", str(toy["root"] / "data"), "--fewshot-dir", str(toy["root"] / "prompts"),
                          "--output", str(output), "--batch-size", "4", *extra])


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class CountingGenerate:
    """Wraps `Generator.generate` to count the prompts it is asked to complete."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.prompts: list[str] = []
        real = Generator.generate

        def counted(generator, prompts, params, **kwargs):
            self.prompts.extend(prompts)
            return real(generator, prompts, params, **kwargs)

        monkeypatch.setattr(Generator, "generate", counted)


@pytest.mark.slow
def test_run_writes_graded_samples_that_match_the_generator_and_the_grader(toy, tmp_path) -> None:
    out = tmp_path / "out"
    assert _run(toy, out) == 0
    rows = _rows(out / "toy.jsonl")
    assert [r["idx"] for r in rows] == list(range(6))
    assert rows[0]["prompt"] == EXEMPLARS.strip() + "\n\n\nQuestion: Natalia sold 0 clips in May. How many clips?\nAnswer:"
    # Each completion is what the generator makes for the prompt alone (batching and slot refill change nothing).
    generator = load_generator(toy["model"], batch_size=1)
    params = SamplingParams(max_new_tokens=12, stop=("</s>", "\n\nQuestion:", "\n\nProblem:"))
    for row in rows[:3]:
        [(_, completion)] = list(generator.generate([row["prompt"]], params, progress=False))
        assert row["code"] == [completion.text] and row["finish_reason"] == completion.finish_reason
    for row in rows:
        assert row["pred"] == [extract_answer(row["code"][0], "number")]
        assert row["gt"] == str(row["idx"])
        assert row["score"] == [row["pred"][0] == row["gt"]]  # plain integers: equal iff the strings are
    results = json.loads((out / "results.json").read_text())
    correct = sum(r["score"][0] for r in rows)
    assert results["tasks"]["toy"]["num_correct"] == correct
    assert results["tasks"]["toy"]["accuracy"] == round(100 * correct / 6, 2)
    assert "| toy | AVG |" in (out / "results.md").read_text()
    assert not partial_path(out, "toy").exists()


@pytest.mark.slow
def test_interrupted_run_resumes_with_only_the_missing_generations(toy, tmp_path, monkeypatch) -> None:
    full = tmp_path / "full"
    assert _run(toy, full) == 0
    expected = _rows(full / "toy.jsonl")
    # An interrupted run: the settings, two finished generations and a line cut short by the kill.
    out = tmp_path / "interrupted"
    out.mkdir()
    (out / "settings.json").write_text((full / "settings.json").read_text())
    stored = [{"idx": r["idx"], "prompt": r["prompt"], "completion": r["code"][0], "finish_reason": r["finish_reason"],
               "completion_tokens": r["completion_tokens"]} for r in expected[:2]]
    partial_path(out, "toy").write_text("".join(json.dumps(s) + "\n" for s in stored) + json.dumps(stored[0])[:30])
    counter = CountingGenerate(monkeypatch)
    assert _run(toy, out) == 0
    assert sorted(counter.prompts) == sorted(r["prompt"] for r in expected[2:])
    assert _rows(out / "toy.jsonl") == expected
    # A finished task with a larger limit later: nothing is generated again for the first samples.
    counter.prompts.clear()
    assert _run(toy, out, "--limit", "2") == 0
    assert counter.prompts == []
    assert _rows(out / "toy.jsonl") == expected[:2]
    assert _run(toy, out) == 0
    assert counter.prompts == [] and _rows(out / "toy.jsonl") == expected  # the other 4 were kept


def test_other_settings_in_the_same_output_are_refused(toy, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "settings.json").write_text(json.dumps({"model": str(toy["model"]), "dtype": None, "max_new_tokens": 64,
                                                   "temperature": 0.0}))
    assert _run(toy, out) == 2
    assert "max_new_tokens: 64 -> None" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, message", [
    ("--tasks", "gsm9k", "gsm9k.*gsm8k"),  # an unknown task name; the message lists the shipped ones
    ("--data-dir", "nowhere", "toy/test.jsonl"),
    ("--limit", "0", "--limit must be a positive integer"),
])
def test_bad_input_is_refused_before_the_model_is_loaded(toy, tmp_path, capsys, flag, value, message) -> None:
    args = {"--model": str(tmp_path / "no-model"), "--tasks": str(toy["task"]), "--data-dir": str(toy["root"] / "data"),
            "--fewshot-dir": str(toy["root"] / "prompts"), "--output": str(tmp_path / "out"),
            flag: str(tmp_path / value) if flag == "--data-dir" else value}
    assert evaluate.main(["run", *(item for pair in args.items() for item in pair)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "no-model" not in err  # refused before the (missing) model is looked at


def test_a_row_without_the_question_field_is_refused(toy, tmp_path, capsys) -> None:
    data = tmp_path / "data" / "toy"
    data.mkdir(parents=True)
    (data / "test.jsonl").write_text(json.dumps({"query": "?", "answer": "x #### 1"}) + "\n")
    assert evaluate.main(["run", "--model", str(tmp_path / "no-model"), "--tasks", str(toy["task"]), "--data-dir",
                          str(tmp_path / "data"), "--fewshot-dir", str(toy["root"] / "prompts"),
                          "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "test.jsonl" in err and "question" in err


def test_tokenizer_larger_than_the_model_is_refused(toy, tmp_path, capsys) -> None:
    from rho_jax.models.parity import build_tiny_hf_model

    small = build_tiny_hf_model(tmp_path / "small", "llama-gqa", vocab_size=200)
    assert _run({**toy, "model": small}, tmp_path / "out", "--tokenizer", str(toy["model"])) == 2
    assert "do not belong together" in capsys.readouterr().err


def test_grade_reproduces_stored_verdicts_and_reports_differences(tmp_path, capsys) -> None:
    rows = [
        {"idx": 0, "gt": "18", "code": ["She makes 9 * 2 = 18 dollars. The answer is 18."], "score": [True]},
        {"idx": 1, "gt": "3", "code": ["So it takes 2 + 1 = 3 bolts in total. The answer is 3."], "score": [True]},
        {"idx": 2, "gt": "70000", "code": ["He made a profit of $70,000. The answer is 70,000."], "score": [True]},
        {"idx": 3, "gt": "540", "code": ["He runs 60 * 3 * 3 = 480 meters. The answer is 480."], "score": [True]},  # wrong
        {"idx": 4, "gt": "0.5", "code": ["The share is 50 percent. The answer is 50."], "score": [True]},  # x100 leniency
    ]
    path = tmp_path / "harness.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert evaluate.main(["grade", "--task", "gsm8k", "--completions", str(path), "--output", str(tmp_path / "re.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "accuracy 80.0 (4/5)" in out and "4 of 5" in out and "differing idx: [3]" in out
    regraded = _rows(tmp_path / "re.jsonl")
    assert [r["pred"][0] for r in regraded] == ["18", "3", "70,000", "480", "50"]  # equal to 70000 as numbers
    assert evaluate.main(["grade", "--task", "gsm8k", "--completions", str(path), "--strict-percent"]) == 0
    assert "accuracy 60.0 (3/5)" in capsys.readouterr().out
