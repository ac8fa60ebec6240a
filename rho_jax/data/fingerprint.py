"""Fingerprints of a run's training files, so a resume never reads other data than the run began with.

Per data source, every file its patterns resolve to (in order) with its size and a sha256: of the
whole file up to `FULL_HASH_BYTES`, above that of three 1 MiB samples (start, middle, end) plus the
modification time (a full pass over a multi-terabyte corpus at every restart would cost more than
it protects). `fingerprint_changes` lists, in words, what differs between two fingerprints.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rho_jax.data.config import DataConfig
from rho_jax.data.sources import resolve_paths
from rho_jax.integrity import HASH_THREADS, file_entry

FULL_HASH_BYTES = 64 << 20
SAMPLE_BYTES = 1 << 20


def file_fingerprint(path: str) -> dict[str, Any]:
    """`{"bytes", "sha256"}` of a file (whole-file hash), or for a file over `FULL_HASH_BYTES`
    `{"bytes", "sha256_sampled", "mtime_ns"}`."""
    size = os.path.getsize(path)
    if size <= FULL_HASH_BYTES:
        return file_entry(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for offset in (0, size // 2, size - SAMPLE_BYTES):
            f.seek(offset)
            digest.update(f.read(SAMPLE_BYTES))
    return {"bytes": size, "sha256_sampled": digest.hexdigest(), "mtime_ns": os.stat(path).st_mtime_ns}


def data_fingerprint(data: DataConfig) -> dict[str, dict[str, dict[str, Any]]]:
    """`{source name: {file path: file_fingerprint}}` of the training sources (not the eval sets,
    which a resumed run may change)."""
    files = {source.name: resolve_paths(source) for source in data.sources}
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        prints = {name: dict(zip(paths, pool.map(file_fingerprint, paths))) for name, paths in files.items()}
    return prints


def fingerprint_changes(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> list[str]:
    """One line per difference: a source or file added or gone, a file whose size or contents changed.
    A source whose files hold the same contents in the same order under other paths (moved) is unchanged."""
    changes = []
    for name in sorted(set(old) | set(new)):
        if name not in new or name not in old:
            changes.append(f"source {name!r}: {'gone' if name not in new else 'added'}")
            continue
        before, after = old[name], new[name]
        if list(before.values()) == list(after.values()):
            continue  # the same contents in the same order: the files may have moved, nothing changed
        for path in [*before, *(p for p in after if p not in before)]:
            if path not in after:
                changes.append(f"source {name!r}: {path} no longer matches its paths (or was deleted)")
            elif path not in before:
                changes.append(f"source {name!r}: {path} is new")
            elif before[path]["bytes"] != after[path]["bytes"]:
                changes.append(f"source {name!r}: {path} has {after[path]['bytes']:,} bytes, had {before[path]['bytes']:,}")
            elif before[path] != after[path]:
                changes.append(f"source {name!r}: {path} has other contents (same size)")
        if not any(line.startswith(f"source {name!r}") for line in changes) and list(before) != list(after):
            changes.append(f"source {name!r}: its files are in another order")
    return changes
