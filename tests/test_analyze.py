"""Analysis: H/L token categories on a constructed example and on a real run, the selection page,
and the selected vs unselected loss curves."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from train_runs import TINY, run_config

from rho_jax.analysis.dynamics import CATEGORIES, Dynamics, classify
from rho_jax.analysis.loss_curves import ema
from rho_jax.analyze import main as analyze
from rho_jax.train import main as train
from rho_jax.training.run_dir import read_jsonl

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_classify_a_constructed_example():
    first = np.array([3.0, 3.0, 0.5, 0.5, 1.0])
    last = np.array([3.0, 0.5, 3.0, 0.5, 1.0])
    names = [CATEGORIES[i] for i in classify(first, last, threshold=1.0)]
    assert names == ["H->H", "H->L", "L->H", "L->L", "L->L"]  # a loss equal to the threshold is Low


def test_dynamics_summary_of_a_constructed_example():
    # 3 checkpoints x 4 tokens: one token of each category
    losses = np.array([[4.0, 4.0, 0.2, 0.2],
                       [3.0, 1.0, 1.0, 0.1],
                       [3.5, 0.4, 2.0, 0.3]])
    summary = Dynamics.of([10, 20, 30], losses, threshold=1.5).summary()
    assert {name: c["fraction"] for name, c in summary["categories"].items()} == dict.fromkeys(CATEGORIES, 0.25)
    assert summary["categories"]["H->L"]["mean_loss"] == pytest.approx([4.0, 1.0, 0.4])
    assert summary["categories"]["L->H"]["mean_loss"] == pytest.approx([0.2, 1.0, 2.0])
    assert summary["mean_loss"] == pytest.approx(losses.mean(axis=1))
    assert Dynamics.of([1, 2], losses[:2]).threshold == pytest.approx(np.median(losses[0]))  # the default
    with pytest.raises(ValueError, match="at least 2 checkpoints"):
        Dynamics.of([1], losses[:1])


def test_ema():
    np.testing.assert_allclose(ema([1.0, 2.0, 3.0], 0.0), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(ema([2.0, 2.0, 2.0], 0.9), [2.0, 2.0, 2.0])  # bias-corrected
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\)"):
        ema([1.0], 1.0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A CLM run (the reference) and an SLM run scored by it, both with checkpoints at steps 3, 5, 8."""
    tmp = tmp_path_factory.mktemp("analyze")
    assert train(["--config", str(run_config(tmp, "reference"))]) == 0
    slm = run_config(tmp, "slm", reference={"init": "checkpoint", "path": str(tmp / "reference")}, slm={"ratio": 0.6})
    assert train(["--config", str(slm)]) == 0
    return tmp


@pytest.mark.slow
def test_dynamics_of_a_run(runs, tmp_path):
    out = tmp_path / "dynamics"
    assert analyze(["dynamics", "--run", str(runs / "slm"), "--data", str(TINY / "heldout.jsonl"), "--output", str(out),
                    "--max-rows", "16"]) == 0
    summary = json.loads((out / "dynamics.json").read_text())
    assert summary["steps"] == [3, 5, 8]
    assert sum(c["fraction"] for c in summary["categories"].values()) == pytest.approx(1.0)
    assert sum(c["count"] for c in summary["categories"].values()) == summary["num_tokens"] > 0
    # independent check: the held-out loss the trainer logged at its last step (same 16 rows)
    final_eval = [e for e in read_jsonl(runs / "slm" / "eval.jsonl") if e["step"] == 8][0]
    assert summary["num_tokens"] == final_eval["num_tokens"]
    assert summary["mean_loss"][-1] == pytest.approx(final_eval["loss"], rel=1e-5)
    assert (out / "dynamics.png").read_bytes().startswith(PNG_MAGIC)
    assert "| H->L |" in (out / "dynamics.md").read_text()


@pytest.mark.slow
def test_selection_page(runs, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(" ".join(json.loads(line)["text"] for line in (TINY / "heldout.jsonl").read_text().splitlines()[:3]))
    page = tmp_path / "page.html"
    assert analyze(["selection", "--model", str(runs / "slm"), "--reference", str(runs / "reference"), "--text",
                    str(text), "--output", str(page), "--ratio", "0.5", "--max-rows", "2"]) == 0
    html = page.read_text()
    selected = len(re.findall(r'<span class="sel"', html))
    targets = len(re.findall(r'title="score ', html))
    assert targets > 0 and selected == -(-targets // 2)  # ceil(0.5 x targets): one selection over the page
    assert "Score <b>excess</b>, ratio 0.5" in html


@pytest.mark.slow
def test_loss_curves(runs, tmp_path, capsys):
    png = tmp_path / "curves.png"
    assert analyze(["curves", "--run", str(runs / "slm"), "--run", str(runs / "reference"), "--output", str(png),
                    "--smoothing", "0"]) == 0
    assert png.read_bytes().startswith(PNG_MAGIC)
    finals = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    last = read_jsonl(runs / "slm" / "metrics.jsonl")[-1]
    assert finals["slm"] == pytest.approx({k: last[k] for k in ("loss_selected", "loss_unselected", "loss_all")})


def test_analysis_errors(tmp_path, capsys):
    assert analyze(["curves", "--run", str(tmp_path), "--output", str(tmp_path / "x.png")]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err
    assert analyze(["dynamics", "--run", str(tmp_path), "--data", "x.jsonl", "--output", str(tmp_path / "d")]) == 2
    assert "has no checkpoints" in capsys.readouterr().err
