"""LoRA -> synthesis -> reference model, end to end on CPU, through the command lines.

A tiny random Llama (with a BPE tokenizer trained on the fixture texts) gets a LoRA adapter trained by
`python -m rho_jax.train` (`model.lora`, SFT with `prompt_field`) on made-up documents and their
question/answer pairs in Genstruct's format (`tests/genstruct_pairs.py`) until it writes that format.
`python -m rho_jax.convert to-peft RUN` exports it; `peft.PeftModel` on the HF base gives rho_jax's
logits. `python -m rho_jax.synthesize --adapter` turns held-out documents into mostly valid pairs,
and every rejected completion carries the reason re-derived here from its text; an empty document
is refused before anything is written, and a too small `--max-new-tokens` truncates every
completion. The accepted pairs train a reference model through `python -m rho_jax.train`, whose
loss on them goes down.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from genstruct_pairs import make_examples, write_jsonl
from train_runs import losses, run_config

from rho_jax.convert import main as convert
from rho_jax.data.tokenizer import load_tokenizer, train_bpe_tokenizer
from rho_jax.models import load_hf
from rho_jax.models.lora import merge_lora, with_lora
from rho_jax.models.parity import PARITY_TOLERANCE, build_tiny_hf_model
from rho_jax.synthesize import main as synthesize
from rho_jax.train import main as train
from rho_jax.training.model_sources import run_adapter

LORA = {"r": 8, "alpha": 16, "dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
VOCAB = 512
TRAIN_EXAMPLES = 800
LORA_STEPS = 400
HELDOUT = 24
# Measured (docs/synthesis.md): 16 of 24 valid, 21 of 24 in the format (neither truncated nor without the marker).
MIN_VALID_SHARE = 0.5
MIN_FORMAT_SHARE = 0.75
ASSISTANT, USER = "[[[Assistant]]]", "[[[User]]]"
# The genstruct template's markers and the special tokens of `train_bpe_tokenizer`'s tokenizers.
GENSTRUCT_MARKERS = ("[[[Title]]]", "[[[Content]]]", USER, ASSISTANT, "<s>", "</s>", "<pad>")


def _base(tmp: Path, texts: list[str]) -> Path:
    """A tiny random HF Llama whose tokenizer is a BPE tokenizer trained on `texts`."""
    base = build_tiny_hf_model(tmp / "base", "llama-gqa", vocab_size=VOCAB, max_position_embeddings=256)
    train_bpe_tokenizer(texts, VOCAB, base)
    return base


def _train(tmp: Path, name: str, base: Path, source: dict, steps: int, learning_rate: float, lora: dict | None) -> Path:
    """A `python -m rho_jax.train` run on `base` (16 x 128 tokens per step) over one prompt/response source."""
    config = run_config(
        tmp, name, model={"init": "hf", "path": str(base), "config": None, "lora": lora},
        data={"tokenizer": str(base), "seq_len": 128, "sources": [{"name": name, **source}]},
        train={"batch_size": 16, "total_steps": steps},
        optimizer={"learning_rate": learning_rate, "warmup_steps": 10, "schedule": "constant", "weight_decay": 0.0},
        checkpoint={"every_tokens": 10**9}, eval={"every_tokens": None, "sets": {}})
    assert train(["--config", str(config)]) == 0
    return tmp / name


def _words(text: str) -> list[str]:
    """Lower-cased runs of \\w (the fixture texts are ASCII)."""
    return re.findall(r"\w+", text.lower())


def _copied_share(question: str, text: str, n: int = 4) -> float:
    """The share of the question's runs of n words that occur in `text`."""
    words = _words(question)
    runs = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
    padded = " " + " ".join(_words(text)) + " "
    return sum(f" {run} " in padded for run in runs) / len(runs) if runs else 0.0


def _verdict(completion: str, finish_reason: str, document: str, accepted_questions: set[str]) -> str:
    """The verdict of a genstruct completion of a one-chunk document, derived from its text alone
    (the synthesize defaults: copy check on 4-grams above 0.5, no perplexity filter)."""
    if finish_reason == "length":
        return "truncated"
    if ASSISTANT not in completion:
        return "missing answer marker"
    question, answer = completion.split(ASSISTANT, 1)
    question, answer = question.strip(), answer.split(USER, 1)[0].strip()
    if not question or not answer:
        return "empty question or answer"
    if any(marker in part for marker in GENSTRUCT_MARKERS for part in (question, answer)):
        return "stray marker"
    if _copied_share(question, document) > 0.5:
        return "question copies text"
    if " ".join(_words(question)) in accepted_questions:
        return "duplicate"
    return "valid"


@pytest.mark.slow
def test_lora_adapter_synthesizes_reference_data(tmp_path):
    pytest.importorskip("peft", reason="peft is the reference for LoRA parity (test extra)")
    from test_lora import peft_logits

    # (a) the supervised set, the base model and its tokenizer
    train_rows = [e.sft_row() for e in make_examples(TRAIN_EXAMPLES, seed=0)]
    heldout = make_examples(HELDOUT, seed=1, prefix="held", distinct=True)
    base = _base(tmp_path, [r["prompt"] + r["response"] for r in train_rows])
    sft = write_jsonl(tmp_path / "sft.jsonl", train_rows)

    # (b) a LoRA adapter trained on it
    run = _train(tmp_path, "lora", base, {"paths": [str(sft)], "prompt_field": "prompt", "text_field": "response"},
                 LORA_STEPS, 1e-2, LORA)
    lora_losses = losses(run)
    assert np.mean(list(lora_losses.values())[-10:]) < 0.35 * lora_losses[1]

    # (c) exported to PEFT: PeftModel on the HF base computes rho_jax's logits
    assert convert(["to-peft", str(run), str(tmp_path / "adapter")]) == 0
    row = heldout[0].sft_row()
    ids = np.asarray([load_tokenizer(str(base))(row["prompt"] + row["response"])["input_ids"]])
    model, adapter = load_hf(base), run_adapter(run)
    ours = np.asarray(with_lora(model, adapter)(ids))
    assert float(np.abs(ours - np.asarray(model(ids))).max()) > 100 * PARITY_TOLERANCE  # the adapter matters
    np.testing.assert_allclose(np.asarray(merge_lora(model, adapter)(ids)), ours, atol=PARITY_TOLERANCE, rtol=0)
    np.testing.assert_allclose(peft_logits(base, tmp_path / "adapter", ids), ours, atol=PARITY_TOLERANCE, rtol=0)

    # (d) synthesis over held-out documents with the exported adapter
    docs = tmp_path / "docs"
    write_jsonl(docs / "heldout.jsonl", [e.document() for e in heldout])
    write_jsonl(docs / "blank" / "blank.jsonl", [{"text": "Hana sold 40 cards in May."}, {"text": " \n\t "}])
    common = ["--model", str(base), "--adapter", str(tmp_path / "adapter"), "--template", "genstruct", "--no-progress"]
    with pytest.raises(SystemExit, match="blank.jsonl row 1: the document is empty"):
        synthesize([*common, "--input", str(docs / "blank" / "blank.jsonl"), "--output", str(tmp_path / "refused")])
    assert not (tmp_path / "refused" / "shards").exists()

    synth = tmp_path / "synth"
    assert synthesize([*common, "--input", str(docs / "heldout.jsonl"), "--output", str(synth), "--max-new-tokens", "40"]) == 0
    report = json.loads((synth / "report.json").read_text())
    assert report["completions"] == HELDOUT and sum(report["counts"].values()) == HELDOUT
    counts = report["counts"]
    assert counts["valid"] >= MIN_VALID_SHARE * HELDOUT, counts
    assert HELDOUT - counts["truncated"] - counts["missing answer marker"] >= MIN_FORMAT_SHARE * HELDOUT, counts
    shard = synth / "shards" / "heldout"
    pairs = [json.loads(line) for line in (shard / "pairs.jsonl").read_text().splitlines()]
    rejected = [json.loads(line) for line in (shard / "rejected.jsonl").read_text().splitlines()]
    accepted_questions = {" ".join(_words(p["prompt"])) for p in pairs}
    documents = {e.id: e.text for e in heldout}
    for row in rejected:
        assert row["reason"] == _verdict(row["completion"], row["finish_reason"], documents[row["document_id"]],
                                         accepted_questions), row
    for pair in pairs:  # accepted: ended by EOS, both parts there, no marker left
        assert pair["finish_reason"] == "eos" and pair["prompt"].strip() and pair["response"].strip()
        assert not any(m in pair["prompt"] + pair["response"] for m in GENSTRUCT_MARKERS)

    short = tmp_path / "short"
    assert synthesize([*common, "--input", str(docs / "heldout.jsonl"), "--output", str(short), "--max-new-tokens", "4"]) == 0
    short_report = json.loads((short / "report.json").read_text())
    assert short_report["counts"]["truncated"] == short_report["completions"] == HELDOUT

    # (e) the pairs train a reference model whose loss on them goes down
    reference = _train(tmp_path, "reference", base, {"paths": [str(shard / "pairs.jsonl")], "prompt_field": "prompt",
                                                      "text_field": "response"}, 30, 3e-3, None)
    reference_losses = list(losses(reference).values())
    assert np.mean(reference_losses[-5:]) < 0.5 * np.mean(reference_losses[:5]), reference_losses
