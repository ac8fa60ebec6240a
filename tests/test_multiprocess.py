"""A real JAX cluster on CPU: processes on localhost (gloo collectives) run the training CLI.

Two processes with 4 devices each must train exactly like one process with 8 devices (same global
batches, global top-k over the whole batch, same checkpoints); a run saved on 8 devices continues
on 4 devices or on 2 processes with the losses of the uninterrupted run (resharding on restore).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from flax import nnx

from rho_jax.config import ModelSource
from rho_jax.data.prepare import main as prepare
from rho_jax.model_source import load_model
from rho_jax.run_dir import read_jsonl
from rho_jax.sharding import make_mesh
from rho_jax.train import main
from train_runs import ROOT, TINY, checkpoint_steps, losses, model_yaml, run_config

# Same global batches and computation; only the grouping of floating-point sums may differ (by
# process or by device count), which moves a float32 loss of ~8 by at most an ulp or two (1e-6).
CLOSE = dict(rtol=2e-6, atol=1e-6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(config: Path, processes: int, devices: int, timeout: float = 300) -> list[tuple[int, str]]:
    """Run `python -m rho_jax.train --config config` as `processes` processes of one cluster, each
    with `devices` CPU devices; (exit code, output) of each."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    command = [sys.executable, "-m", "rho_jax.train", "--config", str(config)]
    if processes > 1:
        command += ["--coordinator_address", f"127.0.0.1:{free_port()}", "--num_processes", str(processes)]
    started = [subprocess.Popen(command + (["--process_id", str(i)] if processes > 1 else []), cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(processes)]
    results = []
    try:
        for process in started:
            output, _ = process.communicate(timeout=timeout)
            results.append((process.returncode, output))
    finally:
        for process in started:
            process.kill()
    return results


def assert_succeeded(results: list[tuple[int, str]]) -> None:
    for i, (code, output) in enumerate(results):
        assert code == 0, f"process {i} exited with {code}:\n{output[-4000:]}"


def final_params(run: Path) -> list[np.ndarray]:
    model = load_model(ModelSource(init="checkpoint", path=str(run)), make_mesh())
    return [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))]


def eval_losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run / "eval.jsonl")]


@pytest.fixture(scope="module")
def cluster_runs(tmp_path_factory):
    """(directory, config sections of an SLM run on prepared rows, `config(name)` -> its config file).

    The directory holds `reference` (a CLM run on raw documents, the SLM run's reference model)
    and `slm`, the SLM run trained by one process with 8 devices.
    """
    tmp = tmp_path_factory.mktemp("cluster")
    prepared = {}
    for name in ("web", "clean"):
        prepared[name] = tmp / f"{name}-prepared"
        prepare(["--tokenizer", str(TINY / "tokenizer"), "--seq_len", "32", "--output", str(prepared[name]),
                 "--rows_per_shard", "64", str(TINY / f"{name}.jsonl")])
    model = {"init": "scratch", "config": model_yaml(tmp)}
    assert main(["--config", str(run_config(tmp, "reference", model=model, eval={"sets": {}}))]) == 0
    sources = [{"name": name, "paths": [str(path / "*.array_record")], "weight": weight}
               for (name, path), weight in zip(prepared.items(), (1, 3))]
    sections = dict(model=model, reference={"init": "checkpoint", "path": str(tmp / "reference")}, slm={"ratio": 0.5},
                    data={"sources": sources})
    assert main(["--config", str(run_config(tmp, "slm", **sections))]) == 0
    return tmp, lambda name: run_config(tmp, name, **sections)


def test_two_processes_train_exactly_like_one_process(cluster_runs):
    tmp, config = cluster_runs
    results = run_processes(config("slm-2x4"), processes=2, devices=4)
    assert_succeeded(results)
    one, two = tmp / "slm", tmp / "slm-2x4"
    assert list(losses(two)) == list(range(1, 9))  # written once, by process 0 only
    np.testing.assert_allclose(list(losses(two).values()), list(losses(one).values()), **CLOSE)
    np.testing.assert_allclose(eval_losses(two), eval_losses(one), **CLOSE)
    fractions = [[r["selected_fraction"] for r in read_jsonl(run / "metrics.jsonl")] for run in (one, two)]
    assert fractions[0] == fractions[1] and all(f == pytest.approx(0.5, abs=0.01) for f in fractions[1])
    assert checkpoint_steps(two) == checkpoint_steps(one) == [3, 5, 8]
    assert not list((two / "checkpoints" / "8").glob("data"))  # prepared rows: the position is the step
    for a, b in zip(final_params(two), final_params(one)):
        np.testing.assert_allclose(a, b, **CLOSE)
    (code0, output0), (code1, output1) = results
    assert "step 4 |" in output0 and "Done: 8 steps" in output0
    assert "step 4 |" not in output1 and "Done" not in output1  # only process 0 reports


@pytest.mark.parametrize("processes, devices", [(1, 4), (2, 2)])
def test_run_saved_on_8_devices_resumes_on_another_mesh(cluster_runs, processes, devices):
    tmp, config = cluster_runs
    name = f"slm-resume-{processes}x{devices}"
    shutil.copytree(tmp / "slm", tmp / name)
    for step in (5, 8):  # as if the 8-device run had stopped after its checkpoint at step 3
        shutil.rmtree(tmp / name / "checkpoints" / str(step))
    (tmp / name / "done.json").unlink()
    assert_succeeded(run_processes(config(name), processes=processes, devices=devices))
    resumed, uninterrupted = losses(tmp / name), losses(tmp / "slm")
    assert list(resumed) == list(range(1, 9))
    np.testing.assert_allclose(list(resumed.values()), list(uninterrupted.values()), **CLOSE)


def test_raw_document_runs_resume_only_on_the_same_process_count(cluster_runs):
    tmp, _ = cluster_runs
    shutil.copytree(tmp / "reference", tmp / "reference-copy")
    config = run_config(tmp, "reference-copy", model=yaml.safe_load((tmp / "reference.yaml").read_text())["model"],
                        eval={"sets": {}})
    results = run_processes(config, processes=2, devices=4)
    for code, output in results:
        assert code == 2, output
        assert "was saved by 1 process(es) reading raw documents" in output
        assert "Resume with 1 process(es), or train from prepared rows" in output
    assert checkpoint_steps(tmp / "reference-copy") == checkpoint_steps(tmp / "reference")  # nothing moved aside
