"""`python -m rho_jax.data.prepare`: prepared rows equal online packing; stale or foreign outputs are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rho_jax.data import DataConfig, SourceConfig, eval_batches, load_tokenizer, train_dataset
from rho_jax.data.prepare import main
from rho_jax.models.parity import build_tiny_tokenizer

SEQ_LEN = 16


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tiny_tokenizer(directory)
    return str(directory)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A jsonl corpus of 40 distinct documents (so packed rows are distinct), every third one with a prompt."""
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    records = [
        {
            "text": f"answer {i}: " + " ".join(f"fox{i}x{j}" for j in range(i % 9)),
            "question": f"question {i}?" if i % 3 == 0 else "",
        }
        for i in range(40)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory, tokenizer_dir, corpus):
    output = tmp_path_factory.mktemp("prepared") / "out"
    run_prepare(tokenizer_dir, corpus, output, rows_per_shard=4)
    return output


def run_prepare(tokenizer_dir, corpus, output, seq_len: int = SEQ_LEN, rows_per_shard: int = 8192) -> dict:
    return main(
        [
            f"--tokenizer={tokenizer_dir}", f"--seq_len={seq_len}", f"--output={output}",
            "--prompt_field=question", f"--rows_per_shard={rows_per_shard}", corpus,
        ]
    )


def shards(directory) -> SourceConfig:
    return SourceConfig(paths=(str(directory / "*.array_record"),))


def test_prepared_rows_equal_online_packing(prepared_dir, tokenizer_dir, corpus):
    tok = load_tokenizer(tokenizer_dir)
    metadata = json.loads((prepared_dir / "metadata.json").read_text())
    assert metadata["seq_len"] == SEQ_LEN and metadata["row_len"] == SEQ_LEN + 1
    assert metadata["num_documents"] == 40 and metadata["source"]["paths"] == [corpus]
    assert len(metadata["shards"]) == -(-metadata["num_rows"] // 4) > 1
    assert sorted(p.name for p in prepared_dir.glob("*.array_record")) == metadata["shards"]

    kwargs = dict(seq_len=SEQ_LEN, global_batch_rows=4, max_rows=None)
    online = eval_batches(SourceConfig(paths=(corpus,), prompt_field="question"), tok, **kwargs)
    offline = eval_batches(shards(prepared_dir), tok, **kwargs)
    assert len(offline) == len(online) == -(-metadata["num_rows"] // 4)
    for a, b in zip(online, offline):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.concatenate([b["valid"] for b in offline]).all()  # prompts and boundaries stay masked


def row_keys(batches) -> list[bytes]:
    return [np.r_[ids, targets[-1:]].tobytes() for b in batches for ids, targets in zip(b["input_ids"], b["targets"])]


def test_prepared_rows_are_shared_disjointly_between_processes(prepared_dir, tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    num_rows = json.loads((prepared_dir / "metadata.json").read_text())["num_rows"]
    cfg = DataConfig(tokenizer=tokenizer_dir, sources=(shards(prepared_dir),), seq_len=SEQ_LEN)
    every_row = row_keys(eval_batches(shards(prepared_dir), tok, seq_len=SEQ_LEN, global_batch_rows=1, max_rows=None))
    epoch_shares = []
    for p, count in enumerate((-(-num_rows // 2), num_rows // 2)):  # process p's items of the first epoch
        iterator = iter(train_dataset(cfg, tok, batch_rows=1, process_index=p, process_count=2))
        epoch_shares.append(row_keys([next(iterator) for _ in range(count)]))
    assert len(set(every_row)) == num_rows
    assert not set(epoch_shares[0]) & set(epoch_shares[1])
    assert sorted(epoch_shares[0] + epoch_shares[1]) == sorted(every_row)


def test_prepared_rows_for_another_seq_len_or_tokenizer_are_refused(prepared_dir, tokenizer_dir, tmp_path):
    cfg = DataConfig(tokenizer=tokenizer_dir, sources=(shards(prepared_dir),), seq_len=32)
    with pytest.raises(ValueError, match=r"seq_len 16, but data\.seq_len is 32\. Re-run rho_jax\.data\.prepare"):
        train_dataset(cfg, load_tokenizer(tokenizer_dir), batch_rows=2)
    build_tiny_tokenizer(tmp_path / "other", vocab_size=300)
    other = load_tokenizer(str(tmp_path / "other"))
    with pytest.raises(ValueError, match=r"tokenized with another tokenizer .* Re-run rho_jax\.data\.prepare"):
        eval_batches(shards(prepared_dir), other, seq_len=SEQ_LEN, global_batch_rows=2, max_rows=None)


def test_prepare_refuses_foreign_output_and_replaces_its_own(tokenizer_dir, corpus, tmp_path):
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to replace it"):
        run_prepare(tokenizer_dir, corpus, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    output = tmp_path / "out"
    run_prepare(tokenizer_dir, corpus, output, seq_len=8)
    assert run_prepare(tokenizer_dir, corpus, output)["seq_len"] == SEQ_LEN  # an earlier prepare output is replaced
    assert json.loads((output / "metadata.json").read_text())["seq_len"] == SEQ_LEN
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "results"]  # no staging folders left behind


def test_failed_prepare_leaves_nothing_that_looks_complete(tokenizer_dir, tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text('{"text": "fine", "question": ""}\n' * 30 + "{broken\n")
    with pytest.raises(ValueError, match=r"docs\.jsonl:31: invalid JSON"):
        run_prepare(tokenizer_dir, str(corpus), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl"]


def test_prepare_reads_documents_not_prepared_rows(prepared_dir, tokenizer_dir, tmp_path):
    with pytest.raises(ValueError, match="already prepared"):
        main([f"--tokenizer={tokenizer_dir}", "--seq_len=16", f"--output={tmp_path}", f"{prepared_dir}/*.array_record"])
