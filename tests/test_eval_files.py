"""The evaluation's output files: resume, refusal of other settings or prompts, the paper's table, eval curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rho_jax.evaluation import sample_files
from rho_jax.evaluation.paper_table import TABLE1_TASKS, paper_rows_for
from rho_jax.evaluation.results import TaskResult, markdown, ordered_tasks, write_results
from rho_jax.evaluation.sample_files import ResumeMismatch


def _generation(idx: int, prompt: str, completion: str = "The answer is 3.") -> dict:
    return {"idx": idx, "prompt": prompt, "completion": completion, "finish_reason": "stop", "completion_tokens": 5}


def test_settings_are_recorded_and_other_settings_refused(tmp_path: Path) -> None:
    sample_files.check_settings(tmp_path, {"model": "a", "max_new_tokens": None}, overwrite=False)
    sample_files.check_settings(tmp_path, {"model": "a", "max_new_tokens": None}, overwrite=False)  # same: fine
    with pytest.raises(ResumeMismatch, match=r"max_new_tokens: None -> 64.*--overwrite"):
        sample_files.check_settings(tmp_path, {"model": "a", "max_new_tokens": 64}, overwrite=False)
    (tmp_path / "gsm8k.jsonl").write_text("{}\n")
    sample_files.check_settings(tmp_path, {"model": "a", "max_new_tokens": 64}, overwrite=True)
    assert not (tmp_path / "gsm8k.jsonl").exists()
    assert json.loads((tmp_path / sample_files.SETTINGS_FILE).read_text())["max_new_tokens"] == 64


def test_partial_file_with_a_cut_short_line_resumes_cleanly(tmp_path: Path) -> None:
    partial = sample_files.partial_path(tmp_path, "gsm8k")
    partial.write_text(json.dumps(_generation(0, "p0")) + "\n" + json.dumps(_generation(1, "p1"))[:20])
    done = sample_files.stored_generations(tmp_path, "gsm8k", {0: "p0", 1: "p1"})
    assert list(done) == [0]
    # The damaged line is gone, so appending continues on a clean line.
    assert partial.read_text() == json.dumps(_generation(0, "p0")) + "\n"


def test_changed_prompt_is_refused(tmp_path: Path) -> None:
    sample_files.partial_path(tmp_path, "gsm8k").write_text(json.dumps(_generation(0, "old prompt")) + "\n")
    with pytest.raises(ResumeMismatch, match="sample 0 differs"):
        sample_files.stored_generations(tmp_path, "gsm8k", {0: "new prompt"})


def test_finished_task_keeps_generations_outside_a_smaller_limit(tmp_path: Path) -> None:
    rows = [{"idx": i, "question": "q", "gt": "3", "prompt": f"p{i}", "code": ["The answer is 3."], "pred": ["3"],
             "score": [True], "finish_reason": "stop", "completion_tokens": 5} for i in range(3)]
    sample_files.write_final(tmp_path, "gsm8k", rows, kept=[])
    assert not sample_files.partial_path(tmp_path, "gsm8k").exists()
    done = sample_files.stored_generations(tmp_path, "gsm8k", {0: "p0"})  # a rerun with --limit 1
    assert sorted(done) == [0, 1, 2] and done[2]["completion"] == "The answer is 3."
    sample_files.write_final(tmp_path, "gsm8k", rows[:1], kept=[done[1], done[2]])
    again = sample_files.stored_generations(tmp_path, "gsm8k", {0: "p0", 1: "p1", 2: "p2"})  # back to all 3
    assert sorted(again) == [0, 1, 2]


def test_paper_rows_match_model_names() -> None:
    assert list(paper_rows_for("microsoft/rho-math-1b-v0.1")) == ["Rho-1-Math-1B (30B tokens)"]
    assert list(paper_rows_for("/models/TinyLlama-1.1B-intermediate")) == ["TinyLlama-1.1B"]
    assert paper_rows_for("runs/my-slm") == {}
    assert paper_rows_for("microsoft/rho-math-1b-v0.1")["Rho-1-Math-1B (30B tokens)"]["gsm8k"] == 36.2


def test_results_table_in_paper_order_with_the_paper_row(tmp_path: Path) -> None:
    results = [TaskResult("math", 500, 79, 0, 3), TaskResult("gsm8k", 1319, 477, 0, 0), TaskResult("my_task", 10, 5, 1, 0)]
    assert ordered_tasks([r.task for r in results]) == ["gsm8k", "math", "my_task"]
    text = markdown("microsoft/rho-math-1b-v0.1", results, {"limit": None})
    header, _, ours, paper = text.splitlines()[2:6]
    assert header == "| model | GSM8K | MATH | my_task | AVG |"
    assert ours == "| `rho-math-1b-v0.1` (this run) | 36.2 | 15.8 | 50.0 | 34.0 |"
    assert paper == "| Rho-1-Math-1B (30B tokens) (Rho-1 Table 1) | 36.2 | 15.6 | - | 25.9 |"
    document = write_results(tmp_path, "microsoft/rho-math-1b-v0.1", results, {"limit": None})
    assert document["tasks"]["gsm8k"] == {"accuracy": 36.16, "num_samples": 1319, "num_correct": 477, "timeouts": 0,
                                          "empty": 0}
    average = (477 / 1319 + 79 / 500 + 0.5) * 100 / 3
    assert json.loads((tmp_path / "results.json").read_text())["average"] == pytest.approx(average, abs=0.01)
    assert len(TABLE1_TASKS) == 9


def test_eval_curves_plot_loss_and_accuracy_panels(tmp_path: Path) -> None:
    from rho_jax.analysis import eval_curves

    for name, accuracies in (("clm", (2.0, 4.0)), ("slm", (3.0, 9.0))):
        run = tmp_path / name
        run.mkdir()
        records = [{"step": s, "tokens": t, "set": "heldout", "loss": 5.0 - s, "num_tokens": 100} for s, t in ((0, 0), (1, 10))]
        records += [{"step": s, "tokens": t, "task": "gsm8k", "accuracy": a, "num_samples": 50}
                    for (s, t), a in zip(((0, 0), (1, 10)), accuracies)]
        (run / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    finals = eval_curves.plot([tmp_path / "clm", tmp_path / "slm"], tmp_path / "eval.png")
    assert finals == {"clm": {"gsm8k accuracy (%)": 4.0, "heldout held-out loss (nats)": 4.0},
                      "slm": {"gsm8k accuracy (%)": 9.0, "heldout held-out loss (nats)": 4.0}}
    assert (tmp_path / "eval.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError, match="evaluated nothing"):
        eval_curves.read_eval(tmp_path)
