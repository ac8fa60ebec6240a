"""The quickstart's data: high-quality math, a noisy web-style corpus with labelled noise, held-out math.

From the shipped source text (`rho_jax/quickstart/data/`, see scripts/make_quickstart_data.py) and
a seed, `build_corpus` writes, deterministically:

    reference.jsonl  high-quality in-domain documents (worked math word problems): the reference
                     model's training data
    noisy.jsonl      the pretraining corpus both CLM and SLM train on: other math problems wrapped
                     in the token-level noise of web crawls (navigation, metadata lines, URLs, IDs,
                     cookie banners, ads) plus whole off-domain documents (Python library prose).
                     Each record is {"text", "noise": [[start, end, kind], ...]}: the character
                     spans that were injected, kind "web" or "offdomain".
    heldout.jsonl    in-domain problems no model trains on (the target distribution)
    tokenizer/       byte-level BPE trained on reference + noisy text

The problems of the three files are disjoint.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import numpy as np

from rho_jax.data.tokenizer import train_bpe_tokenizer

NOISE_KINDS = ("web", "offdomain")
SOURCE_PACKAGE = "rho_jax.quickstart"


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """How much of each part to build (documents), the noise level, and the tokenizer size.

    web_lines_per_doc: mean number of injected web-noise lines per noisy in-domain document
    (a header and a footer block, and lines between the document's own lines).
    offdomain_docs: whole off-domain documents mixed into the noisy corpus.
    """

    seed: int = 0
    reference_docs: int = 1500
    noisy_docs: int = 1800
    heldout_docs: int = 300
    offdomain_docs: int = 150
    web_lines_per_doc: float = 2.0
    vocab_size: int = 1024


def shipped_texts(name: str) -> list[str]:
    """The texts of the shipped `rho_jax/quickstart/data/<name>.jsonl.gz`."""
    with resources.files(SOURCE_PACKAGE).joinpath("data", f"{name}.jsonl.gz").open("rb") as raw:
        with gzip.open(raw, "rt", encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f]


_SITES = ("mathhelpforum", "homeworkhub", "tutorzone", "studyplace", "answerbank", "kidsmath", "quizwiz")
_SECTIONS = ("Forums", "Homework Help", "Word Problems", "Grade 5", "Grade 6", "Worksheets", "Answers")
_USERS = ("mathfan", "guest", "tutor_jen", "student", "admin", "helper", "mom_of_3", "dad_k")
# navigation, metadata, URL, ID, banner: mostly lines with random parts, as in real crawls.
_KIND_WEIGHTS = (0.15, 0.25, 0.25, 0.25, 0.10)
_SLUG_WORDS = ("math", "problem", "help", "answer", "word", "question", "solve")
_BANNERS = (
    "Skip to main content",
    "This site uses cookies. By continuing to browse you agree to our use of cookies. Learn more | OK",
    "Subscribe to our newsletter for free printable worksheets every week!",
    "Sponsored: Get 50% off online tutoring today. Click here to start your free trial",
    "Was this answer helpful? Yes | No | Report abuse",
    "Share: Facebook | Twitter | Pinterest | Email | Print",
    "Log in or sign up to post a reply.",
    "Related questions: fractions help | percent word problems | time and rate",
)


def web_noise_line(rng: np.random.Generator) -> str:
    """One line of web-crawl boilerplate: navigation, metadata, a URL, an ID, or a banner."""
    site = str(rng.choice(_SITES))
    kind = rng.choice(5, p=_KIND_WEIGHTS)
    if kind == 0:
        path = " > ".join(rng.choice(_SECTIONS, rng.integers(2, 4), replace=False))
        return f"Home > {path} | Log in | Register"
    if kind == 1:
        user = f"{rng.choice(_USERS)}{rng.integers(1000)}"
        date = f"{rng.integers(2005, 2025)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}"
        time = f"{rng.integers(24):02d}:{rng.integers(60):02d}"
        return f"Posted by {user} on {date} at {time} | {rng.integers(40)} replies | {rng.integers(10**5)} views"
    if kind == 2:
        slug = "-".join(rng.choice(_SLUG_WORDS, 3, replace=False))
        session = rng.bytes(12).hex()[: rng.integers(8, 25)]
        return f"https://www.{site}.com/{slug}/{rng.integers(10**7)}?utm_source=feed&sid={session}"
    if kind == 3:
        uuid = rng.bytes(14).hex()
        return f"Question ID: {uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:28]} | Ref #{rng.integers(10**6)}"
    return str(rng.choice(_BANNERS))


def noisy_document(text: str, rng: np.random.Generator, lines_per_doc: float) -> dict:
    """`text` as a crawled page: header, footer and in-between lines of web noise, with their spans.

    About half the noise lines go in the header and footer, the rest between the document's lines.
    """
    header = [web_noise_line(rng) for _ in range(rng.poisson(lines_per_doc / 4) + 1)]
    footer = [web_noise_line(rng) for _ in range(rng.poisson(lines_per_doc / 4))]
    body = text.split("\n")
    inside_rate = (lines_per_doc / 2) / max(len(body) - 1, 1)
    pieces: list[tuple[str, bool]] = [(line, True) for line in header]
    for i, line in enumerate(body):
        pieces.append((line, False))
        if i < len(body) - 1 and rng.random() < inside_rate:
            pieces.append((web_noise_line(rng), True))
    pieces += [(line, True) for line in footer]
    out, spans, position = [], [], 0
    for line, is_noise in pieces:
        if out:
            position += 1  # the "\n" joining lines belongs to no span
        if is_noise:
            spans.append([position, position + len(line), "web"])
        out.append(line)
        position += len(line)
    return {"text": "\n".join(out), "noise": spans}


def _write_jsonl(path: Path, records: Iterable[dict]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def build_corpus(spec: CorpusSpec, directory: Path) -> dict[str, int]:
    """Write reference/noisy/heldout JSONL and the tokenizer into `directory`; returns document counts."""
    rng = np.random.default_rng(spec.seed)
    problems = [str(t) for t in rng.permutation(shipped_texts("gsm_symbolic"))]
    needed = spec.heldout_docs + spec.reference_docs + spec.noisy_docs
    if needed > len(problems):
        raise ValueError(f"the corpus spec asks for {needed} math problems; {len(problems)} are shipped.")
    heldout = problems[: spec.heldout_docs]
    reference = problems[spec.heldout_docs : spec.heldout_docs + spec.reference_docs]
    in_domain = problems[spec.heldout_docs + spec.reference_docs : needed]
    offdomain = shipped_texts("offdomain")
    if spec.offdomain_docs > len(offdomain):
        raise ValueError(f"the corpus spec asks for {spec.offdomain_docs} off-domain documents; {len(offdomain)} are shipped.")
    noisy = [noisy_document(text, rng, spec.web_lines_per_doc) for text in in_domain]
    picked = rng.choice(len(offdomain), spec.offdomain_docs, replace=False)
    noisy += [{"text": offdomain[i], "noise": [[0, len(offdomain[i]), "offdomain"]]} for i in picked]
    noisy = [noisy[i] for i in rng.permutation(len(noisy))]
    directory.mkdir(parents=True, exist_ok=True)
    counts = {
        "reference": _write_jsonl(directory / "reference.jsonl", ({"text": t} for t in reference)),
        "noisy": _write_jsonl(directory / "noisy.jsonl", noisy),
        "heldout": _write_jsonl(directory / "heldout.jsonl", ({"text": t} for t in heldout)),
    }
    train_bpe_tokenizer(reference + [d["text"] for d in noisy], spec.vocab_size, directory / "tokenizer")
    return counts
