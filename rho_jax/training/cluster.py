"""Multi-process runs: when to start JAX's distributed runtime, and the few host-level collectives.

A run is multi-process when (checked in this order):
    1. the command line or the environment names it explicitly: `--coordinator_address HOST:PORT
       --num_processes N --process_id I`, or the variables `JAX_COORDINATOR_ADDRESS`,
       `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` (flags win over variables; all three or none);
    2. SLURM launched it as one task of a step with more than one task (`srun`: SLURM_JOB_ID,
       SLURM_STEP_NODELIST, SLURM_NTASKS > 1, SLURM_PROCID, SLURM_LOCALID);
    3. it runs on a worker of a multi-host Cloud TPU slice (a TPU VM whose slice lists more than one
       worker, from TPU_WORKER_HOSTNAMES or the VM's metadata server).
Otherwise nothing is started and the run is a single process with all local devices. For 2 and 3,
JAX finds the coordinator, process count and id itself (`jax.distributed.initialize()`). Under
SLURM with one task per node a process drives all the node's GPUs it sees (CUDA_VISIBLE_DEVICES
or SLURM_GPUS_ON_NODE); with several tasks per node, the one GPU bound to its task, or else the GPU
of its local rank (JAX's default). `JAX_LOCAL_DEVICE_IDS` overrides all of this. On CPU the processes exchange data with gloo
collectives.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

EXPLICIT_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
TPU_METADATA_URL = "http://metadata.google.internal/computeMetadata/v1/instance/attributes/worker-network-endpoints"


log = logging.getLogger(__name__)


class ClusterError(ValueError):
    """The multi-process settings are incomplete or inconsistent."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """How to start the distributed runtime. `coordinator_address`, `num_processes` and `process_id`
    are set for an explicit cluster and None where JAX detects them (`detected_by` says from what);
    `local_device_ids`: the accelerators this process drives (None: JAX's choice)."""

    detected_by: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-process (normally detected from SLURM or the TPU VM; see rho_jax.training.cluster)")
    group.add_argument("--coordinator_address", metavar="HOST:PORT",
                       help="address of process 0's coordinator service (env JAX_COORDINATOR_ADDRESS)")
    group.add_argument("--num_processes", type=int, metavar="N", help="number of processes (env JAX_NUM_PROCESSES)")
    group.add_argument("--process_id", type=int, metavar="I", help="this process, 0..N-1 (env JAX_PROCESS_ID)")


def _explicit_cluster(args: argparse.Namespace, environ: Mapping[str, str]) -> Cluster | None:
    values = {}
    for name, variable in zip(("coordinator_address", "num_processes", "process_id"), EXPLICIT_VARIABLES):
        value = getattr(args, name, None)
        values[name] = value if value is not None else environ.get(variable) or None
    given = [name for name, value in values.items() if value is not None]
    if not given:
        return None
    if len(given) < len(values):
        missing = [f"--{name} ({variable})" for (name, value), variable in zip(values.items(), EXPLICIT_VARIABLES)
                   if value is None]
        raise ClusterError(f"a multi-process run needs all of --coordinator_address, --num_processes and --process_id "
                           f"(or the JAX_* variables); missing {', '.join(missing)}.")
    try:
        num_processes, process_id = int(values["num_processes"]), int(values["process_id"])
    except ValueError as err:
        raise ClusterError(f"num_processes and process_id must be integers: {err}.") from None
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ClusterError(f"need num_processes >= 1 and 0 <= process_id < num_processes; got num_processes "
                           f"{num_processes}, process_id {process_id}.")
    address = str(values["coordinator_address"])
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"coordinator_address must be HOST:PORT, got {address!r}.")
    return Cluster("explicit settings", address, num_processes, process_id)


def _slurm_cluster(environ: Mapping[str, str]) -> Cluster | None:
    if not all(v in environ for v in SLURM_VARIABLES) or not environ["SLURM_NTASKS"].isdigit():
        return None
    tasks = int(environ["SLURM_NTASKS"])
    if tasks < 2:
        return None
    nodes = int(environ.get("SLURM_STEP_NUM_NODES") or environ.get("SLURM_NNODES") or tasks)
    visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    gpus_on_node = int(environ.get("SLURM_GPUS_ON_NODE") or 0)
    local_device_ids = None
    if "JAX_LOCAL_DEVICE_IDS" in environ:
        pass  # JAX reads it
    elif tasks == nodes:  # one task per node drives all the GPUs it sees
        gpus = len(visible) or gpus_on_node
        local_device_ids = tuple(range(gpus)) if gpus else None
    elif len(visible) == 1:  # several tasks per node, one GPU bound to each (it is device 0 of the task)
        local_device_ids = (0,)
    # else several tasks share the node's GPUs: JAX's default, the GPU of the task's local rank
    return Cluster(f"SLURM (job {environ['SLURM_JOB_ID']}, {tasks} tasks on {nodes} nodes)",
                   local_device_ids=local_device_ids)


def _tpu_vm_worker_count(environ: Mapping[str, str], fetch: Callable[[str], str | None]) -> int:
    """Workers of this Cloud TPU slice (0 when this is not a TPU VM)."""
    has_tpu_devices = Path("/dev/accel0").exists() or Path("/dev/vfio").is_dir()
    on_tpu_vm = (has_tpu_devices and importlib.util.find_spec("libtpu") is not None) or "TPU_WORKER_HOSTNAMES" in environ
    if not on_tpu_vm or environ.get("TPU_SKIP_MDS_QUERY"):
        return 0
    hostnames = environ.get("TPU_WORKER_HOSTNAMES") or environ.get("TPU_PROCESS_ADDRESSES") or fetch(TPU_METADATA_URL)
    return len([h for h in (hostnames or "").split(",") if h.strip()])


def _metadata(url: str) -> str | None:
    request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


def detect_cluster(args: argparse.Namespace, environ: Mapping[str, str] = os.environ,
                   fetch: Callable[[str], str | None] = _metadata) -> Cluster | None:
    """The multi-process cluster this process belongs to, or None for a single-process run (see the
    module docstring for the rules). `fetch` reads the TPU VM metadata server."""
    explicit = _explicit_cluster(args, environ)
    if explicit is not None:
        return explicit if explicit.num_processes > 1 else None
    slurm = _slurm_cluster(environ)
    if slurm is not None:
        return slurm
    workers = _tpu_vm_worker_count(environ, fetch)
    if workers > 1:
        return Cluster(f"Cloud TPU slice ({workers} workers)")
    return None


def initialize(cluster: Cluster | None) -> None:
    """Start JAX's distributed runtime for `cluster` (nothing for None). Must run before any other
    JAX call touches a device."""
    if cluster is None:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices across processes
    jax.distributed.initialize(cluster.coordinator_address, cluster.num_processes, cluster.process_id,
                               list(cluster.local_device_ids) if cluster.local_device_ids is not None else None)
    log.info("Process %d of %d (cluster from %s); %d local of %d devices.", jax.process_index(), jax.process_count(),
             cluster.detected_by, jax.local_device_count(), jax.device_count())


def is_primary() -> bool:
    """True in the process that writes run files and prints progress (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process has reached the barrier `name` (no-op for a single process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is True on any process (a collective: all processes must call it)."""
    return any_processes(flag)[0]


def any_processes(*flags: bool) -> tuple[bool, ...]:
    """For each flag, whether it is True on any process: one collective for several decisions."""
    if jax.process_count() == 1:
        return tuple(bool(f) for f in flags)
    gathered = multihost_utils.process_allgather(np.asarray(flags, np.int32))
    return tuple(bool(x) for x in np.any(np.asarray(gathered).reshape(-1, len(flags)), axis=0))
