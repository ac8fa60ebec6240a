"""The benchmark's peer: the same SLM step written the common PyTorch way.

transformers `LlamaForCausalLM` for the trained model and the reference (same config as the
rho_jax model), the reference forward under `torch.no_grad()`, per-token cross-entropy of both,
excess-loss scores, `torch.topk` over the whole batch, the masked mean of the selected tokens'
loss, backward and an AdamW step. torch is only needed for this peer (the `test` extra).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rho_jax.models import ModelConfig


class TorchSLMStep:
    """One SLM training step in PyTorch on a fixed batch; call it to run a step (returns the loss)."""

    def __init__(self, cfg: ModelConfig, ref_cfg: ModelConfig, batch: dict[str, np.ndarray], ratio: float, dtype: str,
                 learning_rate: float = 1e-4):
        import torch
        import transformers

        self.torch = torch
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]

        def build(config: ModelConfig, seed: int) -> Any:
            torch.manual_seed(seed)
            hf_config = transformers.AutoConfig.for_model(**config.to_hf_dict())
            return transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch_dtype)

        self.model = build(cfg, 0).train()
        self.reference = build(ref_cfg, 1).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=learning_rate)
        self.ratio = ratio
        self.input_ids = torch.as_tensor(batch["input_ids"], dtype=torch.long)
        self.targets = torch.as_tensor(batch["targets"], dtype=torch.long)
        self.valid = torch.as_tensor(batch["valid"])

    def _token_losses(self, logits: Any) -> Any:
        F = self.torch.nn.functional
        return F.cross_entropy(logits.float().flatten(0, 1), self.targets.flatten(), reduction="none").view_as(self.targets)

    def __call__(self) -> float:
        torch = self.torch
        with torch.no_grad():
            ref_loss = self._token_losses(self.reference(input_ids=self.input_ids).logits)
        loss = self._token_losses(self.model(input_ids=self.input_ids).logits)
        scores = (loss.detach() - ref_loss).masked_fill(~self.valid, float("-inf")).flatten()
        k = math.ceil(self.ratio * int(self.valid.sum()))
        selected = torch.zeros_like(scores, dtype=torch.bool)
        selected[torch.topk(scores, k).indices] = True
        slm_loss = (loss.flatten() * selected).sum() / k
        self.optimizer.zero_grad(set_to_none=True)
        slm_loss.backward()
        self.optimizer.step()
        return float(slm_loss.detach())
