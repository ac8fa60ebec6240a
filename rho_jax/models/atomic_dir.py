"""Directories that appear complete or not at all: write into a staging folder, then rename."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Written into every directory rho_jax saves; only such a directory may be replaced by a later save.
OUTPUT_MARKER = ".rho_jax_output"
# Files that belong to the tokenizer (and generation defaults) and travel with model weights.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)


def _staging_directory(destination: Path) -> Path:
    """A fresh staging folder beside `destination`, after checking that `destination` may be replaced.

    `destination` may be missing, empty, or an earlier rho_jax output (it holds `OUTPUT_MARKER`);
    anything else -- a downloaded HF model, a folder of results -- is refused, so a save never
    deletes files rho_jax did not write.
    """
    if destination.exists():
        if not destination.is_dir():
            raise FileExistsError(f"{destination} exists and is not a directory.")
        if any(destination.iterdir()) and not (destination / OUTPUT_MARKER).exists():
            raise FileExistsError(
                f"{destination} is a non-empty directory that rho_jax did not write; refusing to replace it. "
                "Choose a new or empty output directory."
            )
    destination.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{destination.name}.staging-", dir=destination.parent))


def _publish(staging: Path, destination: Path) -> None:
    """Move the finished `staging` folder to `destination`; an older one is removed only afterwards."""
    old = None
    if destination.exists():
        old = destination.with_name(f".{destination.name}.replaced-{staging.name}")
        destination.rename(old)
    staging.rename(destination)
    if old is not None:
        shutil.rmtree(old)


@contextlib.contextmanager
def atomic_directory(destination: str | Path) -> Iterator[Path]:
    """Yield a staging folder to fill; on success it becomes `destination`, on error it is deleted.

    An interrupted or failed write therefore never touches what was at `destination` before.
    """
    destination = Path(destination)
    staging = _staging_directory(destination)
    try:
        yield staging
        (staging / OUTPUT_MARKER).write_text("written by rho_jax; a later rho_jax save may replace this directory\n")
        _publish(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def copy_tokenizer_files(source: str | Path, destination: str | Path) -> list[str]:
    """Copy the tokenizer/generation files present in `source` to `destination`; returns their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(source) / name).exists():
            shutil.copy2(Path(source) / name, Path(destination) / name)
            copied.append(name)
    return copied
