"""Data pipeline: tokenizer conventions, sources, packing, mixtures, per-process shares, resume, eval, errors.

Most tests use a word-level tokenizer in which word `w{i}` is token `i + 3` and every document
uses words no other document uses, so each token tells which document (and position) it came from.
"""

from __future__ import annotations

import json
import pickle

import grain
import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from rho_jax.data import (
    DataConfig,
    SourceConfig,
    eval_batches,
    load_tokenizer,
    to_global_batch,
    tokenizer_fingerprint,
    train_dataset,
)
from rho_jax.data.packing import pack_documents
from rho_jax.data.pipeline import training_order
from rho_jax.data.sources import JsonlSource, ParquetSource, open_source
from rho_jax.data.tokenizer import encode_document
from rho_jax.models.llama import positions_from_segments
from rho_jax.models.parity import build_tiny_tokenizer

EOS = 2
OFFSET = 3  # token id of word w{i}


def save_word_tokenizer(directory, num_words: int = 6000, template: str | None = None) -> str:
    """A word-level tokenizer: <pad>=0, <s>=1, </s>=2, w{i}=i+3; `template` e.g. "<s> $A" adds specials."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + OFFSET for i in range(num_words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if template is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[("<s>", 1), ("</s>", 2)]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(directory))
    return str(directory)


@pytest.fixture(scope="session")
def word_tokenizer_dir(tmp_path_factory):
    return save_word_tokenizer(tmp_path_factory.mktemp("word_tokenizer"))


@pytest.fixture(scope="session")
def tok(word_tokenizer_dir):
    return load_tokenizer(word_tokenizer_dir)


def words(ids) -> str:
    return " ".join(f"w{i}" for i in ids)


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def word_docs(lengths, start: int = 0) -> list[list[int]]:
    """Documents as lists of word ids, each using its own consecutive range starting at `start`."""
    bounds = np.cumsum([start, *lengths])
    return [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]


def data_config(tokenizer_dir, *sources, seq_len=16, seed=0, num_workers=0) -> DataConfig:
    return DataConfig(tokenizer=tokenizer_dir, sources=sources, seq_len=seq_len, seed=seed, num_workers=num_workers)


def take(ds, n: int) -> list[dict[str, np.ndarray]]:
    iterator = iter(ds)
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ---------------------------------------------------------------- tokenizer


def test_encode_document_follows_the_tokenizers_bos_convention_and_masks_prompts(tmp_path, tok):
    plain = encode_document(tok, words([1, 2]))
    np.testing.assert_array_equal(plain["tokens"], [4, 5, EOS])
    np.testing.assert_array_equal(plain["loss_mask"], [True, True, True])
    assert plain["tokens"].dtype == np.int32 and plain["loss_mask"].dtype == bool

    with_prompt = encode_document(tok, words([3, 4]), prompt=words([1, 2]))
    np.testing.assert_array_equal(with_prompt["tokens"], [4, 5, 6, 7, EOS])
    np.testing.assert_array_equal(with_prompt["loss_mask"], [False, False, True, True, True])

    bos = load_tokenizer(save_word_tokenizer(tmp_path / "bos", 10, template="<s> $A"))
    doc = encode_document(bos, words([1, 2]))
    np.testing.assert_array_equal(doc["tokens"], [1, 4, 5, EOS])
    np.testing.assert_array_equal(doc["loss_mask"], [False, True, True, True])
    doc = encode_document(bos, words([3]), prompt=words([1]))
    np.testing.assert_array_equal(doc["tokens"], [1, 4, 6, EOS])
    np.testing.assert_array_equal(doc["loss_mask"], [False, False, True, True])

    # A tokenizer that appends EOS itself: the document still ends with exactly one EOS, after the response.
    eos = load_tokenizer(save_word_tokenizer(tmp_path / "eos", 10, template="<s> $A </s>"))
    np.testing.assert_array_equal(encode_document(eos, words([1, 2]))["tokens"], [1, 4, 5, EOS])
    np.testing.assert_array_equal(encode_document(eos, words([3]), prompt=words([1]))["tokens"], [1, 4, 6, EOS])


def test_tokenizer_fingerprint_is_stable_and_tells_vocabularies_apart(tmp_path, tok):
    build_tiny_tokenizer(tmp_path / "a")
    first = load_tokenizer(str(tmp_path / "a"))
    first.save_pretrained(str(tmp_path / "b"))
    assert tokenizer_fingerprint(first) == tokenizer_fingerprint(load_tokenizer(str(tmp_path / "b")))
    build_tiny_tokenizer(tmp_path / "c", vocab_size=300)
    assert tokenizer_fingerprint(first) != tokenizer_fingerprint(load_tokenizer(str(tmp_path / "c")))
    bos = load_tokenizer(save_word_tokenizer(tmp_path / "bos", 6000, template="<s> $A"))
    assert tokenizer_fingerprint(tok) != tokenizer_fingerprint(bos)  # same vocab, adds BOS
    assert len(tokenizer_fingerprint(tok)) == 16


# ---------------------------------------------------------------- sources


def test_jsonl_parquet_and_text_sources_read_the_same_documents(tmp_path):
    docs = [{"text": f"response {i}", "prompt": f"question {i}"} for i in range(11)]
    write_jsonl(tmp_path / "a.jsonl", docs[:6])
    (tmp_path / "b.jsonl").write_text("\n" + "".join(json.dumps(d) + "\n\n" for d in docs[6:]))  # blank lines skipped
    pq.write_table(pa.Table.from_pylist(docs[:6]), tmp_path / "a.parquet", row_group_size=4)
    pq.write_table(pa.Table.from_pylist(docs[6:]), tmp_path / "b.parquet", row_group_size=2)
    for pattern in ("*.jsonl", "*.parquet"):
        source = open_source(SourceConfig(paths=(str(tmp_path / pattern),), prompt_field="prompt"))
        assert [source[i] for i in range(len(source))] == docs
        restored = pickle.loads(pickle.dumps(source))  # grain workers receive sources pickled
        assert [restored[i] for i in reversed(range(len(restored)))] == docs[::-1]

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt").write_text("first line\n\n  second line  \r\n")
    (tmp_path / "t" / "b.md").write_text("# title\nbody\n")
    (tmp_path / "t" / "empty.txt").write_text("")
    lines = open_source(SourceConfig(paths=(str(tmp_path / "t" / "*"),), format="text", text_split="line"))
    assert [lines[i]["text"] for i in range(len(lines))] == ["first line", "  second line  ", "# title", "body"]
    files = open_source(SourceConfig(paths=(str(tmp_path / "**" / "*.txt"), str(tmp_path / "t" / "b.md"))))
    assert [files[i] for i in range(len(files))] == [
        {"text": "first line\n\n  second line  \r\n", "prompt": None},
        {"text": "# title\nbody\n", "prompt": None},
    ]


# ---------------------------------------------------------------- packing


def reference_pack(docs: list[dict[str, np.ndarray]], row_len: int) -> dict[str, np.ndarray]:
    """Straightforward packer: concatenate every document, cut every `row_len` tokens, pad the last row."""
    tokens = np.concatenate([d["tokens"] for d in docs])
    loss_mask = np.concatenate([d["loss_mask"] for d in docs])
    doc_index = np.concatenate([np.full(len(d["tokens"]), k + 1) for k, d in enumerate(docs)])
    padding = -len(tokens) % row_len
    tokens, loss_mask, doc_index = (np.pad(a, (0, padding)) for a in (tokens, loss_mask, doc_index))
    rows = {"tokens": tokens.reshape(-1, row_len), "loss_mask": loss_mask.reshape(-1, row_len)}
    segment_ids, positions = np.zeros_like(rows["tokens"]), np.zeros_like(rows["tokens"])
    for r, row_docs in enumerate(doc_index.reshape(-1, row_len)):
        segment, position = 0, 0
        for t, doc in enumerate(row_docs):
            if doc == 0:
                break
            if t == 0 or doc != row_docs[t - 1]:
                segment, position = segment + 1, 0
            segment_ids[r, t], positions[r, t] = segment, position
            position += 1
    return {**rows, "segment_ids": segment_ids, "positions": positions}


def test_packing_matches_a_straightforward_packer():
    rng = np.random.default_rng(0)
    row_len = 17
    docs = [
        {"tokens": rng.integers(3, 300, n).astype(np.int32), "loss_mask": rng.random(n) < 0.7}
        for n in [*rng.integers(1, 12, 30), 40, 17, 3, 60]  # short, longer than a row, exactly a row
    ]
    rows = list(pack_documents(grain.MapDataset.source(docs).to_iter_dataset(), row_len))
    got = {key: np.stack([r[key] for r in rows]) for key in ("tokens", "segment_ids", "loss_mask")}
    expected = reference_pack(docs, row_len)
    for key in got:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert got["tokens"].dtype == np.int32 and got["segment_ids"].dtype == np.int32 and got["loss_mask"].dtype == bool
    # The model derives positions from the segment ids alone.
    positions = np.asarray(positions_from_segments(got["segment_ids"]))
    in_document = expected["segment_ids"] > 0
    np.testing.assert_array_equal(positions[in_document], expected["positions"][in_document])


def expected_valid(batch, token_doc, token_pos, doc_tokens, prompt_len) -> np.ndarray:
    """valid[b, t] computed from the documents alone: (input, target) are consecutive tokens of one
    document and the target is not a prompt token. Words are unique, so a pair identifies its document."""
    valid = np.zeros(batch["targets"].shape, bool)
    for (b, t), x in np.ndenumerate(batch["input_ids"]):
        if x == EOS:
            continue
        doc, pos = token_doc[x], token_pos[x]
        valid[b, t] = batch["targets"][b, t] == doc_tokens[doc][pos + 1] and pos + 1 >= prompt_len[doc]
    return valid


def test_valid_targets_never_cross_documents_and_skip_prompts(tmp_path, word_tokenizer_dir, tok):
    rng = np.random.default_rng(1)
    docs = word_docs(rng.integers(1, 45, 60))  # seq_len 16: many documents span two or three rows
    records, doc_tokens, prompt_len = [], [], []
    for k, ids in enumerate(docs):
        split = int(rng.integers(0, len(ids))) if k % 2 else 0  # odd documents: a prompt of `split` words
        records.append({"text": words(ids[split:]), "prompt": words(ids[:split])})
        doc_tokens.append([i + OFFSET for i in ids] + [EOS])
        prompt_len.append(split)
    token_doc = {i + OFFSET: k for k, ids in enumerate(docs) for i in ids}
    token_pos = {i + OFFSET: p for ids in docs for p, i in enumerate(ids)}
    source = SourceConfig(paths=(write_jsonl(tmp_path / "d.jsonl", records),), prompt_field="prompt")
    cfg = data_config(word_tokenizer_dir, source)
    batches = take(train_dataset(cfg, tok, batch_rows=4), 40)
    rows_per_doc = {}
    for b, batch in enumerate(batches):
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
            "input_ids": ((4, 16), np.int32), "targets": ((4, 16), np.int32),
            "valid": ((4, 16), bool), "segment_ids": ((4, 16), np.int32),
        }
        expected = expected_valid(batch, token_doc, token_pos, doc_tokens, prompt_len)
        np.testing.assert_array_equal(batch["valid"], expected)
        for r, row in enumerate(batch["input_ids"]):
            for x in set(row.tolist()) - {EOS}:
                rows_per_doc.setdefault(token_doc[x], set()).add((b, r))
    assert max(len(v) for v in rows_per_doc.values()) >= 3  # long documents were split across rows
    valid = np.concatenate([b["valid"] for b in batches])
    assert valid.mean() > 0.5 and not valid.all()


# ---------------------------------------------------------------- mixtures, shares, determinism, resume


def test_mixture_follows_weights(tmp_path, word_tokenizer_dir, tok):
    rng = np.random.default_rng(4)
    sources = []
    for s, weight in enumerate((6.0, 3.0, 1.0)):
        docs = [rng.integers(1000 * s, 1000 * (s + 1), rng.integers(4, 12)) for _ in range(1000)]
        path = write_jsonl(tmp_path / f"s{s}.jsonl", [{"text": words(ids)} for ids in docs])
        sources.append(SourceConfig(paths=(path,), weight=weight))
    batches = take(train_dataset(data_config(word_tokenizer_dir, *sources, seq_len=8), tok, batch_rows=10), 200)
    rows = np.concatenate([b["input_ids"] for b in batches])
    source_of_row = [{(x - OFFSET) // 1000 for x in row if x != EOS} for row in rows]
    assert all(len(s) == 1 for s in source_of_row)  # a row never mixes sources
    counts = np.bincount([s.pop() for s in source_of_row], minlength=3)
    np.testing.assert_allclose(counts / len(rows), [0.6, 0.3, 0.1], atol=0.02)


def one_row_per_document_source(tmp_path, num_docs: int = 40, name: str = "docs") -> SourceConfig:
    """Documents of 7 words + EOS = 8 tokens: with seq_len 7 every packed row is exactly one document."""
    docs = word_docs([7] * num_docs)
    return SourceConfig(paths=(write_jsonl(tmp_path / f"{name}.jsonl", [{"text": words(ids)} for ids in docs]),))


def documents_in_order(batches) -> list[int]:
    """Index of the document that each row (one document per row) holds."""
    return [int(row[0] - OFFSET) // 7 for b in batches for row in b["input_ids"]]


def test_training_order_shares_are_disjoint_and_cover_each_epoch():
    items = grain.MapDataset.range(25)
    share = [training_order(items, seed=3, process_index=p, process_count=2) for p in range(2)]
    first_epoch = [list(share[0][:13]), list(share[1][:12])]
    assert not set(first_epoch[0]) & set(first_epoch[1])
    assert sorted(first_epoch[0] + first_epoch[1]) == list(range(25))
    stream = training_order(items, seed=3, process_index=0, process_count=1)
    epochs = [list(stream[:25]), list(stream[25:50])]
    assert sorted(epochs[1]) == list(range(25)) and epochs[0] != epochs[1]  # every epoch reshuffled


def test_processes_read_disjoint_documents_covering_the_data(tmp_path, word_tokenizer_dir, tok):
    cfg = data_config(word_tokenizer_dir, one_row_per_document_source(tmp_path), seq_len=7)
    shares = [
        documents_in_order(take(train_dataset(cfg, tok, batch_rows=4, process_index=p, process_count=2), 5))
        for p in range(2)
    ]
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == list(range(40))


def test_training_stream_is_deterministic_seeded_and_reshuffled_every_epoch(tmp_path, word_tokenizer_dir, tok):
    source = one_row_per_document_source(tmp_path)

    def documents(seed: int) -> list[int]:
        cfg = data_config(word_tokenizer_dir, source, seq_len=7, seed=seed)
        return documents_in_order(take(train_dataset(cfg, tok, batch_rows=8), 10))

    first, again, other = documents(0), documents(0), documents(1)
    assert first == again
    assert first != other
    epochs = [first[:40], first[40:]]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(40))
    assert epochs[0] != epochs[1]


def two_source_config(tmp_path, word_tokenizer_dir, num_workers: int = 0) -> DataConfig:
    rng = np.random.default_rng(2)
    sources = []
    for s in range(2):
        docs = word_docs(rng.integers(1, 30, 50), start=1000 * s)
        path = write_jsonl(tmp_path / f"s{s}.jsonl", [{"text": words(ids)} for ids in docs])
        sources.append(SourceConfig(paths=(path,), weight=1.0 + s))
    return data_config(word_tokenizer_dir, *sources, num_workers=num_workers)


def consume_save_consume(ds, before: int, after: int):
    """Take `before` batches, save the state (through JSON, as grain.checkpoint stores it), take `after` more."""
    iterator = iter(ds)
    first = [next(iterator) for _ in range(before)]
    state = json.loads(json.dumps(iterator.get_state()))
    return first, state, [next(iterator) for _ in range(after)]


def resume(ds, state, count: int):
    iterator = iter(ds)
    iterator.set_state(state)
    return [next(iterator) for _ in range(count)]


def test_iterator_state_resumes_exactly(tmp_path, word_tokenizer_dir, tok):
    ds = train_dataset(two_source_config(tmp_path, word_tokenizer_dir), tok, batch_rows=3)
    _, state, expected = consume_save_consume(ds, 7, 6)
    assert_batches_equal(resume(ds, state, 6), expected)


@pytest.mark.slow
def test_worker_process_gives_the_same_stream_and_resumes_exactly(tmp_path, word_tokenizer_dir, tok):
    in_process = take(train_dataset(two_source_config(tmp_path, word_tokenizer_dir), tok, batch_rows=3), 13)
    ds = train_dataset(two_source_config(tmp_path, word_tokenizer_dir, num_workers=1), tok, batch_rows=3)
    first, state, expected = consume_save_consume(ds, 7, 6)
    assert_batches_equal(first + expected, in_process)  # one worker reads the whole (unsliced) stream
    assert_batches_equal(resume(ds, state, 6), expected)


def test_resume_after_a_document_ended_exactly_at_a_row_boundary(tmp_path, word_tokenizer_dir, tok):
    """The packer's "no remainder" state must survive JSON (grain.checkpoint) too."""
    cfg = data_config(word_tokenizer_dir, one_row_per_document_source(tmp_path), seq_len=7)
    ds = train_dataset(cfg, tok, batch_rows=2)
    _, state, expected = consume_save_consume(ds, 1, 3)
    assert_batches_equal(resume(ds, state, 3), expected)


# ---------------------------------------------------------------- evaluation


def test_eval_batches_split_the_set_over_processes_and_pad_the_last_batch(tmp_path, tok):
    docs = word_docs(np.random.default_rng(3).integers(1, 30, 23))  # 19 rows
    source = SourceConfig(paths=(write_jsonl(tmp_path / "eval.jsonl", [{"text": words(ids)} for ids in docs]),))
    single = eval_batches(source, tok, seq_len=16, global_batch_rows=4, max_rows=None)
    num_rows = -(-sum(len(d) + 1 for d in docs) // 17)
    assert num_rows % 4  # the last batch needs padding
    assert len(single) == -(-num_rows // 4)
    padding = np.concatenate([b["segment_ids"] for b in single])[num_rows:]
    assert padding.shape[0] == -num_rows % 4 and not padding.any()
    assert not np.concatenate([b["valid"] for b in single])[num_rows:].any()
    rows = [np.r_[b["input_ids"][r], b["targets"][r, -1]] for b in single for r in range(len(b["input_ids"]))]
    stream = np.concatenate(rows[:num_rows])
    expected_stream = np.concatenate([[i + OFFSET for i in ids] + [EOS] for ids in docs])
    np.testing.assert_array_equal(stream[: len(expected_stream)], expected_stream)  # the whole set, in file order
    assert not stream[len(expected_stream) :].any()
    per_process = [
        eval_batches(source, tok, seq_len=16, global_batch_rows=4, max_rows=None, process_index=p, process_count=2)
        for p in range(2)
    ]
    assert len(per_process[0]) == len(per_process[1]) == len(single)
    for whole, part0, part1 in zip(single, *per_process):
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([part0[key], part1[key]]), whole[key], err_msg=key)
    limited = eval_batches(source, tok, seq_len=16, global_batch_rows=2, max_rows=3)
    assert len(limited) == 2 and not limited[1]["segment_ids"][1].any()
    np.testing.assert_array_equal(np.concatenate([b["input_ids"] for b in limited])[:3], np.stack(rows[:3])[:, :-1])


def test_to_global_batch_places_the_local_batch_on_the_mesh():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    local = {"input_ids": np.arange(16 * 4, dtype=np.int32).reshape(16, 4), "valid": np.ones((16, 4), bool)}
    placed = to_global_batch(local, sharding)
    for key, value in local.items():
        assert placed[key].sharding == sharding
        np.testing.assert_array_equal(np.asarray(placed[key]), value)


# ---------------------------------------------------------------- errors


def test_glob_matching_nothing_names_the_pattern(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing-\*\.jsonl.*matches no file"):
        open_source(SourceConfig(paths=(str(tmp_path / "nothing-*.jsonl"),)))


def test_empty_source_is_refused(tmp_path):
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    with pytest.raises(ValueError, match=r"source 'blanks' holds no documents"):
        open_source(SourceConfig(paths=(str(tmp_path / "blank.jsonl"),), name="blanks"))


def test_bad_json_line_names_file_and_line(tmp_path, word_tokenizer_dir, tok):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "w1"}\n\n{"text": "w2"\n{"text": "w3"}\n')
    source = JsonlSource([str(path)])
    assert source[0] == {"text": "w1", "prompt": None}
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: invalid JSON"):
        source[1]
    cfg = data_config(word_tokenizer_dir, SourceConfig(paths=(str(path),)))
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: invalid JSON"):
        take(train_dataset(cfg, tok, batch_rows=1), 3)


def test_missing_or_non_string_field_names_file_line_and_fields(tmp_path):
    path = write_jsonl(tmp_path / "fields.jsonl", [{"content": "w1"}, {"text": 5}, ["w1"]])
    source = JsonlSource([path])
    with pytest.raises(ValueError, match=r"fields\.jsonl:1: no field 'text' \(fields: \['content'\]\)"):
        source[0]
    with pytest.raises(ValueError, match=r"fields\.jsonl:2: field 'text' must be a string, got int"):
        source[1]
    with pytest.raises(ValueError, match=r"fields\.jsonl:3: expected a JSON object"):
        source[2]


def test_unknown_or_mixed_format_is_refused(tmp_path):
    (tmp_path / "a.csv").write_text("text\nw1\n")
    (tmp_path / "b.jsonl").write_text('{"text": "w1"}\n')
    (tmp_path / "c.txt").write_text("w1\n")
    with pytest.raises(ValueError, match=r"cannot tell the format of files with extension \['\.csv'\]"):
        open_source(SourceConfig(paths=(str(tmp_path / "a.csv"),)))
    with pytest.raises(ValueError, match=r"mix formats \['jsonl', 'text'\]"):
        open_source(SourceConfig(paths=(str(tmp_path / "b.jsonl"), str(tmp_path / "c.txt"))))
    with pytest.raises(ValueError, match=r"format must be one of .* got 'csv'"):
        SourceConfig(paths=(str(tmp_path / "a.csv"),), format="csv")


def test_missing_parquet_column_lists_the_available_ones(tmp_path):
    pq.write_table(pa.table({"content": ["w1"], "id": [1]}), tmp_path / "p.parquet")
    with pytest.raises(ValueError, match=r"p\.parquet: no column 'text'; available columns: \['content', 'id'\]"):
        ParquetSource([str(tmp_path / "p.parquet")])
    pq.write_table(pa.table({"text": ["w1", None]}), tmp_path / "n.parquet")
    with pytest.raises(ValueError, match=r"n\.parquet row 1: field 'text' must be a string, got NoneType"):
        ParquetSource([str(tmp_path / "n.parquet")])[1]


def test_tokenizer_directory_must_exist_and_hold_a_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer directory .*missing does not exist"):
        load_tokenizer(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds none of \['tokenizer\.json'"):
        load_tokenizer(str(tmp_path / "empty"))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SourceConfig(paths="data/*.jsonl"), "must be a list"),
        (lambda: SourceConfig(paths=()), "non-empty list"),
        (lambda: SourceConfig(paths=("a",), weight=0.0), "weight must be a finite number > 0"),
        (lambda: SourceConfig(paths=("a",), prompt_field="text"), "prompt_field must be null or a field other"),
        (lambda: SourceConfig(paths=("a",), text_split="para"), "text_split must be one of"),
        (lambda: DataConfig(tokenizer="t", sources=()), "data.sources must be a non-empty list"),
        (lambda: DataConfig(tokenizer="t", sources=(SourceConfig(paths=("a",)),), seq_len=1), "data.seq_len must be"),
        (lambda: DataConfig(tokenizer="t", sources=(SourceConfig(paths=("a",)),), num_workers=-1), "num_workers"),
    ],
)
def test_config_rejects_bad_values(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_prompt_field_on_text_files_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("w1\n")
    with pytest.raises(ValueError, match=r"prompt_field is set, but text sources have no fields"):
        open_source(SourceConfig(paths=(str(tmp_path / "a.txt"),), prompt_field="q"))
