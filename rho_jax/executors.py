"""Where a datatrove pipeline runs (curation, tokenization): datatrove's local, Slurm or Ray executor, chosen by
command-line options.

The same list of pipeline steps runs under each. Tasks split the input files (`rank::tasks`); every executor
logs into one folder and writes a completion marker per finished task there, and a rerun with that folder
skips the finished tasks (a killed task reruns from its start and rewrites its own output files).

    local  LocalPipelineExecutor: --tasks, --workers processes on this machine.
    slurm  SlurmPipelineExecutor: submits a job array with sbatch (one array task per datatrove task, at most
           --workers at once) and returns; the jobs load the pickled pipeline (`launch_pickled_pipeline`).
    ray    RayPipelineExecutor: runs the tasks on the Ray cluster that `ray.init()` finds (RAY_ADDRESS, or a
           new local one), --workers at once, with the same per-task resources.

datatrove's local executor starts its helper processes (a Manager, a worker pool) with the `multiprocess`
package. Forking a process whose JAX runtime has started its threads can deadlock, so importing this module
makes `multiprocess` start processes from a fork server (a clean process) instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import multiprocess

__all__ = ["EXECUTORS", "add_executor_options", "make_executor", "tasks_finished"]

EXECUTORS = ("local", "slurm", "ray")

multiprocess.set_start_method("forkserver", force=True)


def add_executor_options(parser: argparse.ArgumentParser) -> None:
    """The executor choice and its resources, as one argument group of `parser`."""
    group = parser.add_argument_group("executor")
    group.add_argument("--executor", choices=EXECUTORS, default="local")
    group.add_argument("--tasks", type=int, default=1, help="datatrove tasks (each takes a share of the input files)")
    group.add_argument("--workers", type=int, default=None,
                       help="tasks run at once (default: 1 locally, all of them on slurm and ray)")
    group.add_argument("--partition", help="slurm partition (required with --executor slurm)")
    group.add_argument("--time", default="24:00:00", help="slurm time limit per task")
    group.add_argument("--cpus-per-task", type=int, default=1, help="slurm, ray")
    group.add_argument("--mem-per-cpu-gb", type=int, default=2, help="slurm, ray")
    group.add_argument("--gpus-per-task", type=int, default=0, help="slurm, ray")
    group.add_argument("--env-command", help="slurm: shell command that activates the environment in each job, "
                                            "e.g. 'source .venv/bin/activate'")


def make_executor(pipeline: list, logging_dir: Path, args: argparse.Namespace, job_name: str) -> Any:
    """The datatrove executor `args` chooses (`add_executor_options`) for `pipeline`, logging in `logging_dir`."""
    if args.tasks < 1 or (args.workers is not None and args.workers < 1):
        raise ValueError(f"--tasks and --workers must be >= 1, got {args.tasks} and {args.workers}")
    if args.executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(pipeline, tasks=args.tasks, workers=args.workers or 1, logging_dir=str(logging_dir))
    workers = args.workers or -1
    resources = dict(cpus_per_task=args.cpus_per_task, mem_per_cpu_gb=args.mem_per_cpu_gb,
                     gpus_per_task=args.gpus_per_task)
    if args.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        if not args.partition:
            raise ValueError("--executor slurm needs --partition")
        return SlurmPipelineExecutor(pipeline, tasks=args.tasks, workers=workers, time=args.time,
                                     partition=args.partition, job_name=job_name, logging_dir=str(logging_dir),
                                     env_command=args.env_command, **resources)
    from datatrove.executor import RayPipelineExecutor

    return RayPipelineExecutor(pipeline, tasks=args.tasks, workers=workers, logging_dir=str(logging_dir),
                               **resources)


def tasks_finished(logging_dir: Path, tasks: int) -> bool:
    """Whether each of the `tasks` tasks logging in `logging_dir` has its completion marker."""
    return all((Path(logging_dir) / "completions" / f"{rank:05d}").exists() for rank in range(tasks))
