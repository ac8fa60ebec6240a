"""Checksums of files and directories: what was written is what is read back.

A manifest maps every file below a directory (relative POSIX path) to `{"bytes": size, "sha256":
hex digest}`. `verify_manifest` names each file that is missing, has another size or other
contents, and each file that appeared; an empty list means the directory is exactly as recorded.
Hashing runs on a few threads (hashlib releases the GIL on large buffers), so checking a
multi-gigabyte checkpoint costs about as long as reading it once.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HASH_THREADS = min(8, os.cpu_count() or 1)


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of one file's contents."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_entry(path: str | Path) -> dict[str, Any]:
    """`{"bytes", "sha256"}` of one file: a manifest's entry, and what score shards record."""
    return {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}


def directory_manifest(directory: str | Path) -> dict[str, dict[str, Any]]:
    """`{relative path: file_entry}` of every regular file below `directory`, sorted by path."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        entries = list(pool.map(file_entry, files))
    return {p.relative_to(directory).as_posix(): entry for p, entry in zip(files, entries)}


def manifest_bytes(manifest: dict[str, dict[str, Any]]) -> int:
    """Total size of the files a manifest lists."""
    return sum(entry["bytes"] for entry in manifest.values())


def verify_manifest(directory: str | Path, manifest: dict[str, dict[str, Any]]) -> list[str]:
    """What differs between `directory` and `manifest`, one line per file (empty: identical)."""
    directory = Path(directory)
    problems = []
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    expected = sorted(manifest)
    to_hash = []
    for name in expected:
        path = directory / name
        if name not in present:
            problems.append(f"{name}: missing")
        elif path.stat().st_size != manifest[name]["bytes"]:
            problems.append(f"{name}: {path.stat().st_size} bytes, recorded {manifest[name]['bytes']}")
        else:
            to_hash.append(name)
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        digests = list(pool.map(lambda name: file_sha256(directory / name), to_hash))
    problems += [f"{name}: contents changed (sha256 differs)"
                 for name, digest in zip(to_hash, digests) if digest != manifest[name]["sha256"]]
    problems += [f"{name}: not recorded" for name in sorted(present - set(manifest))]
    return problems


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write `data` as JSON to `path` through a temporary file renamed over it (never half-written)."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory, flushed to disk and
    renamed over it: a reader (or a rerun after a kill) sees the old or the new file, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. a full disk: leave the old file and no debris
        raise
