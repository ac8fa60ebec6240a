"""Build data/tiny/: the small corpus the tiny CPU configs train on (run once; output is committed).

Real English technical prose: docstrings of the Python 3.11 standard library (PSF license).
    clean.jsonl    high-quality documents (reference-model data)
    web.jsonl      the same kind of prose wrapped in web-crawl noise: navigation lines, URLs,
                   session IDs, timestamps, cookie banners (the noisy pretraining corpus)
    heldout.jsonl  documents from modules neither training set uses
    tokenizer/     byte-level BPE (4096 tokens) trained on clean + web
Deterministic: python scripts/make_tiny_data.py /usr/lib/python3.11 data/tiny
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import sys
from pathlib import Path

NOISE_LINES = [
    "Home | About | Blog | Contact | Login",
    "Accept all cookies | Manage preferences",
    "Share on Twitter Share on Facebook Share by email",
    "Posted by admin in Uncategorized | 0 comments",
    "Skip to main content",
    "Subscribe to our newsletter for weekly updates!",
    "Copyright 2019-2024 All rights reserved. Privacy Policy | Terms of Use",
    "Related posts: Top 10 tips | You won't believe | Best deals today",
]


def noise_line(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.choice(NOISE_LINES)
    if kind == 1:
        slug = "-".join(rng.choice(["python", "docs", "guide", "page", "ref", "item"]) for _ in range(3))
        return f"https://www.example{rng.randrange(100)}.com/{slug}?id={rng.randrange(10**8)}&ref=nav"
    if kind == 2:
        return f"session={hashlib.md5(str(rng.random()).encode()).hexdigest()} uid={rng.randrange(10**6)}"
    date = f"{rng.randrange(2000, 2025)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
    return f"Last updated {date} {rng.randrange(24):02d}:{rng.randrange(60):02d} | views {rng.randrange(10**5)}"


def docstrings(stdlib: Path) -> dict[str, list[str]]:
    """module name -> documents 'qualified name\\n\\ndocstring' of at least 300 characters."""
    out: dict[str, list[str]] = {}
    for path in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        docs = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 300 and doc.isascii():
                    name = path.stem if isinstance(node, ast.Module) else f"{path.stem}.{node.name}"
                    docs.append(f"{name}\n\n{doc}")
        if docs:
            out[path.stem] = docs
    return out


def main(stdlib: str, output: str) -> None:
    rng = random.Random(0)
    modules = docstrings(Path(stdlib))
    names = sorted(modules)
    rng.shuffle(names)
    heldout_modules, train_modules = names[:30], names[30:]
    train_docs = [d for m in train_modules for d in modules[m]]
    rng.shuffle(train_docs)
    clean = train_docs[: len(train_docs) // 3]
    web = []
    for doc in train_docs[len(train_docs) // 3 :]:
        lines = doc.split("\n")
        noisy = [noise_line(rng) for _ in range(rng.randrange(1, 4))]
        for line in lines:
            noisy.append(line)
            if rng.random() < 0.15:
                noisy.append(noise_line(rng))
        noisy += [noise_line(rng) for _ in range(rng.randrange(1, 4))]
        web.append("\n".join(noisy))
    heldout = [d for m in heldout_modules for d in modules[m]][:200]
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    for name, docs in (("clean", clean), ("web", web), ("heldout", heldout)):
        with open(out / f"{name}.jsonl", "w") as f:
            for doc in docs:
                f.write(json.dumps({"text": doc}) + "\n")
    from rho_jax.data.tokenizer import train_bpe_tokenizer

    train_bpe_tokenizer(clean + web, 4096, out / "tokenizer")
    print({name: len(docs) for name, docs in (("clean", clean), ("web", web), ("heldout", heldout))})


if __name__ == "__main__":
    main(*sys.argv[1:3])
