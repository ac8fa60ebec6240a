"""Data pipeline on grain: sources -> tokenize -> pack (segment ids) -> mix -> per-process batches.

`python -m rho_jax.data.prepare` tokenizes and packs a corpus once into ArrayRecord shards.
"""

from rho_jax.data.config import DataConfig, SourceConfig
from rho_jax.data.pipeline import eval_batches, positioned_by_step, to_global_batch, train_dataset
from rho_jax.data.tokenizer import load_tokenizer, tokenizer_fingerprint

__all__ = [
    "SourceConfig",
    "DataConfig",
    "load_tokenizer",
    "tokenizer_fingerprint",
    "train_dataset",
    "positioned_by_step",
    "eval_batches",
    "to_global_batch",
]
