"""The pieces behind a run's reliability, without training: data fingerprints, the run lock,
file manifests and atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rho_jax.data import fingerprint
from rho_jax.data.config import DataConfig, SourceConfig
from rho_jax.integrity import directory_manifest, verify_manifest, write_text_atomic
from rho_jax.training.run_lock import LOCK_FILE, RunLock, RunLocked


def data_config(*paths) -> DataConfig:
    return DataConfig(tokenizer="t", seq_len=8, sources=(SourceConfig(paths=tuple(map(str, paths)), name="s"),))


def test_fingerprint_changes_name_what_changed_and_ignore_a_move(tmp_path, monkeypatch):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"text": "one"}\n')
    b.write_text('{"text": "two"}\n')
    before = fingerprint.data_fingerprint(data_config(a, b))
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in (a, b):
        (moved / f.name).write_bytes(f.read_bytes())
    assert fingerprint.fingerprint_changes(before, fingerprint.data_fingerprint(data_config(moved / "a.jsonl",
                                                                                            moved / "b.jsonl"))) == []
    b.write_text('{"text": "TWO"}\n')  # same size
    assert fingerprint.fingerprint_changes(before, fingerprint.data_fingerprint(data_config(a, b))) == [
        f"source 's': {b} has other contents (same size)"]
    a.write_text('{"text": "one"}\n{"text": "more"}\n')
    changes = fingerprint.fingerprint_changes(before, fingerprint.data_fingerprint(data_config(a)))
    assert f"source 's': {a} has 33 bytes, had 16" in changes and any(f"{b} no longer matches" in c for c in changes)
    monkeypatch.setattr(fingerprint, "FULL_HASH_BYTES", 8)
    monkeypatch.setattr(fingerprint, "SAMPLE_BYTES", 4)
    large = fingerprint.file_fingerprint(str(a))
    assert set(large) == {"bytes", "sha256_sampled", "mtime_ns"}


def test_run_lock_refuses_a_live_holder_and_reclaims_a_dead_ones(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        for pid, takes in ((live.pid, False), (dead.pid, True)):
            (tmp_path / LOCK_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": pid, "started": "x"}))
            if takes:
                with RunLock(tmp_path):
                    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
                assert not (tmp_path / LOCK_FILE).exists()
            else:
                with pytest.raises(RunLocked, match=f"pid {pid} on host"):
                    RunLock(tmp_path).acquire()
        (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "another-host", "pid": 1, "started": "x"}))
        with pytest.raises(RunLocked, match="another-host"):  # another host's pid cannot be checked
            RunLock(tmp_path).acquire()
        with RunLock(tmp_path, force=True):
            pass
    finally:
        live.kill()
        live.wait()


def test_manifest_names_every_kind_of_damage(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("a", "b", "d/c"):
        (tmp_path / name).write_bytes(name.encode() * 100)
    manifest = directory_manifest(tmp_path)
    assert verify_manifest(tmp_path, manifest) == []
    (tmp_path / "a").write_bytes(b"x" * 100)
    (tmp_path / "b").write_bytes(b"b" * 10)
    (tmp_path / "d" / "c").unlink()
    (tmp_path / "new").write_text("n")
    assert verify_manifest(tmp_path, manifest) == [
        "b: 10 bytes, recorded 100", "d/c: missing", "a: contents changed (sha256 differs)", "new: not recorded"]


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def killed(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr("rho_jax.integrity.os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(path, "new")
    assert path.read_text() == "old"
    monkeypatch.undo()
    write_text_atomic(path, "new")
    assert path.read_text() == "new"
