"""The tokenizer: loading it (a local directory or a Hugging Face Hub id), fingerprinting what decides token ids,
and encoding one document."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import transformers

from rho_jax.models.hub import resolve_local_dir

# Any one of these marks a directory as holding a Hugging Face tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def has_tokenizer_files(directory: str | Path) -> bool:
    """True if `directory` holds a saved Hugging Face tokenizer."""
    return any((Path(directory) / name).exists() for name in _TOKENIZER_FILES)
# Encoded (with the tokenizer's special tokens) into the fingerprint: covers normalization,
# pre-tokenization and the BOS/EOS the tokenizer adds by itself.
_FINGERPRINT_SAMPLE = "Hello world! 12 345\n\t  Ünïcödé — 数学 x^2+y_1 <s></s> end."


def load_tokenizer(path: str) -> transformers.PreTrainedTokenizerBase:
    """The Hugging Face tokenizer saved in the local directory `path`, or of the Hugging Face Hub
    id `path` (`owner/name[@revision]`, when no such local directory exists: fetched into the HF
    cache, or found there when offline; see `rho_jax.models.hub.resolve_local_dir`).

    Raises FileNotFoundError if the directory or its tokenizer files are missing or the Hub id
    cannot be resolved, ValueError if it cannot be loaded or has no EOS token (packing ends every
    document with EOS).
    """
    directory = resolve_local_dir(path, "tokenizer", kind="tokenizer")
    if not directory.is_dir():
        raise FileNotFoundError(
            f"tokenizer directory {path} does not exist (it must be a local directory or a Hugging Face Hub "
            "id owner/name)."
        )
    if not has_tokenizer_files(directory):
        raise FileNotFoundError(
            f"tokenizer directory {path} holds none of {list(_TOKENIZER_FILES)}; save a Hugging Face tokenizer "
            "there (tokenizer.save_pretrained(dir))."
        )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"could not load a Hugging Face tokenizer from {path}: {e}") from e
    check_tokenizer(tokenizer, path)
    return tokenizer


def check_tokenizer(tokenizer: transformers.PreTrainedTokenizerBase, name: str) -> None:
    """Raise ValueError unless `tokenizer` has an EOS token and its ids fit the int32 token arrays."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer {name} has no EOS token; packed documents must end with one.")
    if len(tokenizer) > np.iinfo(np.int32).max:
        raise ValueError(f"the tokenizer {name} has {len(tokenizer)} tokens; token ids are stored as int32.")


def tokenizer_fingerprint(tokenizer: transformers.PreTrainedTokenizerBase) -> str:
    """A short sha256 hex digest of everything that decides token ids.

    Covers the full vocabulary, the added/special tokens and their ids, the BOS/EOS ids and the ids
    of a fixed sample encoded with the tokenizer's own special tokens (normalization and whether it
    adds BOS/EOS). Equal for tokenizers saved from the same object; prepared data records it so that
    rows tokenized with another tokenizer are refused.
    """
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "added": sorted((i, t.content, t.special) for i, t in tokenizer.added_tokens_decoder.items()),
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "sample": tokenizer(_FINGERPRINT_SAMPLE, add_special_tokens=True)["input_ids"],
    }
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()[:16]


def encode_document(
    tokenizer: transformers.PreTrainedTokenizerBase, text: str, prompt: str | None = None
) -> dict[str, np.ndarray]:
    """`{"tokens": int32[n], "loss_mask": bool[n]}` of one document, ending with exactly one EOS.

    The first piece (the prompt if given, else the text) is encoded with the tokenizer's own special
    tokens (`add_special_tokens=True`, so a leading BOS appears iff the tokenizer adds one), the
    response with none; EOS is appended unless the tokenizer already ended the document with it.
    An EOS that the tokenizer appends to a prompt is dropped, so the document ends once.

    `loss_mask[i]` says whether token i may be a training target: False on a leading BOS and, with a
    prompt, on every prompt token; True on the text/response tokens and the final EOS. (Packing
    makes the first token of every document an invalid target anyway; the mask matters for prompts.)
    """
    eos = tokenizer.eos_token_id
    if prompt is None:
        prompt_ids: list[int] = []
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    else:
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if prompt_ids and prompt_ids[-1] == eos:
            prompt_ids = prompt_ids[:-1]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = prompt_ids + ids
    if not tokens or tokens[-1] != eos:
        tokens.append(eos)
    loss_mask = np.ones(len(tokens), bool)
    loss_mask[: len(prompt_ids)] = False
    if tokens[0] == tokenizer.bos_token_id:
        loss_mask[0] = False
    return {"tokens": np.asarray(tokens, np.int32), "loss_mask": loss_mask}


def train_bpe_tokenizer(texts: list[str], vocab_size: int, output_dir: str | Path) -> transformers.PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style, no BOS added) on `texts` and save it to `output_dir`.

    Special tokens: `<pad>` = 0, `<s>` = 1 (BOS), `</s>` = 2 (EOS), matching the shipped model configs.
    Deterministic for the same texts and vocab size.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>",
                                                eos_token="</s>")
    fast.save_pretrained(str(output_dir))
    return fast
