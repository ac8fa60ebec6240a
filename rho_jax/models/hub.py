"""Models and tokenizers named by a Hugging Face Hub id (`owner/name` or `owner/name@revision`).

`resolve_local_dir` turns a config's path into a local directory: an existing directory is used
as it is (nothing touches the Hub); a path that is not one but reads as a Hub id is fetched with
`huggingface_hub.snapshot_download` into the Hugging Face cache (`HF_HUB_CACHE`, by default
`~/.cache/huggingface/hub`), or found there when offline (`HF_HUB_OFFLINE=1`). Only what rho_jax
reads is downloaded: config.json, the tokenizer and generation files and, for a model, the
safetensors weights (the shards the index lists, if there is one) -- never .bin/.pt/.h5/onnx/msgpack.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from pathlib import Path
from typing import Literal

from rho_jax.models.atomic_dir import TOKENIZER_FILES
from rho_jax.models.safetensors_io import INDEX_FILE, SINGLE_FILE

log = logging.getLogger("rho_jax.hub")

# Hub naming rules: owner and name of word characters, '-' and '.', each starting and ending with a
# word character, at most 96 characters, without '--' or '..'. Paths starting with '/', '.' or '~'
# and paths of more than two parts never match.
_PART = r"\w(?:[\w.-]{0,94}\w)?"
_HUB_ID = re.compile(rf"(?P<repo_id>{_PART}/{_PART})(?:@(?P<revision>\S+))?")
_METADATA_FILES = ("config.json", *TOKENIZER_FILES)


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """`(repo_id, revision)` of `owner/name[@revision]` (revision None: the default branch), or
    None if `text` does not read as a Hub model id."""
    match = _HUB_ID.fullmatch(text)
    if match is None or "--" in match["repo_id"] or ".." in match["repo_id"]:
        return None
    return match["repo_id"], match["revision"]


def hub_offline() -> bool:
    """Whether Hub downloads are off: `HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE` as set now, or
    huggingface_hub's own flag (read from the environment when it was imported)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return any((v or "").upper() in constants.ENV_VARS_TRUE_VALUES for v in flags) or constants.is_offline_mode()


def resolve_local_dir(path_or_id: str, what: str, kind: Literal["model", "tokenizer"] = "model") -> Path:
    """The local directory holding the model (`kind="model"`: config, tokenizer files, safetensors
    weights) or tokenizer (`kind="tokenizer"`: tokenizer files and config.json) `path_or_id` names.

    An existing directory, or any path that does not read as a Hub id (see `parse_hub_id`), is
    returned as a `Path` unchanged, without touching the Hub: the caller reports a missing
    directory as before. A Hub id resolves to its snapshot in the Hugging Face cache, downloading
    the missing files unless offline; within one process each (id, kind, cache, offline mode)
    resolves once, so the config, tokenizer and weights read later come from the same commit.

    Raises FileNotFoundError naming `what` and the id when it cannot be resolved: offline and not
    in the local cache, or the Hub refused it (no such repository or revision, gated, no network).
    """
    path = Path(path_or_id).expanduser()
    parsed = None if path.is_dir() else parse_hub_id(path_or_id)
    if parsed is None:
        return path
    from huggingface_hub import constants

    repo_id, revision = parsed
    offline = hub_offline()
    try:
        directory = _snapshot(repo_id, revision, kind, constants.HF_HUB_CACHE, offline)
    except FileNotFoundError as err:  # huggingface_hub's LocalEntryNotFoundError: nothing usable cached
        if offline:
            raise FileNotFoundError(
                f"{what}: {path_or_id!r} is not a local directory, and the Hugging Face Hub {kind} {repo_id}"
                f"{'@' + revision if revision else ''} is not in the local cache ({constants.HF_HUB_CACHE}); offline "
                "mode is on (HF_HUB_OFFLINE=1), so it cannot be downloaded. Download it once with network access "
                "(HF_HUB_OFFLINE unset), or give a local directory."
            ) from err
        raise FileNotFoundError(_fetch_failed(what, path_or_id, err)) from err
    except (OSError, ValueError) as err:  # HfHubHTTPError (not found, gated, server error), invalid revision
        raise FileNotFoundError(_fetch_failed(what, path_or_id, err)) from err
    return directory


def _fetch_failed(what: str, path_or_id: str, err: Exception) -> str:
    return (f"{what}: {path_or_id!r} is not a local directory, and fetching it from the Hugging Face Hub failed "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no details'}).")


@functools.cache
def _snapshot(repo_id: str, revision: str | None, kind: str, cache_dir: str, offline: bool) -> Path:
    """The cached snapshot directory of `repo_id` at `revision` with the files of `kind`.

    First config, tokenizer and generation files (and the safetensors index); then, for a model,
    the weights at the same commit: the shards the index lists, else the single safetensors file.
    """
    from huggingface_hub import snapshot_download

    fetch = functools.partial(snapshot_download, repo_id, cache_dir=cache_dir, local_files_only=offline)
    patterns = [*_METADATA_FILES, INDEX_FILE] if kind == "model" else list(_METADATA_FILES)
    directory = Path(fetch(revision=revision, allow_patterns=patterns))
    if kind == "model":
        index = directory / INDEX_FILE
        weights = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [SINGLE_FILE]
        directory = Path(fetch(revision=directory.name, allow_patterns=weights))  # directory.name: the commit
    log.info("Hugging Face Hub %s %s%s: %s", kind, repo_id, f"@{revision}" if revision else "", directory)
    return directory
