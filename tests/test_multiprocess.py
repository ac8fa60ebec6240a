"""A real JAX cluster on CPU: processes on localhost (gloo collectives) run the training CLI.

Two processes with 4 devices each must train exactly like one process with 8 devices (same global
batches, global top-k over the whole batch, same checkpoints); a run saved on 8 devices continues
on 4 devices or on 2 processes with the losses of the uninterrupted run (resharding on restore).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from cluster_runs import assert_succeeded, finish, run_processes, start_processes
from train_runs import TINY, checkpoint_steps, final_params, losses, model_yaml, run_config

from rho_jax.convert import main as convert
from rho_jax.data.prepare import main as prepare
from rho_jax.train import STOPPED, main
from rho_jax.training.cluster import Cluster, ClusterError, add_cluster_arguments, detect_cluster
from rho_jax.training.run_dir import read_jsonl

# Same global batches and computation; only the grouping of floating-point sums may differ (by
# process or by device count), which moves a float32 loss of ~8 by at most an ulp or two (1e-6).
CLOSE = dict(rtol=2e-6, atol=1e-6)


def eval_losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run / "eval.jsonl")]


@pytest.fixture(scope="module")
def cluster_runs(tmp_path_factory):
    """(directory, config sections of an SLM run on prepared rows, `config(name)` -> its config file).

    The directory holds `reference` (a CLM run on raw documents), `reference-hf` (its export to
    Hugging Face format: the SLM runs load it as every process of a cluster loads an HF model) and
    `slm`, the SLM run trained by one process with 8 devices.
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
    assert convert(["to-hf", str(tmp / "reference"), str(tmp / "reference-hf")]) == 0
    sections = dict(model=model, reference={"init": "hf", "path": str(tmp / "reference-hf")}, slm={"ratio": 0.5},
                    data={"sources": sources})
    assert main(["--config", str(run_config(tmp, "slm", **sections))]) == 0
    return tmp, lambda name: run_config(tmp, name, **sections)


@pytest.mark.slow
@pytest.mark.multiprocess
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


@pytest.mark.slow
@pytest.mark.multiprocess
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


@pytest.mark.slow
@pytest.mark.multiprocess
def test_an_unreadable_checkpoint_stops_the_cluster_and_the_rerun_resumes_from_the_one_before(cluster_runs):
    tmp, config = cluster_runs
    run = tmp / "slm-unreadable"
    shutil.copytree(tmp / "slm", run)
    (run / "done.json").unlink()
    for path in (run / "checkpoints" / "8" / "params").rglob("*"):
        if path.is_file():
            path.write_bytes(b"")  # e.g. a disk that filled up after orbax marked the save complete
    results = run_processes(config(run.name), processes=2, devices=4)
    assert [code for code, _ in results] == [1, 1], results
    assert "checkpoint step 8 could not be restored" in results[0][1] + results[1][1]
    assert checkpoint_steps(run) == [3, 5] and len(list((run / "checkpoints_unreadable").iterdir())) == 1
    assert_succeeded(run_processes(config(run.name), processes=2, devices=4))
    np.testing.assert_allclose(list(losses(run).values()), list(losses(tmp / "slm").values()), **CLOSE)


@pytest.mark.slow
@pytest.mark.multiprocess
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


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_tensor_axis_spanning_processes_is_refused(cluster_runs):
    tmp, _ = cluster_runs
    config = run_config(tmp, "tensor-across", mesh={"data": 1, "fsdp": 1, "tensor": 8}, eval={"sets": {}})
    for code, output in run_processes(config, processes=2, devices=4):
        assert code == 2 and "the tensor axis must not span processes (it has 8 devices, a process 4)" in output, output


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_stop_signal_on_one_process_stops_all_after_the_same_step(cluster_runs):
    tmp, config = cluster_runs
    run = tmp / "slm-sigterm"
    started = start_processes(config("slm-sigterm"), processes=2, devices=4)
    deadline = time.time() + 240
    while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().strip()):
        if time.time() > deadline or any(p.poll() is not None for p in started):
            finish(started, timeout=1)
            pytest.fail("the two-process run did not start training")
        time.sleep(0.05)
    started[1].send_signal(signal.SIGTERM)  # a preemption notice on one worker only
    results = finish(started)
    assert [code for code, _ in results] == [STOPPED, STOPPED], results
    stopped_at = len(read_jsonl(run / "metrics.jsonl"))
    assert stopped_at < 8 and checkpoint_steps(run)[-1] == stopped_at
    assert f"a stop signal on another process: saved a checkpoint at step {stopped_at}" in results[0][1]


SLURM = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-4]", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}


@pytest.mark.parametrize("argv, environ, expected", [
    ([], {}, None),
    (["--coordinator_address", "10.0.0.1:1234", "--num_processes", "4", "--process_id", "3"], {},
     Cluster("explicit settings", "10.0.0.1:1234", 4, 3)),
    ([], {"JAX_COORDINATOR_ADDRESS": "h:9", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     Cluster("explicit settings", "h:9", 2, 0)),
    (["--process_id", "1"], {"JAX_COORDINATOR_ADDRESS": "h:9", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     Cluster("explicit settings", "h:9", 2, 1)),  # a flag wins over its variable
    (["--coordinator_address", "h:9", "--num_processes", "1", "--process_id", "0"], {}, None),
    ([], {**SLURM, "SLURM_NTASKS": "32", "SLURM_STEP_NUM_NODES": "4", "SLURM_LOCALID": "5"},
     Cluster("SLURM (job 7, 32 tasks on 4 nodes)")),  # a task per GPU: JAX picks the GPU of the local rank
    ([], {**SLURM, "SLURM_NTASKS": "32", "SLURM_STEP_NUM_NODES": "4", "CUDA_VISIBLE_DEVICES": "5"},
     Cluster("SLURM (job 7, 32 tasks on 4 nodes)", local_device_ids=(0,))),  # the one GPU bound to the task
    ([], {**SLURM, "SLURM_NTASKS": "32", "SLURM_STEP_NUM_NODES": "4", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"},
     Cluster("SLURM (job 7, 32 tasks on 4 nodes)")),  # GPUs not bound per task: the GPU of the local rank
    ([], {**SLURM, "SLURM_NTASKS": "4", "SLURM_STEP_NUM_NODES": "4", "SLURM_GPUS_ON_NODE": "8"},
     Cluster("SLURM (job 7, 4 tasks on 4 nodes)", local_device_ids=tuple(range(8)))),  # a task per node
    ([], {**SLURM, "SLURM_NTASKS": "2", "SLURM_STEP_NUM_NODES": "2", "CUDA_VISIBLE_DEVICES": "0,1,2,3"},
     Cluster("SLURM (job 7, 2 tasks on 2 nodes)", local_device_ids=(0, 1, 2, 3))),
    ([], {**SLURM, "SLURM_NTASKS": "1"}, None),  # one task: a single process
    ([], {**SLURM, "SLURM_NTASKS": "4", "SLURM_STEP_NUM_NODES": "4", "SLURM_GPUS_ON_NODE": "8",
          "JAX_LOCAL_DEVICE_IDS": "0,1"}, Cluster("SLURM (job 7, 4 tasks on 4 nodes)")),  # JAX reads the variable
    ([], {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, None),  # the batch script itself, outside srun
    ([], {"TPU_WORKER_HOSTNAMES": "t-0,t-1,t-2,t-3"}, Cluster("Cloud TPU slice (4 workers)")),
    ([], {"TPU_WORKER_HOSTNAMES": "t-0"}, None),
])
def test_cluster_detection(argv, environ, expected):
    parser = argparse.ArgumentParser()
    add_cluster_arguments(parser)
    assert detect_cluster(parser.parse_args(argv), environ, fetch=lambda url: None) == expected


@pytest.mark.parametrize("argv, environ, message", [
    (["--num_processes", "2"], {}, r"missing --coordinator_address \(JAX_COORDINATOR_ADDRESS\), --process_id"),
    (["--coordinator_address", "h:9", "--num_processes", "2", "--process_id", "2"], {}, "0 <= process_id < num_proc"),
    (["--coordinator_address", "h", "--num_processes", "2", "--process_id", "0"], {}, "must be HOST:PORT, got 'h'"),
    ([], {"JAX_COORDINATOR_ADDRESS": "h:9", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "must be integers"),
])
def test_incomplete_cluster_settings_are_refused(argv, environ, message):
    parser = argparse.ArgumentParser()
    add_cluster_arguments(parser)
    with pytest.raises(ClusterError, match=message):
        detect_cluster(parser.parse_args(argv), environ, fetch=lambda url: None)


def test_cluster_errors_are_reported_by_the_cli(capsys):
    assert main(["--config", "unused.yaml", "--num_processes", "2"]) == 2
    assert "error: a multi-process run needs all of --coordinator_address" in capsys.readouterr().err
