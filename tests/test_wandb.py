"""Weights & Biases logging (`logging.wandb`): a tiny run logged offline, read back from the .wandb file."""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from train_runs import losses, read_jsonl, run_config

from rho_jax.train import main
from rho_jax.training.config import ConfigError, load_config
from rho_jax.training.run_log import WANDB_ID_FILE

_BLOCK = 32 * 1024  # the .wandb file is a LevelDB-style log: 32 KiB blocks of framed records
_HEADER = 7  # file header (":W&B", magic, version) and record header (crc32, length, type) alike
_FULL, _LAST = 1, 4


def wandb_records(path: Path) -> Iterator[object]:
    """The protobuf `Record`s of a .wandb transaction log, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if left < _HEADER or kind == 0:  # block trailer padding
            pos += left
            continue
        pending += data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.mark.slow
def test_offline_run_logs_every_step_and_eval_and_the_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")  # belt and braces: never reach the W&B servers
    config = run_config(tmp_path, "run", train={"total_steps": 3},
                        logging={"wandb": {"project": "test", "mode": "offline", "tags": ["tiny"]}})
    assert main(["--config", str(config)]) == 0
    run = tmp_path / "run"
    run_id = (run / WANDB_ID_FILE).read_text().strip()
    [log_file] = (run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")

    history: dict[int, dict] = {}
    run_record = None
    for record in wandb_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.setdefault(items["_step"], {}).update(items)
        elif kind == "run":
            run_record = record.run
    assert {step: row["loss"] for step, row in history.items() if "loss" in row} == losses(run)
    for metrics in read_jsonl(run / "metrics.jsonl"):
        assert all(history[metrics["step"]][key] == value for key, value in metrics.items() if key != "step")
    evals = read_jsonl(run / "eval.jsonl")
    assert [(e["step"], e["loss"]) for e in evals] == [(s, history[s]["eval/heldout/loss"]) for s in (0, 3)]

    assert run_record.project == "test" and list(run_record.tags) == ["tiny"]
    wandb_config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert wandb_config["output_dir"] == str(run)
    assert wandb_config["train"]["total_steps"] == 3
    assert wandb_config["logging"]["wandb"] == {"project": "test", "name": None, "mode": "offline", "entity": None,
                                                "tags": ["tiny"]}


def test_wandb_settings_are_checked(tmp_path):
    config = run_config(tmp_path, "run")
    with pytest.raises(ConfigError, match="mode must be one of"):
        load_config(config, ["logging.wandb={project: p, mode: sometimes}"])
    with pytest.raises(ConfigError, match="project must be a non-empty"):
        load_config(config, ["logging.wandb={project: ''}"])


def test_missing_wandb_package_fails_before_the_run_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails, find_spec("wandb") is None
    config = run_config(tmp_path, "run", logging={"wandb": {"project": "test", "mode": "offline"}})
    with pytest.raises(ConfigError, match=r"logging\.wandb needs the wandb package.*pip install 'rho-jax\[wandb\]'"):
        load_config(config)
    assert main(["--config", str(config)]) == 2
    assert "logging.wandb needs the wandb package" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
