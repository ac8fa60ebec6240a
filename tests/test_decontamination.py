"""N-gram decontamination (rho_jax.curation): normalization and hashes against their written definitions,
planted contamination found with full recall, equivalence with lm-eval's Janitor (an independent reference
written here, with the same normalization), Korean, resume after a kill, the Slurm submission against a
stand-in sbatch, Ray, the embedding stage, and bad input. All data are made up here."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from datatrove.executor import LocalPipelineExecutor
from slurm_stand_in import slurm_stand_in

from rho_jax.curation import ngrams
from rho_jax.curation.decontaminate_cli import main as decontaminate_main
from rho_jax.curation.decontamination import CutSettings, cut_pieces
from rho_jax.curation.decontamination_pipeline import RunSettings, build_pipeline, split_input
from rho_jax.curation.embeddings import embed_texts
from rho_jax.curation.eval_index import EvalItem, NGramIndex, build_index, items_from_jsonl, items_from_tasks
from rho_jax.curation.near_duplicates import HashedBagOfWords, NearDuplicateReport, cosine_matches
from rho_jax.curation.ngrams import DecontaminationError, NGramSettings

ROOT = Path(__file__).resolve().parents[1]
MASK = (1 << 64) - 1


# ---------------------------------------------------------------- an independent reference of the definitions

def ref_words_and_spans(text: str, fold_digits: bool = False) -> list[tuple[str, int, int]]:
    """(word, first character, last character) per word, character by character from the written rules:
    Z*/P*/S*/Cc separate words, Cf is deleted, a word is NFC(casefold(NFD(run))), digits -> 0 if folded."""
    found, run, first = [], [], None
    for position, char in enumerate(text + " "):
        category = unicodedata.category(char)
        if category[0] in "ZPS" or category == "Cc":
            if run:
                word = unicodedata.normalize("NFC", unicodedata.normalize("NFD", "".join(run)).casefold())
                if fold_digits:
                    word = "".join("0" if c.isdecimal() else c for c in word)
                found.append((word, first, position - 1))
            run, first = [], None
        else:
            first = position if first is None else first
            if category != "Cf":
                run.append(char)
    return found


def ref_word_hash(word: str) -> int:
    data = word.encode("utf-8")
    total = len(data)
    for k, byte in enumerate(data):
        total = (total + (byte + 1) * pow(0x100000001B3, k, 1 << 64)) & MASK
    total ^= total >> 30
    total = (total * 0xBF58476D1CE4E5B9) & MASK
    total ^= total >> 27
    total = (total * 0x94D049BB133111EB) & MASK
    return total ^ (total >> 31)


def ref_ngram_hashes(text: str, n: int) -> list[int]:
    hashes = [ref_word_hash(word) for word, _, _ in ref_words_and_spans(text)]
    return [sum(hashes[j + i] * pow(0x9E3779B97F4A7C15, n - 1 - i, 1 << 64) for i in range(n)) & MASK
            for j in range(len(hashes) - n + 1)]


class ReferenceJanitor:
    """lm-eval's Janitor (decontamination/janitor.py) with this project's normalization: contaminant n-grams
    are strings in a set; a document's n-grams are looked up one by one; the Janitor's own chunk splitting."""

    def __init__(self, n: int, cut: CutSettings):
        self.n, self.cut, self.dirt = n, cut, set()

    def register(self, text: str) -> None:
        words = [word for word, _, _ in ref_words_and_spans(text)]
        self.dirt.update(" ".join(words[j: j + self.n]) for j in range(len(words) - self.n + 1))

    def hits(self, text: str) -> list[tuple[int, int]]:
        tokens = ref_words_and_spans(text)
        return [(tokens[j][1], tokens[j + self.n - 1][2]) for j in range(len(tokens) - self.n + 1)
                if " ".join(word for word, _, _ in tokens[j: j + self.n]) in self.dirt]

    def clean(self, text: str) -> list[str]:
        chunks, splice, end = [], 0, -1
        for i, (start, end) in enumerate(self.hits(text)):
            if i >= self.cut.max_hits:
                return []
            start, end = max(0, start - self.cut.window), min(len(text), end + self.cut.window)
            if start - splice > self.cut.min_piece:
                chunks.append(text[splice:start])
            splice = end
        if end < len(text) - self.cut.min_piece:
            chunks.append(text[end + 1:])
        return chunks


# ---------------------------------------------------------------- fixtures: made-up evaluation items and corpora

VOCABULARY = ("apple train river seven blue quickly market Ann Bo counts twelve sells cookies garden tickets "
              "bicycle pencil window orange seventy spends dollars each week farmer cows library books ratio "
              "café naïve Straße 사과 기차 강 일곱 파란 시장").split()


def made_up_items(rng: random.Random, count: int, task: str = "made_up") -> list[EvalItem]:
    items = []
    for k in range(count):
        words = rng.choices(VOCABULARY, k=rng.randint(24, 45))
        text = " ".join(words[:10]) + ", " + " ".join(words[10:20]) + "? " + " ".join(words[20:]) + "."
        items.append(EvalItem(task, k, text))
    return items


def reformat(text: str, rng: random.Random) -> str:
    """The same words, respelled: case, spacing, line breaks, punctuation and quotes changed, and half the
    time decomposed (NFD: Hangul syllables into jamo, accented letters into letter + combining mark)."""
    out = []
    for word in text.split():
        word = word.strip(",.?")
        word = rng.choice([word.upper(), word.lower(), word.title(), word])
        out.append(word + rng.choice(["", "", ",", ";", " -", "!", "\u201d", ")"]))
        out.append(rng.choice([" ", "  ", "\n", "\t", "\u00a0", "\u3000 "]))
    return unicodedata.normalize(rng.choice(["NFC", "NFD"]), "".join(out))


def clean_text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "elit", "sed", "do",
                                 "tempor", "magna", "aliqua"], k=words))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def read_rows(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(Path(folder).glob("[0-9]*.jsonl")):
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows


def run_local(index: Path, corpus: Path, output: Path, mode: str, tasks: int = 2, cut: CutSettings | None = None,
              **extra) -> Path:
    settings = RunSettings(index=str(index), index_sha256="", input=str(corpus), mode=mode, tasks=tasks,
                           cut=cut or CutSettings(), **extra)
    LocalPipelineExecutor(build_pipeline(settings, output), tasks=tasks, workers=1, logging_dir=str(output / "logs")).run()
    return output


def save_index(items: list[EvalItem], path: Path, n: int = 13) -> Path:
    build_index(items, NGramSettings(n=n)).save(path)
    return path


# ---------------------------------------------------------------- normalization and hashes

@pytest.mark.parametrize("text, fold, expected", [
    ("Hello,   World!\tfoo\nBAR", False, ["hello", "world", "foo", "bar"]),
    ("It\u2019s \u201cquoted\u201d \u2014 x\u00b2+y=z", False, ["it", "s", "quoted", "x\u00b2", "y", "z"]),
    ("STRASSE Stra\u00dfe \u03a3\u0391\u03a3", False, ["strasse", "strasse", "\u03c3\u03b1\u03c3"]),
    ("caf\u00e9 cafe\u0301 CAF\u00c9", False, ["caf\u00e9"] * 3),
    ("con\u00adtami\u200bnation \ufeffword", False, ["contamination", "word"]),
    ("\uff21\uff22\uff0c\u3000\uff43", False, ["\uff41\uff42", "\uff43"]),
    ("12 apples, \u0661\u0662 pears, 3.5", True, ["00", "apples", "00", "pears", "0", "0"]),
    ("12 apples", False, ["12", "apples"]),
    ("\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8", False, ["\ud55c\uad6d\uc5b4", "\ud14d\uc2a4\ud2b8"]),
    ("", False, []),
])
def test_normalization_follows_its_definition(text, fold, expected):
    assert ngrams.words(text, fold) == expected
    assert [word for word, _, _ in ref_words_and_spans(text, fold)] == expected
    assert ngrams.normalize(text, fold) == " ".join(expected)


def test_words_and_spans_agree_with_the_reference_on_random_unicode():
    pool = ("aZ09 \t\n.,!?-'\"()$+\u00e9e\u0301\u00df\u03a3\u0130\u00ad\u200b\u200d\ufeff\u00a0\u3000"
            "\ud55c\u1100\u1161\u11a8\uac00\u0661\u4e2d\u6587\u0e44\u0e17\u0e22\u00bd\u2460\U0001f600\ufb01")
    rng = random.Random(0)
    for _ in range(400):
        text = "".join(rng.choices(pool, k=rng.randint(0, 40)))
        reference = ref_words_and_spans(text)
        assert ngrams.words(text) == [word for word, _, _ in reference], repr(text)
        assert ngrams.word_spans(text).tolist() == [[first, last + 1] for _, first, last in reference], repr(text)


def test_korean_stays_composed_and_matches_decomposed_spellings():
    sentence = "\ucca0\uc218\ub294 \uc0ac\uacfc \uc138 \uac1c\ub97c \uc0c0\ub2e4"
    decomposed = unicodedata.normalize("NFD", sentence)
    assert len(decomposed) > len(sentence)  # jamo
    assert ngrams.words(decomposed) == ngrams.words(sentence) == sentence.split()
    assert all(unicodedata.is_normalized("NFC", word) for word in ngrams.words(decomposed))
    settings = NGramSettings(n=3)
    assert ngrams.ngram_hashes(decomposed, settings).tolist() == ngrams.ngram_hashes(sentence, settings).tolist()


def test_hashes_match_their_written_definition():
    rng = random.Random(1)
    texts = ["", "one two", "Caf\u00e9 \ud55c\uad6d\uc5b4 " + clean_text(rng, 30), reformat(made_up_items(rng, 1)[0].text, rng)]
    for text in texts:
        for n in (1, 3, 13):
            assert ngrams.ngram_hashes(text, NGramSettings(n=n)).tolist() == ref_ngram_hashes(text, n)


def test_batch_hashes_equal_one_text_at_a_time():
    rng = random.Random(2)
    texts = [clean_text(rng, rng.randint(0, 30)) for _ in range(40)] + ["", "x", "\ud55c " * 20]
    settings = NGramSettings(n=5)
    batch = ngrams.batch_ngram_hashes(texts, settings)
    for k, text in enumerate(texts):
        mine = batch.hashes[batch.text == k]
        assert mine.tolist() == ngrams.ngram_hashes(text, settings).tolist()
        assert batch.position[batch.text == k].tolist() == list(range(len(mine)))
        assert batch.word_counts[k] == len(ngrams.words(text))


def test_long_texts_hash_the_same_across_segments(monkeypatch):
    rng = random.Random(3)
    text = " ".join(rng.choice(["alpha", "beta", "x" * 300, "\u03b4\u03ad\u03bb\u03c4\u03b1"]) for _ in range(400))
    whole = ngrams.ngram_hashes(text, NGramSettings(n=4)).tolist()
    monkeypatch.setattr(ngrams, "_SEGMENT", 64)  # many segments, and words longer than a segment
    assert ngrams.ngram_hashes(text, NGramSettings(n=4)).tolist() == whole == ref_ngram_hashes(text, 4)


# ---------------------------------------------------------------- the index

def test_index_round_trip_and_vectorized_membership(tmp_path):
    rng = random.Random(4)
    items = made_up_items(rng, 30)
    index = build_index(items, NGramSettings(n=6))
    path = tmp_path / "index.npz"
    index.save(path)
    loaded = NGramIndex.load(path)
    assert loaded.settings == NGramSettings(n=6) and loaded.items == items
    assert np.array_equal(loaded.hashes, np.unique(loaded.hashes)) and loaded.hashes.dtype == np.uint64
    owners: dict[int, set[int]] = {}
    for item_id, item in enumerate(items):
        for value in ref_ngram_hashes(item.text, 6):
            owners.setdefault(value, set()).add(item_id)
    assert sorted(owners) == loaded.hashes.tolist()
    rows = np.array([5, 0, 5, len(loaded) - 1])
    which, item_ids = loaded.owners(rows)
    assert sorted(zip(which.tolist(), item_ids.tolist())) == sorted(
        (k, item_id) for k, row in enumerate(rows.tolist()) for item_id in owners[loaded.hashes[row].item()])
    assert sum(len(ids) for ids in owners.values()) == len(loaded.item_ids)
    queries = np.concatenate([loaded.hashes[::3], np.random.default_rng(0).integers(0, 2**63, 5000, dtype=np.uint64)])
    positions, rows = loaded.contains(queries)
    assert positions.tolist() == np.flatnonzero(np.isin(queries, loaded.hashes)).tolist()
    assert (loaded.hashes[rows] == queries[positions]).all()


def test_items_from_task_specs_are_question_and_solution(tmp_path):
    write_jsonl(tmp_path / "data" / "gsm8k" / "test.jsonl", [
        {"question": "Ann has 4 apples and buys 6 more. How many now?", "answer": "4 + 6 = 10 apples\n#### 10"},
        {"question": "Bo runs 3 km a day. How far in 2 days?", "answer": "3 * 2 = 6\n#### 6"}])
    (tmp_path / "shots").mkdir()
    (tmp_path / "shots" / "gsm8k.md").write_text("Question: 1+1?\nAnswer: The answer is 2.\n")
    items = items_from_tasks(["gsm8k"], data_dir=tmp_path / "data", fewshot_dir=tmp_path / "shots")
    assert items == [EvalItem("gsm8k", 0, "Ann has 4 apples and buys 6 more. How many now?\n4 + 6 = 10 apples\n10"),
                     EvalItem("gsm8k", 1, "Bo runs 3 km a day. How far in 2 days?\n3 * 2 = 6")]
    # an n-gram across the question/answer boundary is indexed
    index = build_index(items, NGramSettings(n=4))
    assert index.contains(ngrams.ngram_hashes("How many now? 4 + 6", NGramSettings(n=4)))[0].tolist() == [0, 1]


def test_items_from_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "held.jsonl", [{"q": "a b", "a": ["c", "d"], "id": "x1"}, {"q": "e", "a": "f"}])
    assert items_from_jsonl(path, ["q", "a"]) == [EvalItem("held", "x1", "a b\nc\nd"), EvalItem("held", 1, "e\nf")]
    with pytest.raises(DecontaminationError, match=r"held.jsonl, line 1: no field 'z' \(the row has q, a, id\)"):
        items_from_jsonl(path, ["q", "z"])


# ---------------------------------------------------------------- planted contamination, through the pipeline

def test_planted_contamination_is_found_with_full_recall_and_no_false_hit(tmp_path):
    rng = random.Random(5)
    items = made_up_items(rng, 40)
    index = save_index(items, tmp_path / "index.npz")
    rows, planted = [], {}
    for k in range(300):
        text = clean_text(rng, rng.randint(20, 200))
        if k % 5 == 0:
            item = items[rng.randrange(len(items))]
            words = item.text.split()
            kind = ("exact", "reformatted", "partial")[k // 5 % 3]
            if kind == "exact":
                piece = item.text
            elif kind == "reformatted":
                piece = reformat(item.text, rng)
            else:  # exactly n consecutive words from the middle of the item
                start = rng.randint(0, len(words) - 13)
                piece = " ".join(words[start: start + 13])
            cut = rng.randint(0, len(text))
            text = f"{text[:cut]} {piece} {text[cut:]}"
            planted[f"doc{k}"] = (item.task, item.idx, piece)
        elif k % 5 == 1:  # 12 words of an item: below n, must not be found
            item = items[rng.randrange(len(items))]
            text += " " + " ".join(item.text.split()[:12])
        rows.append({"id": f"doc{k}", "text": text})
    write_jsonl(tmp_path / "corpus" / "a.jsonl", rows[::2])
    write_jsonl(tmp_path / "corpus" / "b.jsonl", rows[1::2])
    output = run_local(index, tmp_path / "corpus", tmp_path / "out", "report")
    report = read_rows(output / "report")
    found = {row["doc_id"] for row in report}
    assert found == set(planted)  # full recall, nothing on clean text or on 12-word pieces
    by_doc = {(row["doc_id"], row["task"], row["idx"]): row for row in report}
    texts = {row["id"]: row["text"] for row in rows}
    for doc_id, (task, idx, piece) in planted.items():
        row = by_doc[(doc_id, task, idx)]
        [match] = row["matches"]
        assert texts[doc_id][match["start"]: match["end"]] == match["text"]
        assert ngrams.words(match["text"]) == ngrams.words(piece)  # the whole planted passage, located exactly
    counts = [json.loads(path.read_text()) for path in sorted((output / "report").glob("*.counts.json"))]
    assert sum(c["documents"] for c in counts) == 300 and sum(c["contaminated_documents"] for c in counts) == len(planted)


# ---------------------------------------------------------------- equivalence with lm-eval's Janitor

def janitor_corpus(rng: random.Random, items: list[EvalItem]) -> list[dict]:
    rows = []
    for k in range(160):
        parts = []
        for _ in range(rng.randint(1, 6)):
            roll = rng.random()
            if roll < 0.45:
                parts.append(clean_text(rng, rng.randint(3, 60)))
            else:
                words = rng.choice(items).text.split()
                start = rng.randint(0, len(words) - 1)
                piece = " ".join(words[start: start + rng.randint(5, 40)])
                parts.append(reformat(piece, rng) if roll < 0.75 else piece)
        rows.append({"id": f"j{k}", "text": rng.choice([" ", "\n", ". "]).join(parts)})
    return rows


@pytest.mark.parametrize("cut", [CutSettings(), CutSettings(window=15, max_hits=3, min_piece=10)])
def test_same_contaminated_documents_and_same_cut_output_as_the_janitor(tmp_path, cut):
    rng = random.Random(6)
    items = made_up_items(rng, 25)
    index = save_index(items, tmp_path / "index.npz")
    rows = janitor_corpus(rng, items)
    write_jsonl(tmp_path / "corpus" / "c.jsonl", rows)
    output = run_local(index, tmp_path / "corpus", tmp_path / "out", "cut", tasks=1, cut=cut)
    kept = {row["id"]: row for row in read_rows(output / "documents")}
    excluded = {row["id"]: row for row in read_rows(output / "excluded")}
    reported = {row["doc_id"] for row in read_rows(output / "report")}
    janitor = ReferenceJanitor(13, cut)
    for item in items:
        janitor.register(item.text)
    contaminated = 0
    for row in rows:
        hits = janitor.hits(row["text"])
        assert (row["id"] in reported) == bool(hits), row["id"]
        if not hits:
            assert kept[row["id"]]["text"] == row["text"]
            continue
        contaminated += 1
        mine = kept.get(row["id"]) or excluded[row["id"]]
        assert mine["contamination"]["ngram_hits"] == len(hits)
        chunks = janitor.clean(row["text"])
        if chunks:
            assert kept[row["id"]]["text"] == "\n\n".join(chunks)
        else:
            assert excluded[row["id"]]["filter_reason"] in ("too_many_hits", "nothing_left")
    assert contaminated > 40 and len(excluded) > 5 and len(kept) - (len(rows) - contaminated) > 5  # all cases occur


def test_cut_pieces_by_hand():
    text = "a" * 30 + "HIT" + "b" * 30
    # window 5 around [30, 33): the piece before ends at 25, the tail starts at 32 + 5 + 1 = 38
    assert cut_pieces(text, [(30, 33)], CutSettings(window=5, max_hits=1, min_piece=10)) == ["a" * 25, "b" * 25]
    assert cut_pieces(text, [(30, 33)], CutSettings(window=5, max_hits=1, min_piece=25)) == ["b" * 25]
    assert cut_pieces(text, [(30, 33)] * 2, CutSettings(window=5, max_hits=1, min_piece=10)) is None


def test_drop_mode_excludes_exactly_the_contaminated_documents(tmp_path):
    rng = random.Random(7)
    items = made_up_items(rng, 10)
    index = save_index(items, tmp_path / "index.npz")
    rows = [{"id": f"d{k}", "text": clean_text(rng, 40) + (" " + items[k].text if k < 4 else ""), "source": "web"}
            for k in range(20)]
    write_jsonl(tmp_path / "corpus" / "x.jsonl", rows)
    output = run_local(index, tmp_path / "corpus", tmp_path / "out", "drop")
    kept, excluded = read_rows(output / "documents"), read_rows(output / "excluded")
    assert sorted(row["id"] for row in excluded) == ["d0", "d1", "d2", "d3"]
    assert {row["filter_reason"] for row in excluded} == {"contaminated"}
    assert sorted(row["id"] for row in kept) == sorted(f"d{k}" for k in range(4, 20))
    assert all(row["source"] == "web" and "file_path" in row for row in kept)  # the input's fields are kept


# ---------------------------------------------------------------- the embedding stage

def test_bag_of_words_embedding_is_deterministic_and_lexical():
    embed = HashedBagOfWords(dim=512)
    a, b, c = embed(["Ann buys 3 apples, Bo buys 2.", "bo BUYS 2; ann buys 3 apples", "lorem ipsum dolor"])
    assert np.array_equal(a, b) and np.array_equal(a, embed(["Ann buys 3 apples, Bo buys 2."])[0])
    assert sorted(np.abs(a[a != 0]).tolist()) == [1.0] * 5 + [2.0]  # ann 3 apples bo 2 once, buys twice
    assert abs(float(a @ c)) / (np.linalg.norm(a) * np.linalg.norm(c)) < 0.5


def test_cosine_matches_against_brute_force():
    rng = np.random.default_rng(8)
    docs, items = rng.normal(size=(20, 8)), rng.normal(size=(15, 8))
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    got = cosine_matches(docs.astype(np.float32), items.astype(np.float32), 0.3, 3)
    for row, matches in zip(docs, got):
        scores = [float(np.dot(row, item)) for item in items]
        expected = sorted((k for k in range(15) if scores[k] >= 0.3), key=lambda k: -scores[k])[:3]
        assert [k for k, _ in matches] == expected
        assert all(abs(score - scores[k]) < 1e-5 for k, score in matches)


def lookup_embedding(texts):
    """A made-up embedding: the vector is given by the text's first word."""
    table = {"alpha": [1.0, 0.0, 0.0], "beta": [0.8, 0.6, 0.0], "gamma": [0.0, 0.0, 1.0]}
    return np.array([table.get(text.split()[0].lower(), [0.0, 1.0, 0.0]) for text in texts])


def test_near_duplicate_stage_reports_pairs_above_the_threshold_with_scores(tmp_path):
    items = [EvalItem("t", 0, "alpha " + "one two three " * 5), EvalItem("t", 1, "gamma " + "four five six " * 5)]
    index = save_index(items, tmp_path / "index.npz", n=3)
    docs = [{"id": "d0", "text": "beta something else entirely"}, {"id": "d1", "text": "gamma nothing alike"},
            {"id": "d2", "text": "delta other"}]
    write_jsonl(tmp_path / "corpus" / "x.jsonl", docs)
    step = NearDuplicateReport(str(index), str(tmp_path / "near"), embed=lookup_embedding, threshold=0.75)
    pipeline = [*build_pipeline(RunSettings(str(index), "", str(tmp_path / "corpus"), "report", 1), tmp_path / "out"), step]
    LocalPipelineExecutor(pipeline, tasks=1, workers=1, logging_dir=str(tmp_path / "logs")).run()
    rows = read_rows(tmp_path / "near")
    assert [(row["doc_id"], row["idx"], row["score"]) for row in rows] == [("d0", 0, 0.8), ("d1", 1, 1.0)]
    assert not any(row["ngram_flagged"] for row in rows)


# ---------------------------------------------------------------- executors: resume, Slurm, Ray

CRASHING_RUN = r'''
import os, signal, sys
from pathlib import Path
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from rho_jax.curation.decontamination_pipeline import RunSettings, build_pipeline


class CrashOnce(PipelineStep):
    """Passes documents on; in task 1 the first time, kills the run midway: SIGKILL to its whole process group
    (this process and datatrove's manager process), as a scheduler kills a job."""

    name = "crash once"

    def __init__(self, marker, log):
        super().__init__()
        self.marker, self.log = marker, log

    def run(self, data, rank=0, world_size=1):
        with open(self.log, "a") as handle:
            handle.write(f"{rank}\n")
        for k, doc in enumerate(data):
            if rank == 1 and k == 5 and not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os.killpg(0, signal.SIGKILL)
            yield doc


if __name__ == "__main__":  # helper processes start from a fork server, which imports this module
    index, corpus, output, marker, log = sys.argv[1:]
    settings = RunSettings(index=index, index_sha256="", input=corpus, mode="cut", tasks=3)
    pipeline = build_pipeline(settings, Path(output))
    pipeline.insert(-1, CrashOnce(marker, log))
    LocalPipelineExecutor(pipeline, tasks=3, workers=1, logging_dir=str(Path(output) / "logs")).run()
'''


def small_corpus(tmp_path: Path, files: int = 3) -> tuple[Path, Path]:
    rng = random.Random(9)
    items = made_up_items(rng, 10)
    index = save_index(items, tmp_path / "index.npz")
    for f in range(files):
        write_jsonl(tmp_path / "corpus" / f"{f}.jsonl",
                    [{"id": f"{f}-{k}", "text": clean_text(rng, 80) + (" " + items[k].text if k % 4 == 0 else "")}
                     for k in range(10)])
    return index, tmp_path / "corpus"


def outputs(output: Path) -> dict[str, list]:
    return {part: sorted(read_rows(output / part), key=json.dumps) for part in ("documents", "excluded", "report")}


@pytest.mark.slow
def test_a_killed_run_resumes_without_redoing_finished_tasks(tmp_path):
    index, corpus = small_corpus(tmp_path)
    script = tmp_path / "crashing_run.py"
    script.write_text(CRASHING_RUN)
    args = [sys.executable, str(script), str(index), str(corpus), str(tmp_path / "out"), str(tmp_path / "marker"),
            str(tmp_path / "ranks")]
    first = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300, start_new_session=True)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out" / "logs" / "completions").iterdir()) == ["00000"]
    second = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300, start_new_session=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert (tmp_path / "ranks").read_text().split() == ["0", "1", "1", "2"]  # task 0 was not run again
    uninterrupted = run_local(index, corpus, tmp_path / "again", "cut", tasks=3)
    assert outputs(tmp_path / "out") == outputs(uninterrupted)
    assert outputs(uninterrupted)["excluded"] and outputs(uninterrupted)["report"]


@pytest.mark.slow
def test_slurm_submission_against_a_stand_in_sbatch_then_the_jobs_run_the_same_pipeline(tmp_path):
    index, corpus = small_corpus(tmp_path, files=2)
    fake = tmp_path / "fake"
    env = slurm_stand_in(fake)
    output = tmp_path / "out"
    submit = subprocess.run([sys.executable, "-m", "rho_jax.curate", "decontaminate", "run", "--index", str(index),
                             "--input", str(corpus), "--output", str(output), "--mode", "drop", "--executor", "slurm",
                             "--partition", "cpu", "--tasks", "2", "--time", "1:00:00", "--env-command",
                             "export DECONT_ENV=ready"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert submit.returncode == 0, submit.stderr[-2000:]
    assert "decontaminate summarize --output" in submit.stdout
    calls = (fake / "sbatch_calls").read_text().splitlines()
    assert len(calls) == 2 and calls[0].startswith("--export=ALL,RUN_OFFSET=0")
    job = (fake / "job_1.sh").read_text()
    for directive in ("--array=0-1", "--partition=cpu", "--time=1:00:00", "--cpus-per-task=1", "--mem-per-cpu=2G",
                      "--job-name=decontaminate"):
        assert f"#SBATCH {directive}\n" in job, directive
    assert "export DECONT_ENV=ready" in job
    assert f"launch_pickled_pipeline {output / 'logs' / 'executor.pik'}" in job
    assert "#SBATCH --dependency=afterok:42" in (fake / "job_2.sh").read_text()  # the stats merge waits for the array
    for task in ("0", "1"):  # the cluster runs the array
        result = subprocess.run(["bash", str(fake / "job_1.sh")], env={**env, "SLURM_ARRAY_TASK_ID": task,
                                "SLURM_NODELIST": "localhost", "SLURM_JOB_ID": "42"}, capture_output=True, text=True,
                                timeout=300, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    assert decontaminate_main(["summarize", "--output", str(output)]) == 0
    assert outputs(output) == outputs(run_local(index, corpus, tmp_path / "local", "drop"))
    assert json.loads((output / "summary.json").read_text())["dropped"] == {"contaminated": 6}


@pytest.mark.slow
def test_the_same_pipeline_on_a_local_ray_cluster(tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install ray): the Ray executor is untested here")
    from datatrove.executor import RayPipelineExecutor

    index, corpus = small_corpus(tmp_path)
    settings = RunSettings(index=str(index), index_sha256="", input=str(corpus), mode="cut", tasks=3)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        RayPipelineExecutor(build_pipeline(settings, tmp_path / "ray"), tasks=3, workers=2, mem_per_cpu_gb=0.5,
                            logging_dir=str(tmp_path / "ray" / "logs")).run()
    finally:
        ray.shutdown()
    assert outputs(tmp_path / "ray") == outputs(run_local(index, corpus, tmp_path / "local", "cut", tasks=3))


# ---------------------------------------------------------------- the command line and bad input

def cli(*args: str) -> int:
    return decontaminate_main(list(args))


def test_cli_index_run_and_summary(tmp_path, capsys):
    rng = random.Random(10)
    items = made_up_items(rng, 8)
    write_jsonl(tmp_path / "held.jsonl", [{"question": item.text, "answer": "42"} for item in items])
    write_jsonl(tmp_path / "corpus" / "part.jsonl",
                [{"id": f"d{k}", "text": clean_text(rng, 50) + (" " + items[k].text if k < 3 else "")} for k in range(12)])
    assert cli("index", "--jsonl", str(tmp_path / "held.jsonl"), "--field", "question,answer",
               "--output", str(tmp_path / "index.npz")) == 0
    assert cli("run", "--index", str(tmp_path / "index.npz"), "--input", str(tmp_path / "corpus" / "*.jsonl"),
               "--output", str(tmp_path / "out"), "--mode", "drop", "--near-duplicates", "0.9") == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["documents"], summary["kept_documents"], summary["dropped"]) == (12, 9, {"contaminated": 3})
    assert summary["tasks"]["held"]["contaminated_items"] == 3 and summary["tasks"]["held"]["items"] == 8
    assert "| held | 8 | 0 | 3 (37.5%) | 3 |" in (tmp_path / "out" / "summary.md").read_text()
    # rerunning the finished command resumes: nothing is redone, the summary is the same
    assert cli("run", "--index", str(tmp_path / "index.npz"), "--input", str(tmp_path / "corpus" / "*.jsonl"),
               "--output", str(tmp_path / "out"), "--mode", "drop", "--near-duplicates", "0.9") == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary



def test_cli_near_duplicates_with_a_model_embedding(tmp_path, tiny_hf_dir):
    """`--embed model:PATH` reports exactly the (document, item) pairs whose cosine between the model's
    mean-pooled embeddings (computed here directly) reaches the threshold, with those cosines."""
    model = tiny_hf_dir("llama-gqa")
    rng = random.Random(12)
    items = made_up_items(rng, 4)
    write_jsonl(tmp_path / "held.jsonl", [{"question": item.text} for item in items])
    docs = [{"id": "copy", "text": items[1].text}, *({"id": f"d{k}", "text": clean_text(rng, 20)} for k in range(5))]
    write_jsonl(tmp_path / "corpus" / "part.jsonl", docs)
    assert cli("index", "--jsonl", str(tmp_path / "held.jsonl"), "--field", "question",
               "--output", str(tmp_path / "index.npz")) == 0
    vectors = embed_texts([d["text"] for d in docs] + [item.text for item in items], model)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = unit[: len(docs)] @ unit[len(docs):].T
    threshold = float(np.sort(cosines.ravel())[-3])  # the three closest pairs, the copy's (cosine 1) among them
    assert cli("run", "--index", str(tmp_path / "index.npz"), "--input", str(tmp_path / "corpus"),
               "--output", str(tmp_path / "out"), "--mode", "report", "--near-duplicates", str(threshold - 1e-6),
               "--embed", f"model:{model}") == 0
    rows = read_rows(tmp_path / "out" / "near_duplicates")
    expected = {(docs[d]["id"], i) for d, i in zip(*np.nonzero(cosines >= threshold - 1e-6))}
    assert {(row["doc_id"], row["idx"]) for row in rows} == expected and ("copy", 1) in expected
    for row in rows:
        d = next(k for k, doc in enumerate(docs) if doc["id"] == row["doc_id"])
        assert row["score"] == pytest.approx(cosines[d, row["idx"]], abs=1e-5)

def test_split_input():
    assert split_input("corpus/*.jsonl") == ("corpus", "*.jsonl")
    assert split_input("/data/web/**/*.jsonl.gz") == ("/data/web", "**/*.jsonl.gz")
    assert split_input("corpus/") == ("corpus", "**/*.jsonl*")


@pytest.fixture
def indexed(tmp_path):
    rng = random.Random(11)
    index = save_index(made_up_items(rng, 5), tmp_path / "index.npz")
    write_jsonl(tmp_path / "corpus" / "good.jsonl", [{"text": clean_text(rng, 30)}])
    return tmp_path, index


@pytest.mark.parametrize("make, args, message", [
    (lambda t: write_jsonl(t / "corpus" / "bad.jsonl", [{"content": "x"}]), [],
     r"bad.jsonl, line 1: the record has no 'text' field \(it has: content\); name the field"),
    (lambda t: None, ["--text-field", "body"], r"good.jsonl, line 1: the record has no 'body' field"),
    (lambda t: None, ["--n", "8"], r"built with n=13, fold_digits=False, but n=8"),
    (lambda t: None, ["--fold-digits"], r"built with n=13, fold_digits=False, but n=13, fold_digits=True"),
    (lambda t: (t / "empty").mkdir(), ["--input", "{t}/empty"], r"no input files: .*empty holds nothing"),
    (lambda t: (t / "not.npz").write_bytes(b"zip?"), ["--index", "{t}/not.npz"], r"not.npz is not a decontamination index"),
    (lambda t: None, ["--index", "{t}/missing.npz"], r"index file .*missing.npz does not exist"),
    (lambda t: None, ["--embed", "bow"], r"give --near-duplicates too"),
    (lambda t: None, ["--near-duplicates", "0.9", "--embed", "no_such_module:embed"], r"cannot load embedder"),
    (lambda t: None, ["--near-duplicates", "0.9", "--embed", "model:{t}/nowhere"], r"embedding model .*nowhere.* is not a dir"),
    (lambda t: (t / "bare").mkdir(), ["--near-duplicates", "0.9", "--embed", "model:{t}/bare"], r"embedding model .*bare"),
    (lambda t: None, ["--near-duplicates", "1.5"], r"cosine threshold must be in \[-1, 1\], got 1.5"),
    (lambda t: None, ["--mode", "cut", "--window", "-1"], r"cut setting window must be a non-negative integer"),
])
def test_bad_input_is_refused_before_any_task_runs(indexed, capsys, make, args, message):
    tmp_path, index = indexed
    make(tmp_path)
    given = [arg.format(t=tmp_path) for arg in args]
    for flag, value in (("--index", str(index)), ("--input", str(tmp_path / "corpus")), ("--output", str(tmp_path / "out"))):
        if flag not in given:
            given += [flag, value]
    assert cli("run", *given) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err), err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_record_without_the_text_field_deep_in_a_file_stops_the_run_naming_file_and_line(indexed, capsys):
    tmp_path, index = indexed
    write_jsonl(tmp_path / "corpus" / "late.jsonl", [{"text": "fine"}, {"body": "no text here"}])
    assert cli("run", "--index", str(index), "--input", str(tmp_path / "corpus"), "--output", str(tmp_path / "out")) == 2
    assert re.search(r"late.jsonl:2: the record has no 'text' field", capsys.readouterr().err)


def test_empty_evaluation_set_and_items_too_short_are_refused(tmp_path):
    write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(DecontaminationError, match="the evaluation set is empty"):
        build_index(items_from_jsonl(tmp_path / "empty.jsonl", ["question"]), NGramSettings())
    with pytest.raises(DecontaminationError, match="none of the 2 evaluation items has 13 words"):
        build_index([EvalItem("t", 0, "short"), EvalItem("t", 1, "also short")], NGramSettings())
    assert cli("index", "--jsonl", str(tmp_path / "empty.jsonl"), "--field", "q", "--output", str(tmp_path / "i.npz")) == 2


def test_an_index_of_another_scheme_and_a_resume_with_other_settings_are_refused(indexed, tmp_path):
    _, index = indexed
    with np.load(index) as data:
        arrays = dict(data)
    meta = json.loads(arrays["meta"].tobytes())
    arrays["meta"] = np.frombuffer(json.dumps({**meta, "scheme": "old-scheme"}).encode(), np.uint8)
    np.savez(tmp_path / "old.npz", **arrays)
    with pytest.raises(DecontaminationError, match="built with n-gram scheme 'old-scheme'.*rebuild it"):
        NGramIndex.load(tmp_path / "old.npz")
    args = ["run", "--index", str(index), "--input", str(tmp_path / "corpus"), "--output", str(tmp_path / "out")]
    assert cli(*args) == 0
    assert cli(*args, "--mode", "drop") == 2  # same output folder, other mode


@pytest.mark.slow
def test_the_benchmark_runs_and_both_implementations_find_the_planted_items(tmp_path):
    from rho_jax.bench.decontamination_bench import JanitorPeer, build_parser, run

    janitor = JanitorPeer(n=3, window=2, max_hits=5, min_piece=1)
    janitor.register("The Quick, brown fox!")
    text = "a b c d e f g the quick brown fox h i j k l m n"
    hits = janitor.hits(text)
    assert hits == [(14, 28), (18, 32)]  # "the quick brown", "quick brown fox": last characters inclusive
    assert janitor.clean(text, hits) == [text[:12], text[35:]]
    result = run(build_parser().parse_args(["--megabytes", "0.3", "--items", "50", "--contaminate", "0.05",
                                            "--tasks", "2", "--scaling-copies", "1"]))
    assert result["planted"] > 0 and result["rho_jax_contaminated"] == result["planted"]
    assert result["janitor_contaminated"] <= result["planted"] and result["speedup_vs_janitor"] > 1
