"""One trainer per run directory: an exclusive lock file held for the run's lifetime.

`<run>/.lock` is created exclusively (`O_CREAT | O_EXCL`, atomic on local and network file
systems) and holds `{"host", "pid", "started"}`. A second trainer finds it and stops, naming the
holder. A lock left by a dead process is reclaimed: on the same host when that pid no longer runs,
or with `--force-unlock` given by a user who knows the holder is gone (another host's pid cannot
be checked from here). With several processes only process 0 takes the lock, for all of them.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from rho_jax.training.cluster import any_process, is_primary

LOCK_FILE = ".lock"


class RunLocked(RuntimeError):
    """Another live trainer holds the run directory."""


def _alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (an unknown pid counts as alive)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_holder(path: Path) -> dict[str, Any] | None:
    """The holder recorded in the lock file (None if there is none; an unreadable file reads as
    an unknown holder, since it may be one being written this instant)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"host": "?", "pid": -1, "started": "?"}


class RunLock:
    """`with RunLock(run_dir):` holds `<run_dir>/.lock` (see the module docstring)."""

    def __init__(self, run_dir: str | Path, force: bool = False):
        self.path = Path(run_dir) / LOCK_FILE
        self.force = force
        self.held = False

    def acquire(self) -> None:
        """Take the lock or raise `RunLocked` naming the live holder; reclaims a dead holder's lock."""
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_holder(self.path)
                if holder is None:
                    continue  # released meanwhile
                if self.force or (holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1)))):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise RunLocked(
                    f"{self.path.parent} is in use by another trainer (pid {holder.get('pid')} on host "
                    f"{holder.get('host')}, started {holder.get('started')}); two trainers on one run directory "
                    "would overwrite each other's checkpoints and metrics. Wait for it to finish or stop it. If that "
                    f"process is gone (e.g. its host died), rerun with --force-unlock or delete {self.path}."
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise RunLocked(f"could not take the lock {self.path}: it keeps changing hands.")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_run_dir(run_dir: str | Path, force: bool = False) -> RunLock:
    """The run directory's lock, taken by process 0 for the whole cluster (a collective: every
    process calls it and every process raises `RunLocked` if process 0 could not take it). An
    output_dir that cannot be created is left for the preflight checks to explain."""
    lock = RunLock(run_dir, force)
    error: RunLocked | None = None
    if is_primary():
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except RunLocked as err:
            error = err
        except OSError:
            pass
    if any_process(error is not None):
        raise error or RunLocked(f"process 0 could not lock {run_dir} (see its output).")
    return lock
