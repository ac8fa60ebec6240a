"""Bad records (invalid JSON or UTF-8, a missing, non-string or null text field) are found when a
source is opened: refused naming `file:line` (`data.on_bad_record: error`), or left out and logged
(`skip`), in training, evaluation and `python -m rho_jax.data.prepare` alike."""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from train_runs import TINY, checkpoint_steps, run_config

from rho_jax.data import DataConfig, SourceConfig, eval_batches, load_tokenizer, train_dataset
from rho_jax.data.prepare import main as prepare_main
from rho_jax.data.sources import open_source
from rho_jax.models.parity import build_tiny_tokenizer
from rho_jax.train import main as train_main
from rho_jax.training.config import load_config

GOOD = ["first good document", "second good document", "third good document"]
# line number -> (raw line, reason); blank lines are not records.
BAD_LINES = {
    2: (b'{"text": "cut short"\n', "invalid JSON"),
    4: (b'{"text": "caf\xc3 au lait"}\n', "invalid UTF-8"),
    5: (b'{"content": "no text field"}\n', "missing field"),
    7: (b'{"text": 42}\n', "not a string"),
    8: (b'["not", "an", "object"]\n', "not a JSON object"),
    9: (b'{"text": "lone \\ud800 surrogate"}\n', "invalid UTF-8"),
}
SKIPPED_JSONL = {"invalid JSON": 1, "invalid UTF-8": 2, "missing field": 1, "not a string": 1, "not a JSON object": 1}


def write_mixed_jsonl(path) -> str:
    """GOOD on lines 1, 6 and 10, every kind of bad line in `BAD_LINES`, a blank line 3."""
    lines = {1: GOOD[0], 6: GOOD[1], 10: GOOD[2]}
    raw = b"".join(
        BAD_LINES[n][0] if n in BAD_LINES else b"\n" if n == 3 else (json.dumps({"text": lines[n]}) + "\n").encode()
        for n in range(1, 11)
    )
    path.write_bytes(raw)
    return str(path)


def texts(source) -> list[str]:
    return [source[i]["text"] for i in range(len(source))]


def skipped_locations(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "rho_jax.data" and r.levelno == logging.WARNING]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tiny_tokenizer(directory)
    return str(directory)


# ---------------------------------------------------------------- jsonl and text


def test_jsonl_bad_record_is_refused_at_open_naming_file_and_line(tmp_path):
    path = write_mixed_jsonl(tmp_path / "mixed.jsonl")
    with pytest.raises(ValueError, match=r"mixed\.jsonl:2: invalid JSON .*Source 'mixed' holds 6 bad records "
                                         r"\(.*\); set data\.on_bad_record: skip"):
        open_source(SourceConfig(paths=(path,), name="mixed"))
    for line, (raw, _) in BAD_LINES.items():  # each kind alone, with its own message
        alone = tmp_path / f"alone-{line}.jsonl"
        alone.write_bytes(b'{"text": "fine"}\n' + raw)
        message = {2: "invalid JSON", 4: "not valid UTF-8 text", 5: r"no field 'text' \(fields: \['content'\]\)",
                   7: "field 'text' must be a string, got int", 8: "expected a JSON object, got list",
                   9: "field 'text' is not valid Unicode"}[line]
        with pytest.raises(ValueError, match=rf"alone-{line}\.jsonl:2: {message}.*holds 1 bad record "):
            open_source(SourceConfig(paths=(str(alone),)))


def test_jsonl_skip_reads_exactly_the_good_records_and_logs_every_skipped_one(tmp_path, caplog):
    path = write_mixed_jsonl(tmp_path / "mixed.jsonl")
    caplog.set_level(logging.WARNING, "rho_jax.data")
    source = open_source(SourceConfig(paths=(path,), name="mixed"), "skip")
    assert texts(source) == GOOD
    assert texts(pickle.loads(pickle.dumps(source))) == GOOD
    assert source.bad_records.counts == SKIPPED_JSONL
    logged = skipped_locations(caplog)
    assert len(logged) == len(BAD_LINES) + 1
    for message, line in zip(logged, BAD_LINES):
        assert message.startswith(f"source 'mixed': skipped {path}:{line}: "), message
    assert logged[-1].startswith("source 'mixed': skipped 6 bad records (") and "invalid UTF-8: 2" in logged[-1]


def test_many_bad_records_are_logged_one_by_one_up_to_a_limit_then_counted(tmp_path, caplog):
    path = tmp_path / "many.jsonl"
    path.write_text("".join('{"text": "good"}\n' if i % 2 else "{broken\n" for i in range(60)))
    caplog.set_level(logging.WARNING, "rho_jax.data")
    source = open_source(SourceConfig(paths=(str(path),), name="many"), "skip")
    assert len(source) == 30 and source.bad_records.counts == {"invalid JSON": 30}
    logged = skipped_locations(caplog)
    assert len(logged) == 20 + 1
    assert logged[1].startswith(f"source 'many': skipped {path}:3: invalid JSON")
    assert logged[-1] == f"source 'many': skipped 30 bad records (invalid JSON: 30), {30 - 20} of them " \
                         "not listed above."


def test_a_source_of_bad_records_only_still_holds_no_documents(tmp_path):
    path = tmp_path / "all-bad.jsonl"
    path.write_text('{"body": "x"}\n{broken\n')
    with pytest.raises(ValueError, match=r"source 'all-bad' holds no documents: .* hold only the 2 bad records "
                                         r"\(missing field: 1, invalid JSON: 1\) skipped above"):
        open_source(SourceConfig(paths=(str(path),), name="all-bad"), "skip")


def test_text_lines_and_text_files_must_be_utf8(tmp_path, caplog):
    caplog.set_level(logging.WARNING, "rho_jax.data")
    (tmp_path / "lines").mkdir()
    (tmp_path / "lines" / "a.txt").write_bytes(b"line one\n\n\xff\xfe broken\nline two\n")
    lines = SourceConfig(paths=(str(tmp_path / "lines" / "*.txt"),), text_split="line")
    with pytest.raises(ValueError, match=r"a\.txt:3: not valid UTF-8 text \(.*invalid start byte\)"):
        open_source(lines)
    assert texts(open_source(lines, "skip")) == ["line one", "line two"]

    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_text("whole file\n")
    (tmp_path / "files" / "b.txt").write_bytes(b"caf\xe9\n")
    files = SourceConfig(paths=(str(tmp_path / "files" / "*.txt"),), name="files")
    with pytest.raises(ValueError, match=r"b\.txt: not valid UTF-8 text .*holds 1 bad record \(invalid UTF-8: 1\)"):
        open_source(files)
    caplog.clear()
    source = open_source(files, "skip")
    assert texts(source) == ["whole file\n"] and source.bad_records.counts == {"invalid UTF-8": 1}
    assert skipped_locations(caplog)[0].startswith(f"source 'files': skipped {tmp_path / 'files' / 'b.txt'}: not valid")


# ---------------------------------------------------------------- parquet


def test_parquet_nulls_are_bad_records_and_non_string_columns_are_refused(tmp_path, caplog):
    table = pa.table({"text": ["a0", None, "a2", "a3", None], "prompt": ["q0", "q1", None, "q3", "q4"]})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=2)
    pq.write_table(pa.table({"text": ["b0", None, "b2"], "prompt": ["p0", "p1", "p2"]}), tmp_path / "b.parquet")
    source = SourceConfig(paths=(str(tmp_path / "*.parquet"),), prompt_field="prompt", name="pq")
    with pytest.raises(ValueError, match=r"a\.parquet row 1: column 'text' is null\. Source 'pq' holds 4 bad records "
                                         r"\(null value: 4\)"):
        open_source(source)
    caplog.set_level(logging.WARNING, "rho_jax.data")
    opened = open_source(source, "skip")
    documents = [(d["prompt"], d["text"]) for d in (opened[i] for i in range(len(opened)))]
    assert documents == [("q0", "a0"), ("q3", "a3"), ("p0", "b0"), ("p2", "b2")]
    restored = pickle.loads(pickle.dumps(opened))
    assert [restored[i]["text"] for i in reversed(range(len(restored)))] == ["b2", "b0", "a3", "a0"]
    assert opened.bad_records.counts == {"null value": 4}
    assert [m.split(": skipped ")[1] for m in skipped_locations(caplog)[:4]] == [
        f"{tmp_path / 'a.parquet'} row 1: column 'text' is null.",
        f"{tmp_path / 'a.parquet'} row 2: column 'prompt' is null.",
        f"{tmp_path / 'a.parquet'} row 4: column 'text' is null.",
        f"{tmp_path / 'b.parquet'} row 1: column 'text' is null.",
    ]

    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    for policy in ("error", "skip"):
        with pytest.raises(ValueError, match=r"ints\.parquet: column 'text' holds int64, not strings"):
            open_source(SourceConfig(paths=(str(tmp_path / "ints.parquet"),)), policy)


def test_parquet_statistics_spare_reading_columns_without_nulls(tmp_path, monkeypatch):
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(8)], "other": [None] * 8}), tmp_path / "clean.parquet",
                   row_group_size=3)
    read = []
    original = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, *a, **k: read.append(a) or original(self, *a, **k))
    source = open_source(SourceConfig(paths=(str(tmp_path / "clean.parquet"),)))
    assert read == [] and len(source) == 8


# ---------------------------------------------------------------- the run's policy


def test_policy_is_a_data_setting_checked_on_load(tmp_path):
    assert DataConfig(tokenizer="t", sources=(SourceConfig(paths=("a",)),)).on_bad_record == "error"
    with pytest.raises(ValueError, match=r"data\.on_bad_record must be one of \('error', 'skip'\), got 'ignore'"):
        DataConfig(tokenizer="t", sources=(SourceConfig(paths=("a",)),), on_bad_record="ignore")
    with pytest.raises(ValueError, match=r"on_bad_record must be one of"):
        open_source(SourceConfig(paths=(str(TINY / "web.jsonl"),)), "ignore")
    config = run_config(tmp_path, "run", data={"on_bad_record": "skip"})
    assert load_config(config).data.on_bad_record == "skip"


def test_training_and_eval_streams_follow_the_policy(tmp_path, tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    source = SourceConfig(paths=(write_mixed_jsonl(tmp_path / "mixed.jsonl"),), name="mixed")
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps({"text": t}) + "\n" for t in GOOD))
    with pytest.raises(ValueError, match=r"mixed\.jsonl:2: invalid JSON"):
        train_dataset(DataConfig(tokenizer=tokenizer_dir, sources=(source,), seq_len=8), tok, batch_rows=2)
    with pytest.raises(ValueError, match=r"mixed\.jsonl:2: invalid JSON"):
        eval_batches(source, tok, seq_len=8, global_batch_rows=2, max_rows=None)

    def first_batches(src: SourceConfig, on_bad_record: str) -> list[dict[str, np.ndarray]]:
        cfg = DataConfig(tokenizer=tokenizer_dir, sources=(src,), seq_len=8, on_bad_record=on_bad_record)
        iterator = iter(train_dataset(cfg, tok, batch_rows=2))
        return [next(iterator) for _ in range(6)]

    for a, b in zip(first_batches(source, "skip"), first_batches(SourceConfig(paths=(str(clean),)), "error")):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    kwargs = dict(seq_len=8, global_batch_rows=2, max_rows=None)
    skipped = eval_batches(source, tok, on_bad_record="skip", **kwargs)
    expected = eval_batches(SourceConfig(paths=(str(clean),)), tok, **kwargs)
    assert len(skipped) == len(expected)
    for a, b in zip(skipped, expected):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_training_run_with_a_bad_record_stops_before_the_first_step(tmp_path, capsys):
    lines = (TINY / "web.jsonl").read_text().splitlines(keepends=True)
    bad = tmp_path / "web-bad.jsonl"
    bad.write_text("".join(lines[:15]) + '{"text": "cut short\n' + "".join(lines[15:]))
    config = run_config(tmp_path, "run", data={"sources": [{"name": "web", "paths": [str(bad)]}]})
    assert train_main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:16: invalid JSON" in err and "set data.on_bad_record: skip" in err
    run = tmp_path / "run"
    assert not (run / "metrics.jsonl").exists()
    assert not (run / "checkpoints").exists() or checkpoint_steps(run) == []


# ---------------------------------------------------------------- prepare


def test_prepare_refuses_bad_records_or_writes_the_good_ones_only(tmp_path, tokenizer_dir, caplog):
    mixed = write_mixed_jsonl(tmp_path / "mixed.jsonl")
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps({"text": t}) + "\n" for t in GOOD))
    args = [f"--tokenizer={tokenizer_dir}", "--seq_len=8"]
    with pytest.raises(ValueError, match=r"mixed\.jsonl:2: invalid JSON .*\(prepare: --on_bad_record skip\)"):
        prepare_main([*args, f"--output={tmp_path / 'refused'}", mixed])
    assert not (tmp_path / "refused").exists()

    caplog.set_level(logging.WARNING, "rho_jax.data")
    metadata = prepare_main([*args, f"--output={tmp_path / 'skipped'}", "--on_bad_record", "skip", mixed])
    assert metadata["num_documents"] == len(GOOD)
    assert metadata["source"]["on_bad_record"] == "skip" and metadata["source"]["skipped_records"] == SKIPPED_JSONL
    assert sum(f"{mixed}:{line}: " in m for m in skipped_locations(caplog) for line in BAD_LINES) == len(BAD_LINES)
    expected = prepare_main([*args, f"--output={tmp_path / 'clean'}", str(clean)])
    assert (metadata["num_rows"], metadata["num_tokens"]) == (expected["num_rows"], expected["num_tokens"])
    for name in metadata["shards"]:
        assert (tmp_path / "skipped" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()
