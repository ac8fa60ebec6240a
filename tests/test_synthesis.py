"""Document -> instruction-pair synthesis: chunking, templates, parsing, validation, resume, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rho_jax.generation import Completion
from rho_jax.synthesis import Settings, chunk_text, load_template, parse, read_shard, synthesize, token_counter
from rho_jax.synthesis.documents import Document, input_shards
from rho_jax.synthesis.parsing import Parsed
from rho_jax.synthesis.pipeline import Row, judge, shard_seed
from rho_jax.synthesis.templates import Template
from rho_jax.synthesis.validation import overlap


def _chars(text: str) -> int:
    return len(text)


def _squeezed(text: str) -> str:
    return "".join(text.split())


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from rho_jax.data.tokenizer import load_tokenizer
    from rho_jax.models.parity import build_tiny_tokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    build_tiny_tokenizer(directory)
    return load_tokenizer(str(directory))


# --- chunking ---

def test_chunks_pack_sentences_and_keep_paragraphs_apart():
    text = "첫 번째 문장입니다. 두 번째 문장이에요! 세 번째 문장일까요?\n\n새 문단입니다."
    assert chunk_text(text, _chars, 25) == ["첫 번째 문장입니다. 두 번째 문장이에요!", "세 번째 문장일까요?", "새 문단입니다."]
    assert chunk_text(text, _chars, 200) == ["첫 번째 문장입니다. 두 번째 문장이에요! 세 번째 문장일까요?\n\n새 문단입니다."]


def test_chunks_fall_back_to_words_then_characters():
    assert chunk_text("가나다 라마바 사아자", _chars, 7) == ["가나다 라마바", "사아자"]
    assert chunk_text("대한민국헌법제일조", _chars, 4) == ["대한민국", "헌법제일", "조"]
    assert chunk_text("  \n\n ", _chars, 4) == []
    with pytest.raises(ValueError, match="max_tokens"):
        chunk_text("text", _chars, 0)


def test_korean_chunks_fit_the_token_limit(tokenizer):
    count = token_counter(tokenizer)
    sentences = [f"{i}번째 문장은 한국어로 쓰였습니다." for i in range(12)]
    text = " ".join(sentences[:6]) + "\n\n" + " ".join(sentences[6:]) + " 띄어쓰기없는아주긴한국어낱말" * 3
    limit = 2 * max(count(s) for s in sentences) + 2  # two sentences fit, three do not
    chunks = chunk_text(text, count, limit)
    assert len(chunks) > 6
    assert all(count(c) <= limit for c in chunks)
    assert _squeezed("".join(chunks)) == _squeezed(text)  # nothing lost or reordered, no broken character
    # every sentence that fits whole stays whole: a chunk boundary falls between sentences
    assert sum(any(s in c for c in chunks) for s in sentences) == len(sentences)


# --- documents ---

def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_read_shard_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _write_jsonl(tmp_path / "a.jsonl", [{"text": "one", "title": "T", "id": 7}, {"text": "two"}])
    pq.write_table(pa.table({"text": ["three"], "id": ["x"]}), tmp_path / "b.parquet")
    assert read_shard(tmp_path / "a.jsonl") == [Document("7", "one", "T"), Document("a:1", "two", "")]
    assert read_shard(tmp_path / "b.parquet") == [Document("x", "three", "")]
    assert [p.name for p in input_shards([str(tmp_path / "*")])] == ["a.jsonl", "b.parquet"]


@pytest.mark.parametrize("rows, message", [
    ([{"text": "ok"}, {"text": "  \n"}], "row 1: the document is empty"),
    ([{"body": "no text"}], "'text' must be a string"),
    ([{"text": "x", "title": 3}], "'title' must be a string"),
    ([], "holds no documents"),
])
def test_bad_documents_are_clear_errors(tmp_path, rows, message):
    with pytest.raises(ValueError, match=message):
        read_shard(_write_jsonl(tmp_path / "d.jsonl", rows))


def test_bad_inputs(tmp_path):
    (tmp_path / "d.csv").write_text("text\n")
    with pytest.raises(ValueError, match="must be"):
        input_shards([str(tmp_path / "d.csv")])
    with pytest.raises(FileNotFoundError, match="no input file"):
        input_shards([str(tmp_path / "missing*.jsonl")])
    (tmp_path / "x").mkdir()
    _write_jsonl(tmp_path / "a.jsonl", [{"text": "a"}])
    _write_jsonl(tmp_path / "x" / "a.jsonl", [{"text": "a"}])
    with pytest.raises(ValueError, match="same name 'a'"):
        input_shards([str(tmp_path / "a.jsonl"), str(tmp_path / "x" / "a.jsonl")])


# --- templates and parsing ---

def test_genstruct_template(tokenizer):
    template = load_template("genstruct")
    assert (template.parser, template.chat, template.max_new_tokens, template.temperature) == ("genstruct", False, 512, 0.0)
    expected = ("[[[Title]]] Clips\n[[[Content]]] She sold {48} clips.\n\nThe following is an interaction between a user "
                "and an AI assistant that is related to the above text.\n\n[[[User]]] ")
    assert template.text("She sold {48} clips.", "Clips") == expected
    assert template.encode(tokenizer, "She sold {48} clips.", "Clips") == tokenizer(expected)["input_ids"]


def test_ko_simple_qa_template(tokenizer):
    template = load_template("ko-simple-qa")
    assert (template.parser, template.chat, template.max_new_tokens, template.temperature) == ("qa-markers", True, 256, 1.0)
    assert template.end_of_turn == ("<|eot_id|>",)
    text = template.text("본문입니다.")
    assert text.startswith("주어진 텍스트") and "[[Q]] 지시문\n[[A]] 답변\n---\n본문입니다." in text
    with pytest.raises(ValueError, match="no chat template"):
        template.encode(tokenizer, "본문")
    chat = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    chat.chat_template = ("{% for m in messages %}<s>[U]{{ m['content'] }}[/U]{% endfor %}"
                          "{% if add_generation_prompt %}[A] {% endif %}")
    assert template.encode(chat, "본문") == chat(f"<s>[U]{text[:-len('본문입니다.')]}본문[/U][A]",
                                                add_special_tokens=False)["input_ids"]
    assert template.end_token_ids(chat) == []  # the tiny vocabulary has no <|eot_id|>
    assert Template("t", "{text}", "qa-markers", end_of_turn=("</s>",)).end_token_ids(chat) == [chat.eos_token_id]


# ko-genstruct simple-qa's PROMPT_QA as the seed copy of its model card has it: every Hangul syllable
# whose UTF-8 holds a byte that cp1252 leaves undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D) became U+FFFD.
CARD_PROMPT_QA = ("주어진 \ufffd스트 컨\ufffd츠를 참고하여 질문과 정확하고 \ufffd세한 답변\ufffd 만드세요, "
                  "대답\ufffd 아래 형태로 작성하세요\n**답변 형\ufffd**\n[[Q]] 지시문\n[[A]] 답변\n---\n{text}")
CP1252_UNDEFINED = {0x81, 0x8D, 0x8F, 0x90, 0x9D}


def test_ko_simple_qa_prompt_is_the_cards():
    """Every readable character of the card's prompt is ours; every damaged one is a syllable that this damage destroys."""
    prompt = load_template("ko-simple-qa").prompt
    assert len(prompt) == len(CARD_PROMPT_QA)
    for ours, card in zip(prompt, CARD_PROMPT_QA, strict=True):
        if card == "\ufffd":
            assert "가" <= ours <= "힣" and CP1252_UNDEFINED & set(ours.encode()), ours
        else:
            assert ours == card


def test_user_templates(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("Title: {title}\nRead: {text}\nAsk {braces} kept")
    template = load_template(str(path), parser="genstruct")
    assert template.text("T1", "H") == "Title: H\nRead: T1\nAsk {braces} kept"
    with pytest.raises(ValueError, match="needs a parser"):
        load_template(str(path))
    (tmp_path / "none.txt").write_text("no field here {title}")
    with pytest.raises(ValueError, match=r"no \{text\} field"):
        load_template(str(tmp_path / "none.txt"), parser="qa-markers")
    (tmp_path / "bad.toml").write_text('prompt = "{text}"\nparser = "qa-markers"\ncolour = 1\n')
    with pytest.raises(ValueError, match="unknown keys"):
        load_template(str(tmp_path / "bad.toml"))
    with pytest.raises(FileNotFoundError, match="genstruct"):
        load_template("no-such-template")


@pytest.mark.parametrize("parser, text, expected", [
    ("genstruct", " What did she sell?\n[[[Assistant]]] Clips.\n[[[User]]] more", Parsed("What did she sell?", "Clips.")),
    ("genstruct", "A question with no answer", Parsed("A question with no answer", None)),
    ("qa-markers", "[[Q]] 무엇을 팔았나요?\n[[A]] 클립입니다.\n[[Q]] 둘째", Parsed("무엇을 팔았나요?", "클립입니다.")),
    ("qa-markers", "preamble [[Q]] q only", Parsed("q only", None)),
    ("qa-markers", "no q marker\n[[A]] answer", Parsed("no q marker", "answer")),
    ("qa-markers", "[[Q]]  \n[[A]] ", Parsed("", "")),
])
def test_parsers(parser, text, expected):
    assert parse(parser, text) == expected


def test_unknown_parser():
    with pytest.raises(ValueError, match="unknown parser"):
        parse("xml", "")


# --- validation ---

CHUNK = "나탈리아는 4월에 친구 48명에게 클립을 팔았다. Natalia sold clips to 48 of her friends in April."


def _completion(text: str, reason: str = "eos", token_ids: tuple[int, ...] = (7,) * 5) -> Completion:
    return Completion(text=text, token_ids=list(token_ids), finish_reason=reason, prompt_tokens=3)


class _FixedScorer:
    """Perplexity by answer text, from a table."""

    def __init__(self, table: dict[str, float]):
        self.table = table

    def perplexities(self, prompts, answers):
        return [self.table[a] for a in answers]


def test_overlap():
    assert overlap("나탈리아는 4월에 친구 48명에게 클립을 팔았다", CHUNK, 3) == 1.0
    # question 3-grams: (who,sold,clips) (sold,clips,to) (clips,to,48) (to,48,of) (48,of,them): the middle 3 of 5 in the chunk
    assert overlap("Who sold clips to 48 of them?", CHUNK, 3) == pytest.approx(0.6)
    assert overlap("Two words", CHUNK, 3) == 0.0


def test_each_reason_on_made_up_completions():
    document = Document("d", CHUNK)
    cases = [
        (_completion("[[Q]] 몇 명에게 팔았나요? [[A]] 48명", "length"), "truncated"),
        (_completion("[[Q]] 몇 명에게 팔았나요?"), "missing answer marker"),
        (_completion("[[Q]] 몇 명에게 팔았나요? [[A]]  "), "empty question or answer"),
        (_completion("[[Q]] 몇 명에게 팔았나요? [[A]] 48명 [[A]] 48명"), "stray marker"),
        (_completion("[[Q]] Natalia sold clips to 48 of her friends in April? [[A]] 예"), "question copies text"),
        (_completion("[[Q]] 언제 팔았나요? [[A]] 횡설수설"), "answer perplexity"),
        (_completion("[[Q]] 몇 명에게 팔았나요? [[A]] 48명입니다."), "valid"),
        (_completion("[[Q]]   몇 명에게, 팔았나요?? [[A]] 마흔여덟 명."), "duplicate"),
        (_completion("[[Q]] 무엇을 팔았나요? [[A]] 클립."), "valid"),
    ]
    rows = [Row(document, 0, CHUNK, sample) for sample in range(len(cases))]
    settings = Settings(template="ko-simple-qa", model="m", ngram=3, max_overlap=0.5, max_perplexity=100.0)
    scorer = _FixedScorer({"횡설수설": 1e4, "48명입니다.": 3.0, "마흔여덟 명.": 5.0, "클립.": 2.0})
    accepted, rejected, counts = judge("s", rows, [c for c, _ in cases], load_template("ko-simple-qa"), settings, scorer)
    expected = [reason for _, reason in cases]
    assert [r["reason"] for r in rejected] == [r for r in expected if r != "valid"]
    assert sum(counts.values()) == len(cases) and counts["valid"] == 2 and counts["duplicate"] == 1
    assert [(a["prompt"], a["response"], a["sample"]) for a in accepted] == [
        ("몇 명에게 팔았나요?\n", "48명입니다.", 6), ("무엇을 팔았나요?\n", "클립.", 8)]
    assert accepted[0] | {"prompt": 0, "response": 0} == {
        "prompt": 0, "response": 0, "document_id": "d", "shard": "s", "chunk": 0, "sample": 6,
        "template": "ko-simple-qa", "model": "m", "adapter": None, "finish_reason": "eos", "completion_tokens": 5}
    with pytest.raises(ValueError, match="no scoring model"):
        judge("s", rows, [c for c, _ in cases], load_template("ko-simple-qa"), settings)


def _verdicts(template: Template, completions: list[Completion], tokenizer=None) -> list[str]:
    rows = [Row(Document("d", CHUNK), 0, CHUNK, i) for i in range(len(completions))]
    markers = template.stray_markers(tokenizer) if tokenizer is not None else None
    accepted, rejected, _ = judge("s", rows, completions, template, Settings(template=template.name, model="m"),
                                  markers=markers)
    verdicts = {r["sample"]: r["reason"] for r in rejected} | {a["sample"]: "valid" for a in accepted}
    return [verdicts[i] for i in range(len(completions))]


def test_stray_template_markers_are_rejected_and_brackets_are_not():
    genstruct = load_template("genstruct")
    assert _verdicts(genstruct, [
        _completion(" What is [[1,2],[3,4]] times 2?\n[[[Assistant]]] It is [[2,4],[6,8]]."),
        _completion(" Who sold clips?\n[[[Assistant]]] Natalia.\n[[[Content]]] She sold 48."),
        _completion(" [[[Title]]] Clips: who sold them?\n[[[Assistant]]] Natalia."),
        _completion(" Who sold clips?\n[[[Assistant]]] Natalia. [[[Assistant]]] Natalia."),
        _completion(" Who sold [[Q]] clips?\n[[[Assistant]]] Natalia [[A]]."),  # another template's markers
    ]) == ["valid", "stray marker", "stray marker", "stray marker", "valid"]
    ko = load_template("ko-simple-qa")
    assert _verdicts(ko, [
        _completion("[[Q]] 행렬 [[1,2],[3,4]]의 전치 행렬은? [[A]] [[1,3],[2,4]]입니다."),
        _completion("[[Q]] 클립을 판 사람은? [[A]] 나탈리아 [[A]] 나탈리아"),
        _completion("[[Q]] 클립을 판 사람은? [[Q]] 다시 [[A]] 나탈리아"),
    ]) == ["valid", "stray marker", "stray marker"]
    with pytest.raises(ValueError, match="markers must be non-blank"):
        Template("t", "{text}", "genstruct", markers=(" ",))


def test_marker_search_finds_exactly_the_substrings():
    import random

    from rho_jax.synthesis.validation import any_of

    markers = [*(f"<|reserved_{i}|>" for i in range(30)), "<|eot_id|>", "<s>", "<s>x", "</s>", "[[Q]]", "[[A]]"]
    pattern = any_of(markers)
    pieces = ["a", "<", "|", "<|", "eot_id", "|>", "[[", "Q]]", "A]", "s>", "</", "reserved_", "1", "2", "x", "]"]
    rng = random.Random(0)
    texts = ["".join(rng.choice(pieces) for _ in range(16)) for _ in range(3000)]
    found = [bool(pattern.search(t)) for t in texts]
    assert found == [any(m in t for m in markers) for t in texts]
    assert 300 < sum(found) < 2700  # both outcomes are common (519 found)


def test_stray_special_tokens_by_text_and_by_id(tokenizer):
    chat = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    chat.add_special_tokens({"additional_special_tokens": ["<|eot_id|>", "<|start_header_id|>"]})
    header, eot = chat.convert_tokens_to_ids(["<|start_header_id|>", "<|eot_id|>"])
    ko = load_template("ko-simple-qa")
    markers = ko.stray_markers(chat)
    assert {"[[Q]]", "[[A]]", "<|eot_id|>", "<|start_header_id|>", "</s>"} <= set(markers.strings)
    assert {header, eot, chat.eos_token_id} <= markers.token_ids
    completions = [
        _completion("[[Q]] 판 사람은? [[A]] 나탈리아.", token_ids=(7, 8, eot)),  # ended by a special token: fine
        _completion("[[Q]] 판 달은? [[A]] 4월.<|eot_id|>", token_ids=(7, 8, eot)),  # spelled out in the text
        _completion("[[Q]] 판 개수는? [[A]] 48개.", token_ids=(7, header, 8, eot)),  # emitted mid-text (the text skips it)
        _completion("[[Q]] 판 물건은? [[A]] 클립.", "stop", token_ids=(7, 8, eot)),  # inside: not what ended it
    ]
    assert _verdicts(ko, completions, chat) == ["valid", "stray marker", "stray marker", "stray marker"]
    assert _verdicts(ko, completions) == ["valid", "valid", "valid", "valid"]  # without the tokenizer: markers only


def test_settings_take_template_defaults_and_check_values():
    template = load_template("ko-simple-qa")
    settings = Settings.for_template(template, model="m", temperature=None, max_new_tokens=64)
    assert (settings.temperature, settings.max_new_tokens) == (1.0, 64)
    assert settings.sampling("a").seed == shard_seed(0, "a") != shard_seed(0, "b")
    assert shard_seed(1, "a") != shard_seed(0, "a")
    for bad in ({"samples": 0}, {"max_overlap": 1.5}, {"prompt_format": "no field"}, {"prompt_format": "{question} {other}"}):
        with pytest.raises(ValueError):
            Settings(template="t", model="m", **bad)


# --- the pipeline with a scripted generator: resume, atomic shards, trainer-ready output ---

class _ScriptedGenerator:
    """Answers prompt i of a call with a fixed text by its token count; records the prompts it got."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos_token_ids = [tokenizer.eos_token_id]
        self.calls: list[list[list[int]]] = []

    def generate(self, prompts, params, progress=True):
        self.calls.append(list(prompts))
        for index in reversed(range(len(prompts))):  # out of order, as a real run finishes rows
            yield index, _completion(f"[[Q]] Question {len(prompts[index])} {index} {params.seed}? [[A]] Answer {index}.")


def test_resume_by_shard_and_atomic_output(tmp_path, tokenizer):
    from rho_jax.data.sources import JsonlSource

    docs = tmp_path / "docs"
    docs.mkdir()
    _write_jsonl(docs / "a.jsonl", [{"text": "First document. It has two sentences.", "id": "a0"}, {"text": "Second."}])
    _write_jsonl(docs / "b.jsonl", [{"text": "Another shard."}])
    template = Template("plain", "Text: {text}", "qa-markers")
    settings = Settings(template="plain", model="m", samples=2)
    generator = _ScriptedGenerator(tokenizer)
    out = tmp_path / "out"
    summary = synthesize(input_shards([str(docs / "*.jsonl")]), out, generator, template, settings, progress=False)
    assert summary["completions"] == 6 and summary["counts"]["valid"] == 6
    assert summary["shards"] == {"finished": 2, "total": 2}
    assert (out / "report.md").read_text().count("| valid | 6 |") == 1
    pairs = [json.loads(line) for line in (out / "shards" / "a" / "pairs.jsonl").read_text().splitlines()]
    assert [(p["document_id"], p["sample"]) for p in pairs] == [("a0", 0), ("a0", 1), ("a:1", 0), ("a:1", 1)]
    source = JsonlSource([str(out / "shards" / "a" / "pairs.jsonl")], text_field="response", prompt_field="prompt")
    assert source[0] == {"text": "Answer 0.", "prompt": pairs[0]["prompt"]}

    # rerun: finished shards are skipped; a removed shard is made again, identically
    before = (out / "shards" / "b" / "pairs.jsonl").read_text()
    a_time = (out / "shards" / "a" / "pairs.jsonl").stat().st_mtime_ns
    shutil.rmtree(out / "shards" / "b")
    generator.calls.clear()
    synthesize(input_shards([str(docs / "*.jsonl")]), out, generator, template, settings, progress=False)
    assert len(generator.calls) == 1 and len(generator.calls[0]) == 2
    assert (out / "shards" / "b" / "pairs.jsonl").read_text() == before
    assert (out / "shards" / "a" / "pairs.jsonl").stat().st_mtime_ns == a_time

    # a bad shard: a clear error, its directory never appears, the finished ones stay
    _write_jsonl(docs / "c.jsonl", [{"text": "fine"}, {"text": ""}])
    with pytest.raises(ValueError, match="c.jsonl row 1: the document is empty"):
        synthesize(input_shards([str(docs / "*.jsonl")]), out, generator, template, settings, progress=False)
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["a", "b"]

    with pytest.raises(ValueError, match="samples differ"):
        synthesize(input_shards([str(docs / "a.jsonl")]), out, generator, template,
                   Settings(template="plain", model="m", samples=3), progress=False)


# --- end to end with a tiny random model ---

@pytest.mark.slow
def test_end_to_end_tiny_random_model(tmp_path, tiny_hf_dir):
    from rho_jax.data.tokenizer import load_tokenizer
    from rho_jax.synthesize import main

    model = tiny_hf_dir("llama-gqa")
    vocab = load_tokenizer(str(model)).get_vocab()
    # 20 of 320 tokens end a turn: about half the rows of 12 tokens end early, the rest are truncated
    ends = sorted(vocab, key=vocab.get)[40:60]
    template = tmp_path / "qa.toml"
    template.write_text(f'parser = "qa-markers"\nchat = false\nmax_new_tokens = 12\ntemperature = 1.0\n'
                        f'end_of_turn = {json.dumps(ends)}\nprompt = "Text: {{text}}\\nQuestion and answer:"\n')
    docs = tmp_path / "docs"
    docs.mkdir()
    _write_jsonl(docs / "en.jsonl", [{"id": f"e{i}", "text": "Natalia sold clips. She sold 48 in April.\n\nHow many?"}
                                     for i in range(3)])
    _write_jsonl(docs / "ko.jsonl", [{"id": "k0", "text": "나탈리아는 클립을 팔았다. 4월에 48개를 팔았다."}])
    common = ["--model", str(model), "--input", str(docs / "*.jsonl"), "--template", str(template), "--samples", "4",
              "--chunk-tokens", "32", "--no-progress"]
    assert main([*common, "--output", str(tmp_path / "out"), "--batch-size", "8"]) == 0
    assert main([*common, "--output", str(tmp_path / "again"), "--batch-size", "4"]) == 0

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = []
    for shard in ("en", "ko"):
        for kind in ("pairs", "rejected"):
            text = (tmp_path / "out" / "shards" / shard / f"{kind}.jsonl").read_text()
            assert text == (tmp_path / "again" / "shards" / shard / f"{kind}.jsonl").read_text()  # seeded: reproducible
            rows += [json.loads(line) for line in text.splitlines()]
    assert report["completions"] == len(rows) == sum(report["counts"].values())
    for reason, count in report["counts"].items():
        assert count == sum(r.get("reason", "valid") == reason for r in rows), reason
    finish = {r["finish_reason"] for r in rows}
    assert finish == {"eos", "length"}
    for row in rows:  # each verdict re-derived independently of the validator
        if row["finish_reason"] == "length":
            assert row["reason"] == "truncated"
        elif "[[A]]" not in row.get("completion", "[[A]]"):
            assert row["reason"] == "missing answer marker"
    assert report["counts"]["truncated"] > 0 and report["counts"]["missing answer marker"] > 0
    per_chunk = {(r["document_id"], r["chunk"]) for r in rows}
    assert len(rows) == 4 * len(per_chunk)
    texts = {}
    for r in rows:
        texts.setdefault((r["document_id"], r["chunk"]), set()).add(r.get("completion"))
    assert all(len(t) > 1 for t in texts.values())  # the samples of a chunk differ


@pytest.mark.slow
def test_answer_perplexity_matches_transformers(tiny_hf_dir):
    import numpy as np

    from rho_jax.data.tokenizer import load_tokenizer
    from rho_jax.generation.engine import single_device_mesh
    from rho_jax.models.parity import hf_reference_logits
    from rho_jax.synthesis.perplexity import AnswerScorer

    model = tiny_hf_dir("llama-gqa")
    tokenizer = load_tokenizer(str(model))
    prompts = ["How many clips?\n", "What did Natalia sell in April and May?\n", "Q\n"]
    answers = ["48 clips.", "She sold clips to her friends.", "x"]
    got = AnswerScorer(model, single_device_mesh(), batch_size=2).perplexities(prompts, answers)
    for prompt, answer, value in zip(prompts, answers, got, strict=True):
        head = tokenizer(prompt)["input_ids"]
        ids = head + tokenizer(answer, add_special_tokens=False)["input_ids"]
        logits = hf_reference_logits(model, np.asarray([ids]))[0].astype(np.float64)
        shifted = logits - logits.max(-1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        nll = [-logp[t - 1, ids[t]] for t in range(len(head), len(ids))]
        assert value == pytest.approx(float(np.exp(np.mean(nll))), rel=1e-4)


def test_cli_refuses_bad_input_before_writing(tmp_path):
    from rho_jax.synthesize import main

    template = tmp_path / "t.txt"
    template.write_text("no chunk field")
    docs = _write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"no \{text\} field"):
        main(["--model", "m", "--input", str(docs), "--output", str(out), "--template", str(template), "--parser", "genstruct"])
    with pytest.raises(SystemExit, match="go together"):
        main(["--model", "m", "--input", str(docs), "--output", str(out), "--max-perplexity", "10"])
    with pytest.raises(SystemExit, match="no input file"):
        main(["--model", "m", "--input", str(tmp_path / "none*.jsonl"), "--output", str(out)])
    assert not out.exists()


@pytest.mark.slow
def test_adapter_generates_as_the_model_merged_by_hand(tmp_path, tiny_hf_dir):
    """--adapter: greedy completions equal those of an HF model whose weights were merged here with
    numpy from the PEFT files (W + alpha / r * B @ A, torch layout)."""
    import jax
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from rho_jax.generation import SamplingParams
    from rho_jax.models.config import ModelConfig
    from rho_jax.models.lora import LoraSpec, init_lora
    from rho_jax.models.lora_peft import save_peft
    from rho_jax.synthesis import synthesis_generator

    base = tiny_hf_dir("llama-gqa")
    cfg = ModelConfig.from_hf_dict(json.loads((base / "config.json").read_text()))
    adapter = init_lora(cfg, LoraSpec.uniform(cfg, r=4, alpha=8.0, target_modules=["q_proj", "v_proj", "down_proj"]))
    for weights in adapter.weights.values():  # PEFT starts B at 0; make the adapter matter
        weights["lora_b"] = 0.5 * jax.random.normal(jax.random.key(1), weights["lora_b"].shape)
    save_peft(adapter, tmp_path / "adapter")
    peft = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    merged = shutil.copytree(base, tmp_path / "merged")
    weights = load_file(merged / "model.safetensors")
    for key, lora_a in peft.items():
        if ".lora_A." in key:
            name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            lora_b = peft[key.replace(".lora_A.", ".lora_B.")]
            weights[name] = (weights[name] + 8.0 / 4 * lora_b @ lora_a).astype(np.float32)
    save_file(weights, merged / "model.safetensors", metadata={"format": "pt"})

    template = Template("plain", "Text: {text}", "qa-markers")
    params = SamplingParams(max_new_tokens=8)
    prompts = [template.encode(synthesis_generator(base, template).tokenizer, t) for t in ("clips sold", "in May")]

    def completions(generator):
        return sorted((i, c.token_ids) for i, c in generator.generate(prompts, params, progress=False))

    with_adapter = completions(synthesis_generator(base, template, adapter=tmp_path / "adapter"))
    assert with_adapter == completions(synthesis_generator(merged, template))
    assert with_adapter != completions(synthesis_generator(base, template))


def test_bench_documents_and_validation_cost(tmp_path):
    from rho_jax.bench.synthesis_bench import validation_cost, write_documents

    paths = write_documents(tmp_path, documents=5, shards=2)
    assert [len(read_shard(p)) for p in paths] == [3, 2]
    assert 0 < validation_cost(Settings(template="genstruct", model="m"), count=50) < 0.1


@pytest.mark.slow
def test_bench_suite_runs(capsys):
    from rho_jax.bench.cli import main

    assert main(["synthesize", "--documents", "2", "--shards", "1", "--samples", "2", "--new-tokens", "4",
                 "--chunk-tokens", "200", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "generated tokens/s" in out and "(target < 5%)" in out
