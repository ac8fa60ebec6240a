"""The quickstart's data: a mixed pool to curate, a noisy web-style corpus with labelled noise, held-out math.

From the shipped source text (`rho_jax/quickstart/data/`, see scripts/make_quickstart_data.py) and
a seed, `build_corpus` writes, deterministically:

    pool.jsonl        the raw corpus the reference data is curated from (`rho_jax.quickstart.reference_data`):
                      {"id", "text", "kind"}, kind (the truth; no curation step reads it) one of
                      clean         worked math word problems as they are
                      web           other problems on crawled pages: heavy web noise around and inside them
                      boilerplate   pages of web noise only
                      offdomain     whole off-domain documents (Python library prose)
                      contaminated  held-out problems planted in the pool: verbatim, or with their case,
                                    whitespace or punctuation changed (`PLANT_VARIANTS`, round robin)
    annotations.jsonl a random sample of the pool as a human annotator labels it: {"id", "text", "label"},
                      label 1 (high quality: a clean worked problem, kinds clean and contaminated) or 0
    noisy.jsonl       the pretraining corpus both CLM and SLM train on: other math problems wrapped
                      in the token-level noise of web crawls (navigation, metadata lines, URLs, IDs,
                      cookie banners, ads) plus whole off-domain documents. Each record is
                      {"text", "noise": [[start, end, kind], ...]}: the character spans that were
                      injected, kind "web" or "offdomain".
    heldout.jsonl     in-domain problems no model trains on (the target distribution)
    tokenizer/        byte-level BPE trained on the pool (without its planted held-out problems) + noisy text

The problems of the pool, noisy.jsonl and heldout.jsonl are disjoint; so are the off-domain documents
of the pool and of noisy.jsonl. They are GSM-Symbolic instances of GSM8K templates, and instances of one
template (other names and numbers: other problems) share word runs between the template's variables;
`DECONTAMINATION_N` is chosen so that a copied held-out problem is found and few template siblings are.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path

import numpy as np

from rho_jax.data.tokenizer import train_bpe_tokenizer

NOISE_KINDS = ("web", "offdomain")
POOL_KINDS = ("clean", "web", "boilerplate", "offdomain", "contaminated")
HIGH_QUALITY_KINDS = ("clean", "contaminated")  # what an annotator who cannot see the held-out set calls high quality
# Word n-gram length of the quickstart's decontamination. Measured on the default corpus (seed 0: 300 held-out
# problems, the pool's 1,800 clean and web-wrapped ones): n = 13 (decontamination's default) flags 1,203 pool
# problems (67%) as sharing an n-gram with a held-out problem, all but the planted ones template siblings;
# n = 25: 423, 30: 245, 35: 126 (7%), 40: 64, 50: 20. The shortest held-out problem has 38 words, so at n <= 38
# a copy of any held-out problem is found (at 40, 3 could not be; at 50, 14).
DECONTAMINATION_N = 35
SOURCE_PACKAGE = "rho_jax.quickstart"


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """How much of each part to build (documents), the noise levels, and the tokenizer size.

    pool_*_docs: documents of each kind in pool.jsonl (`planted_docs`: held-out problems planted as
    contamination). web_lines_per_doc / pool_web_lines_per_doc: mean number of injected web-noise lines
    per noisy in-domain document of noisy.jsonl / per `web` document of the pool (a header and a footer
    block, and lines between the document's own lines). boilerplate_lines: mean lines of a boilerplate
    page. labelled_docs: pool documents in annotations.jsonl. offdomain_docs: whole off-domain
    documents mixed into noisy.jsonl.
    """

    seed: int = 0
    pool_clean_docs: int = 1500
    pool_web_docs: int = 300
    pool_boilerplate_docs: int = 150
    pool_offdomain_docs: int = 150
    planted_docs: int = 12
    labelled_docs: int = 400
    noisy_docs: int = 1800
    heldout_docs: int = 300
    offdomain_docs: int = 150
    web_lines_per_doc: float = 2.0
    pool_web_lines_per_doc: float = 8.0
    boilerplate_lines: float = 12.0
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


def boilerplate_page(rng: np.random.Generator, mean_lines: float) -> str:
    """A crawled page with no content: 1 + Poisson(mean_lines - 1) lines of web noise."""
    return "\n".join(web_noise_line(rng) for _ in range(1 + rng.poisson(max(mean_lines - 1, 0))))


# How a planted held-out problem is copied: as it is, or reformatted in a way n-gram normalization undoes.
PLANT_VARIANTS: dict[str, Callable[[str], str]] = {
    "verbatim": lambda text: text,
    "case": str.upper,
    "whitespace": lambda text: re.sub(r"\s+", lambda m: "  " if "\n" in m.group() else "\t", text),
    "punctuation": lambda text: re.sub(r"[,?]", "", text).replace(".\n", "!\n"),
}


def _write_jsonl(path: Path, records: Iterable[dict]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def _take(items: list, counts: dict[str, int], what: str) -> dict[str, list]:
    """Consecutive slices of `items` of the given sizes, by name; a clear error if `items` is too short."""
    if sum(counts.values()) > len(items):
        raise ValueError(f"the corpus spec asks for {sum(counts.values())} {what} ({counts}); {len(items)} are available.")
    out, start = {}, 0
    for name, count in counts.items():
        out[name], start = items[start : start + count], start + count
    return out


def build_pool(problems: dict[str, list[str]], offdomain: list[str], heldout: list[str], spec: CorpusSpec,
               rng: np.random.Generator) -> list[dict]:
    """The pool's records {"id", "text", "kind"} in random order (ids pool-00000, ... in file order)."""
    docs = [(text, "clean") for text in problems["pool_clean"]]
    docs += [(noisy_document(text, rng, spec.pool_web_lines_per_doc)["text"], "web") for text in problems["pool_web"]]
    docs += [(boilerplate_page(rng, spec.boilerplate_lines), "boilerplate") for _ in range(spec.pool_boilerplate_docs)]
    docs += [(text, "offdomain") for text in offdomain]
    variants = list(PLANT_VARIANTS.values())
    planted = rng.choice(len(heldout), spec.planted_docs, replace=False)
    docs += [(variants[i % len(variants)](heldout[k]), "contaminated") for i, k in enumerate(planted)]
    return [{"id": f"pool-{i:05d}", "text": docs[k][0], "kind": docs[k][1]} for i, k in enumerate(rng.permutation(len(docs)))]


def build_corpus(spec: CorpusSpec, directory: Path) -> dict[str, int]:
    """Write pool/annotations/noisy/heldout JSONL and the tokenizer into `directory`; returns document counts."""
    if spec.labelled_docs > spec.pool_clean_docs + spec.pool_web_docs + spec.pool_boilerplate_docs \
            + spec.pool_offdomain_docs + spec.planted_docs:
        raise ValueError(f"the corpus spec asks for {spec.labelled_docs} labelled documents, more than the pool holds.")
    if spec.planted_docs > spec.heldout_docs:
        raise ValueError(f"the corpus spec plants {spec.planted_docs} held-out problems; only {spec.heldout_docs} are held out.")
    rng = np.random.default_rng(spec.seed)
    problems = _take([str(t) for t in rng.permutation(shipped_texts("gsm_symbolic"))],
                     {"heldout": spec.heldout_docs, "pool_clean": spec.pool_clean_docs, "pool_web": spec.pool_web_docs,
                      "noisy": spec.noisy_docs}, "math problems")
    heldout = problems["heldout"]
    offdomain_texts = shipped_texts("offdomain")
    offdomain = _take([offdomain_texts[i] for i in rng.permutation(len(offdomain_texts))],
                      {"noisy": spec.offdomain_docs, "pool": spec.pool_offdomain_docs}, "off-domain documents")
    pool = build_pool(problems, offdomain["pool"], heldout, spec, rng)
    labelled = sorted(rng.choice(len(pool), spec.labelled_docs, replace=False))
    annotations = [{"id": pool[i]["id"], "text": pool[i]["text"], "label": int(pool[i]["kind"] in HIGH_QUALITY_KINDS)}
                   for i in labelled]
    noisy = [noisy_document(text, rng, spec.web_lines_per_doc) for text in problems["noisy"]]
    noisy += [{"text": text, "noise": [[0, len(text), "offdomain"]]} for text in offdomain["noisy"]]
    noisy = [noisy[i] for i in rng.permutation(len(noisy))]
    directory.mkdir(parents=True, exist_ok=True)
    counts = {
        "pool": _write_jsonl(directory / "pool.jsonl", pool),
        "annotations": _write_jsonl(directory / "annotations.jsonl", annotations),
        "noisy": _write_jsonl(directory / "noisy.jsonl", noisy),
        "heldout": _write_jsonl(directory / "heldout.jsonl", ({"text": t} for t in heldout)),
    }
    tokenizer_texts = [d["text"] for d in pool if d["kind"] != "contaminated"] + [d["text"] for d in noisy]
    train_bpe_tokenizer(tokenizer_texts, spec.vocab_size, directory / "tokenizer")
    return counts
