"""Rho-1's Table 1 (few-shot chain-of-thought math accuracy, %), the rows a user's run is read against.

Columns are the shipped task names; `None` where the paper reports no figure. The paper's AVG is
over all nine tasks.
"""

from __future__ import annotations

import re

TABLE1_TASKS = ("gsm8k", "math", "svamp", "asdiv", "mawps", "tabmwp", "mathqa", "mmlu_stem", "sat_math")
TABLE1_HEADERS = {"gsm8k": "GSM8K", "math": "MATH", "svamp": "SVAMP", "asdiv": "ASDiv", "mawps": "MAWPS",
                  "tabmwp": "TAB", "mathqa": "MQA", "mmlu_stem": "MMLU STEM", "sat_math": "SAT"}

# model -> (pattern matched against the lower-cased model path or Hub id, the nine accuracies).
PAPER_ROWS: dict[str, tuple[str, tuple[float, ...]]] = {
    "TinyLlama-1.1B": (r"tinyllama", (2.9, 3.2, 11.0, 18.1, 20.4, 12.5, 14.6, 16.1, 21.9)),
    "Rho-1-Math-1B (30B tokens)": (r"rho-math-1b", (36.2, 15.6, 52.1, 67.0, 83.9, 29.0, 32.5, 23.3, 28.1)),
    "Mistral-7B": (r"mistral-7b", (41.2, 11.6, 64.7, 68.5, 87.5, 52.9, 33.0, 49.5, 59.4)),
    "Rho-1-Math-7B": (r"rho-math-7b", (66.9, 31.0, 77.8, 79.0, 93.9, 49.9, 58.7, 54.6, 84.4)),
}


def paper_rows_for(model: str) -> dict[str, dict[str, float]]:
    """The Table-1 rows of the model `model` names (matched on its path or Hub id), {} if unknown."""
    name = model.lower()
    return {label: dict(zip(TABLE1_TASKS, scores)) for label, (pattern, scores) in PAPER_ROWS.items()
            if re.search(pattern, name)}
