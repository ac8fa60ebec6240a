"""The perplexity of answers given their questions under a scoring model (the optional filter).

perplexity = exp(mean over the answer's tokens of -log p(token | prompt, earlier answer tokens)),
the sequence being the prompt encoded with the tokenizer's special tokens followed by the answer
encoded without them. Rows are scored in batches of `batch_size`, each padded (right, with
token 0, padded targets ignored) to a power-of-two length, so few programs are compiled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jax.sharding import Mesh

from rho_jax.analysis.models import load, model_tokenizer
from rho_jax.data.tokenizer import load_tokenizer
from rho_jax.slm import token_losses_on_mesh


class AnswerScorer:
    """Scores answers with the model at `model_path` (an HF directory, a run or a checkpoint) on `mesh`."""

    def __init__(self, model_path: str | Path, mesh: Mesh, tokenizer: str | None = None, batch_size: int = 8):
        self.graphdef, self.params = load(model_path, mesh)
        self.tokenizer = load_tokenizer(tokenizer or model_tokenizer(model_path))
        self.losses = token_losses_on_mesh(self.graphdef, mesh, chunk_size=None)
        self.batch_size = batch_size

    def _row(self, prompt: str, answer: str) -> tuple[list[int], int]:
        """(token ids, index of the first answer token)."""
        head = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        eos = self.tokenizer.eos_token_id
        if head and head[-1] == eos:
            head = head[:-1]
        return head + self.tokenizer(answer, add_special_tokens=False)["input_ids"], len(head)

    def perplexities(self, prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
        """The perplexity of each answer after its prompt (inf for an answer of no tokens)."""
        rows = [self._row(p, a) for p, a in zip(prompts, answers, strict=True)]
        result = []
        for start in range(0, len(rows), self.batch_size):
            group = rows[start:start + self.batch_size]
            length = max(16, 1 << (max(len(ids) for ids, _ in group) - 1).bit_length())
            inputs = np.zeros((self.batch_size, length), np.int32)
            targets = np.zeros((self.batch_size, length), np.int32)
            mask = np.zeros((self.batch_size, length), bool)
            for i, (ids, first) in enumerate(group):
                inputs[i, :len(ids) - 1] = ids[:-1]
                targets[i, :len(ids) - 1] = ids[1:]
                mask[i, max(first - 1, 0):len(ids) - 1] = True
            loss = np.asarray(self.losses(self.params, {"input_ids": inputs, "targets": targets})[0])
            for i in range(len(group)):
                count = mask[i].sum()
                result.append(math.exp(float(loss[i][mask[i]].mean())) if count else math.inf)
        return result
