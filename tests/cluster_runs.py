"""Real JAX clusters on localhost for the tests: rho_jax commands run as several CPU processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from train_runs import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_processes(config: Path, processes: int, devices: int, module: str = "rho_jax.train") -> list[subprocess.Popen]:
    """Start `python -m module --config config` as the `processes` processes of one cluster, each
    with `devices` CPU devices (a single process is started without cluster flags)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    command = [sys.executable, "-m", module, "--config", str(config)]
    if processes > 1:
        command += ["--coordinator_address", f"127.0.0.1:{free_port()}", "--num_processes", str(processes)]
    return [subprocess.Popen(command + (["--process_id", str(i)] if processes > 1 else []), cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(processes)]


def finish(started: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    """(exit code, output) of each started process (all are killed if one times out)."""
    try:
        outputs = [process.communicate(timeout=timeout)[0] for process in started]
    finally:
        for process in started:
            process.kill()
    return [(process.returncode, output) for process, output in zip(started, outputs)]


def run_processes(config: Path, processes: int, devices: int, module: str = "rho_jax.train") -> list[tuple[int, str]]:
    return finish(start_processes(config, processes, devices, module))


def assert_succeeded(results: list[tuple[int, str]]) -> None:
    for i, (code, output) in enumerate(results):
        assert code == 0, f"process {i} exited with {code}:\n{output[-4000:]}"
