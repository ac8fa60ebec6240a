"""The training CLI end to end: metrics, checkpoints at token thresholds, exact resume after
SIGTERM / SIGKILL, unreadable checkpoints skipped, NaN stop, export, and bad input refused early."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from train_runs import ROOT, TOKENS_PER_STEP, checkpoint_steps, losses, read_jsonl, run_config

from rho_jax.train import STOPPED, Trainer, main
from rho_jax.training.config import load_config

REQUIRED_METRICS = {"step", "tokens", "loss", "loss_selected", "loss_unselected", "loss_all",
                    "selected_fraction", "lr", "tokens_per_sec"}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted CLM run (also the reference model of the SLM tests)."""
    tmp = tmp_path_factory.mktemp("reference")
    assert main(["--config", str(run_config(tmp, "run", logging={"every_steps": 4, "progress_bar": True,
                                                                  "tensorboard": True}))]) == 0
    return tmp / "run"


@pytest.mark.slow
def test_run_writes_metrics_checkpoints_and_eval(reference_run):
    records = read_jsonl(reference_run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all(REQUIRED_METRICS <= set(r) for r in records)
    assert [r["tokens"] for r in records] == [TOKENS_PER_STEP * s for s in range(1, 9)]
    assert all(r["selected_fraction"] == 1.0 and r["loss"] == r["loss_all"] for r in records)  # CLM
    assert records[-1]["loss"] < records[0]["loss"]
    # every 600 tokens at 256 tokens per step: first steps reaching 600, 1200, 1800 -> 3, 5, 8 (8 is also the end)
    assert checkpoint_steps(reference_run) == [3, 5, 8]
    evals = read_jsonl(reference_run / "eval.jsonl")
    assert [(e["step"], e["set"]) for e in evals] == [(0, "heldout"), (4, "heldout"), (8, "heldout")]
    assert evals[-1]["loss"] < evals[0]["loss"] and evals[0]["num_tokens"] > 0
    resolved = yaml.safe_load((reference_run / "config.yaml").read_text())
    assert resolved["slm"]["ratio"] == 1.0 and resolved["checkpoint"]["every_tokens"] == 600
    assert (reference_run / "tokenizer" / "tokenizer.json").exists()
    assert json.loads((reference_run / "done.json").read_text())["step"] == 8
    assert list((reference_run / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_retention_keeps_the_last_n_and_every_mth(tmp_path):
    # token-interval saves at steps 3, 5, 8; keep_every=2 keeps the 2nd (step 5); keep_last=1 keeps 8
    config = run_config(tmp_path, "run", checkpoint={"every_tokens": 600, "keep_last": 1, "keep_every": 2},
                        eval={"sets": {}})
    assert main(["--config", str(config)]) == 0
    assert checkpoint_steps(tmp_path / "run") == [5, 8]


@pytest.mark.parametrize("every, keep_every, expected_saves, expected_permanent", [
    (600, 2, [3, 5, 8], [5]),
    (256, 3, [1, 2, 3, 4, 5, 6, 7, 8], [3, 6]),
    (10_000, None, [], []),
])
def test_checkpoint_schedule(every, keep_every, expected_saves, expected_permanent):
    from rho_jax.training.checkpoint import interval_save_steps, permanent_steps
    from rho_jax.training.config import CheckpointConfig

    assert interval_save_steps(every, TOKENS_PER_STEP, 8) == expected_saves
    assert permanent_steps(CheckpointConfig(every_tokens=every, keep_every=keep_every), TOKENS_PER_STEP, 8) == expected_permanent


@pytest.mark.slow
def test_rerun_of_a_finished_run_does_nothing(reference_run, capsys):
    before = (reference_run / "metrics.jsonl").read_text()
    assert main(["--config", str(reference_run.parent / "run.yaml")]) == 0
    assert "already complete" in capsys.readouterr().err
    assert (reference_run / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_slm_run_with_the_reference_checkpoint(reference_run, tmp_path):
    config = run_config(tmp_path, "slm", reference={"init": "checkpoint", "path": str(reference_run)},
                        slm={"ratio": 0.6}, train={"batch_size": 8, "total_steps": 3})
    assert main(["--config", str(config)]) == 0
    records = read_jsonl(tmp_path / "slm" / "metrics.jsonl")
    for r in records:
        assert r["selected_fraction"] == pytest.approx(0.6, abs=1 / 256)
        assert {"ref_loss", "excess_loss"} <= set(r)
        assert r["loss"] == r["loss_selected"] != r["loss_all"]


def _start(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rho_jax.train", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def _wait_for(condition, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"training exited early:\n{process.stdout.read()}")
        if time.time() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the training run")
        time.sleep(0.05)


def _metric_lines(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
def test_sigterm_saves_and_resume_is_exact(reference_run, tmp_path):
    config = run_config(tmp_path, "run")
    run = tmp_path / "run"
    process = _start(config)
    _wait_for(lambda: _metric_lines(run) >= 1, process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == STOPPED, output
    stopped_at = len(read_jsonl(run / "metrics.jsonl"))
    assert stopped_at < 8 and "SIGTERM: saved a checkpoint at step" in output
    assert checkpoint_steps(run)[-1] == stopped_at
    assert main(["--config", str(config)]) == 0
    assert losses(run) == losses(reference_run)


@pytest.mark.slow
def test_stop_signal_during_a_step_with_donated_state(tmp_path, monkeypatch):
    """A signal that lands while a step runs (its donated input state already deleted) is recorded,
    not a crash: `signal.signal` formats the handler it replaces (a Trainer method), and formatting
    the Trainer must not read its arrays."""
    trainer = Trainer.setup(load_config(run_config(tmp_path, "run")))

    def step_interrupted_by_sigterm(self, log_):
        jax.tree.leaves(self.state.params)[0].delete()  # what a running step's buffer donation does
        os.kill(os.getpid(), signal.SIGTERM)
        return self.stop_signal is not None

    monkeypatch.setattr(Trainer, "_loop", step_interrupted_by_sigterm)
    assert trainer.run() == STOPPED and trainer.stop_signal == "SIGTERM"


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_resumes_exactly(reference_run, tmp_path):
    config = run_config(tmp_path, "run")
    run = tmp_path / "run"
    process = _start(config)
    _wait_for(lambda: (run / "checkpoints" / "3").is_dir() and _metric_lines(run) >= 4, process)
    process.kill()
    process.communicate()
    assert checkpoint_steps(run)[-1] < 8
    assert main(["--config", str(config)]) == 0
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))  # steps redone after the checkpoint are not repeated
    assert losses(run) == losses(reference_run)


@pytest.mark.slow
def test_unfinished_and_truncated_checkpoints_are_skipped(reference_run, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    (run / "done.json").unlink()
    # a save killed half-way (orbax's temporary directory) and a finished one truncated by hand
    (run / "checkpoints" / "9.orbax-checkpoint-tmp-1234").mkdir()
    shutil.rmtree(run / "checkpoints" / "8" / "params")
    for step in (3, 5):
        shutil.rmtree(run / "checkpoints" / str(step))
    shutil.copytree(reference_run / "checkpoints" / "5", run / "checkpoints" / "5")
    assert main(["--config", str(reference_run.parent / "run.yaml"), f"output_dir={run}"]) == 0
    assert "never completed" in caplog.text and "cannot be restored" in caplog.text
    assert (run / "checkpoints" / "9.orbax-checkpoint-tmp-1234").is_dir()  # left in place
    moved = list((run / "checkpoints_unreadable").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("8-")  # set aside, not deleted
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(1, 9))
    assert losses(run) == losses(reference_run)  # resumed from step 5 and redid 6..8 exactly


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, capsys):
    config = run_config(tmp_path, "run", optimizer={"learning_rate": 1e9, "clip_norm": None, "warmup_steps": 0},
                        checkpoint={"every_tokens": 256, "keep_last": 10})
    assert main(["--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "stopping without saving" in err
    bad_step = int(re.search(r"loss is \S+ at step (\d+)", err).group(1))
    saved = checkpoint_steps(tmp_path / "run")
    assert saved == list(range(1, bad_step)) and f"Last good checkpoint: step {bad_step - 1}" in err


def test_export_final_checkpoint_to_hf(reference_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from rho_jax.convert import main as convert
    from rho_jax.models import load_hf

    assert convert(["to-hf", str(reference_run), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "tokenizer.json").exists()
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert hf.config.num_hidden_layers == 2
    exported = load_hf(tmp_path / "hf")
    assert convert(["to-hf", str(reference_run / "checkpoints" / "3"), str(tmp_path / "hf3")]) == 0
    early = load_hf(tmp_path / "hf3")
    ids = np.arange(16, dtype=np.int32)[None]
    assert not np.allclose(exported(ids), early(ids))  # different checkpoints, different weights


@pytest.mark.parametrize("change, message", [
    ({"data": {"sources": [{"paths": ["/no/such/*.jsonl"]}]}}, "matches no file"),
    ({"data": {"sources": [{"paths": ["EMPTY"]}]}}, "no documents"),
    ({"data": {"seq_len": 128}}, "exceeds the model's max_position_embeddings"),
    ({"output_dir": "/proc/rho_jax_cannot_write_here"}, "is not writable"),
    ({"model": {"init": "hf", "path": "/no/such/model", "config": None}}, "is not a directory"),
    ({"data": {"tokenizer": "/no/such/tokenizer"}}, "tokenizer directory /no/such/tokenizer does not exist"),
    ({"mesh": {"data": 3}}, "cannot fill 8 devices"),
    ({"train": {"batch_size": 12}}, "not divisible by the 8 batch shards"),
])
def test_bad_input_fails_before_training(tmp_path, capsys, change, message):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    if "data" in change and "sources" in change["data"]:
        change["data"]["sources"][0]["paths"] = [str(empty) if p == "EMPTY" else p for p in change["data"]["sources"][0]["paths"]]
    config = run_config(tmp_path, "run", **change)
    cfg = yaml.safe_load(config.read_text())
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    config.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(config)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_tokenizer_mismatch_between_reference_and_data_is_refused(reference_run, tmp_path, capsys):
    from rho_jax.models.parity import build_tiny_tokenizer

    other = tmp_path / "other-tokenizer"
    build_tiny_tokenizer(other)
    ref = tmp_path / "ref"
    shutil.copytree(reference_run, ref)
    shutil.rmtree(ref / "tokenizer")
    shutil.copytree(other, ref / "tokenizer")
    config = run_config(tmp_path, "slm", reference={"init": "checkpoint", "path": str(ref)}, slm={"ratio": 0.6})
    assert main(["--config", str(config)]) == 2
    assert "the reference's tokenizer" in capsys.readouterr().err


def test_changed_config_in_existing_run_is_refused(reference_run, capsys):
    assert main(["--config", str(reference_run.parent / "run.yaml"), "data.seq_len=16"]) == 2
    err = capsys.readouterr().err
    assert "holds a run with a different configuration" in err and "data.seq_len: 32 -> 16" in err
