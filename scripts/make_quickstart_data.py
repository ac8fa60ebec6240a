"""Build rho_jax/quickstart/data/: the source text the CPU quickstart builds its corpora from.

Run once; the output is committed (the quickstart itself never needs these generators):
    pip install reasoning-gym==0.1.25
    python scripts/make_quickstart_data.py data/tiny rho_jax/quickstart/data

    gsm_symbolic.jsonl.gz  4,000 grade-school math word problems with worked solutions, from
                           reasoning-gym's `gsm_symbolic` generator (GSM8K-derived templates with
                           fresh names and numbers; seed 7): "Question: ...\\nAnswer: ...#### N"
    offdomain.jsonl.gz     English technical prose from another domain: the Python standard
                           library docstrings of data/tiny/ (PSF license)
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

NUM_PROBLEMS = 4000
SEED = 7
# reasoning-gym's instruction to an RL policy, not part of a worked problem as found in a textbook.
INSTRUCTION = " Give the result as your final answer. Do not include units."


def math_problems() -> list[str]:
    import reasoning_gym

    problems = []
    for item in reasoning_gym.create_dataset("gsm_symbolic", size=NUM_PROBLEMS, seed=SEED):
        question = item["question"].replace(INSTRUCTION, "").strip()
        problems.append(f"Question: {question}\nAnswer: {item['metadata']['answer_cot'].strip()}")
    return problems


def offdomain_prose(tiny_data: Path) -> list[str]:
    texts = []
    for name in ("clean.jsonl", "heldout.jsonl"):
        with open(tiny_data / name) as f:
            texts += [json.loads(line)["text"] for line in f]
    return texts


def write_jsonl_gz(path: Path, texts: list[str]) -> None:
    # mtime=0: the same texts give the same bytes, so regenerating leaves git clean.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        for text in texts:
            f.write((json.dumps({"text": text}) + "\n").encode())


def main(tiny_data: str, output: str) -> None:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    problems = list(dict.fromkeys(math_problems()))  # distinct, in generation order
    write_jsonl_gz(out / "gsm_symbolic.jsonl.gz", problems)
    write_jsonl_gz(out / "offdomain.jsonl.gz", offdomain_prose(Path(tiny_data)))
    print(f"{len(problems)} math problems, off-domain prose from {tiny_data}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
