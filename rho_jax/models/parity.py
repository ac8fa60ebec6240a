"""Tiny random Hugging Face models built offline, and their reference logits from `transformers`.

Used by the parity tests and `python -m rho_jax.demo`. Needs torch (the `test` extra); nothing is
downloaded. Weights are re-drawn so that every tensor matters: linear weights and embeddings
~ N(0, 1/last_dim), norm weights ~ 1 + N(0, 0.2^2), biases ~ N(0, 0.1^2); logits are O(1), so a
1e-4 tolerance detects any wrong mapping, mask or rotary detail.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

# Max abs logit difference allowed between rho_jax and transformers in fp32.
PARITY_TOLERANCE = 1e-4

_BASE: dict[str, Any] = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
)

# name -> HF config fields (on top of _BASE) covering one feature of the Llama/Mistral families.
TINY_VARIANTS: dict[str, dict[str, Any]] = {
    "llama-mha": dict(model_type="llama", num_key_value_heads=4),
    "llama-gqa": dict(model_type="llama", num_key_value_heads=2, num_hidden_layers=3),
    "llama3-rope-scaling": dict(
        model_type="llama",
        num_key_value_heads=2,
        rope_parameters=dict(
            rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
            high_freq_factor=4.0, original_max_position_embeddings=64,
        ),
    ),
    "mistral-sliding-window": dict(model_type="mistral", num_key_value_heads=1, head_dim=32, sliding_window=4),
    "llama-tied-embeddings": dict(model_type="llama", num_key_value_heads=2, tie_word_embeddings=True),
    "llama-linear-rope-bias": dict(
        model_type="llama", num_key_value_heads=2, attention_bias=True, mlp_bias=True,
        rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0),
    ),
}

_TOKENIZER_TEXT = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? 48 / 2 = 24 and 48 + 24 = 72.",
    "Selective language modeling trains only on the tokens that a reference model marks as useful.",
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { }",
]


def _torch():
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "rho_jax.models.parity needs torch for the transformers reference; install the test extra: "
            "pip install torch==2.13.0 -e '.[test]'"
        ) from err
    return torch


def build_tiny_tokenizer(directory: str | Path, vocab_size: int = 320) -> None:
    """Train a byte-level BPE tokenizer on a few fixed sentences and save it as an HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TOKENIZER_TEXT, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(directory))


def _randomize(model, seed: int) -> None:
    torch = _torch()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith(".bias"):
                param.copy_(0.1 * noise)
            else:
                param.copy_(noise / math.sqrt(param.shape[-1]))


def build_tiny_hf_model(directory: str | Path, variant: str = "llama-gqa", seed: int = 0, **overrides: Any) -> Path:
    """Save a tiny random HF model of `variant` (see TINY_VARIANTS) plus a tokenizer in `directory`."""
    torch = _torch()
    from transformers import AutoConfig, AutoModelForCausalLM

    if variant not in TINY_VARIANTS:
        raise ValueError(f"Unknown tiny variant {variant!r}; choose one of {sorted(TINY_VARIANTS)}.")
    fields = {**_BASE, **TINY_VARIANTS[variant], **overrides}
    model_type = fields.pop("model_type")
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **fields)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _randomize(model, seed)
    directory = Path(directory)
    model.save_pretrained(str(directory))
    build_tiny_tokenizer(directory, vocab_size=min(fields["vocab_size"], 320))
    return directory


def hf_reference_logits(directory: str | Path, input_ids: np.ndarray) -> np.ndarray:
    """float32 logits `[B, T, V]` of the HF model in `directory` computed by `transformers` (eager attention)."""
    torch = _torch()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(np.asarray(input_ids), dtype=torch.long)).logits.float().numpy()


def random_token_ids(vocab_size: int, batch: int, seq_len: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, size=(batch, seq_len), dtype=np.int32)
