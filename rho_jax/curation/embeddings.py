"""Document embeddings from a causal LM: pooled final-norm hidden states, batched by length bucket over a mesh.

A document's tokens are the tokenizer's ids of its text with the tokenizer's own special tokens (a leading
BOS iff the tokenizer adds one), cut to the first `max_length`; n >= 1 is their count. With h[t] the
model's final-norm hidden state at token t (`Llama.hidden_states`, computed in the model's dtype, read as
float32: the vector the LM head multiplies by the output embedding matrix to predict token t+1):

    mean:  e = (1/n) * sum_{t=0}^{n-1} h[t]     the mean over the document's tokens (padding never counts)
    last:  e = h[n-1]                          phi-1's "output embedding"

phi-1 trains its quality classifier on "the output embedding" of a pretrained code model and says no more;
`last` reads it as the model's output at the document's final token: the only position of a causal model
whose context is the whole document, and the input of the prediction of what follows the document.

Batching: each document goes to the smallest bucket length >= n (`default_buckets`: powers of two from 32
below max_length, then max_length), is padded to it, and runs in batches of `batch_size` rows, so the model
compiles once per bucket. Padding tokens form their own segment (segment id 0, the document's tokens 1):
no document token attends to them and positions start at 0, so an embedding does not depend on its batch
or bucket. Rows are sharded over the mesh's batch axes (data, fsdp), parameters by the logical-axis rules.
A process embeds on the mesh of its own devices (`jax.local_devices()`): hosts scale as datatrove tasks,
each embedding its share of the files, with no collective between tasks.

In a datatrove pipeline, `EmbedDocuments` puts each embedding into `doc.metadata["embedding"]`;
`SaveEmbeddings` moves them into `NNNNN.embeddings.npy` beside the task's `NNNNN.jsonl.gz` shard
(row i = line i) with the `EmbeddingSpec` in `NNNNN.embeddings.json`; `read_embedded_shards` reads them back.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from rho_jax.analysis.models import model_source
from rho_jax.data.tokenizer import load_tokenizer, tokenizer_fingerprint
from rho_jax.jsonl import json_lines
from rho_jax.models import Llama, ModelOptions
from rho_jax.sharding import BATCH_AXES, MeshConfig, batch_sharding, make_mesh, param_shardings, replicated
from rho_jax.training.model_sources import load_model, tokenizer_dir

POOLINGS = ("mean", "last")
DEFAULT_MAX_LENGTH = 512
EMBEDDING_KEY = "embedding"
SHARD_SUFFIX = ".jsonl.gz"
EMBEDDINGS_SUFFIX = ".embeddings.npy"
SPEC_SUFFIX = ".embeddings.json"


@dataclasses.dataclass(frozen=True)
class EmbeddingSpec:
    """Everything that decides an embedding: the model and tokenizer (`model_fingerprint`, see
    `model_fingerprint`), `pooling`, the token budget `max_length` and the compute `dtype`; `dim` is its size."""

    model_fingerprint: str
    pooling: str
    max_length: int
    dtype: str
    dim: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> EmbeddingSpec:
        """The spec recorded in `data`; a ValueError naming `where` if a field is missing or mistyped."""
        fields = {"model_fingerprint": str, "pooling": str, "max_length": int, "dtype": str, "dim": int}
        if not isinstance(data, dict) or any(not isinstance(data.get(k), t) for k, t in fields.items()):
            raise ValueError(f"{where}: an embedding spec needs {', '.join(f'{k} ({t.__name__})' for k, t in fields.items())}; "
                             f"got {data!r:.300}.")
        return cls(**{k: data[k] for k in fields})


def default_buckets(max_length: int) -> tuple[int, ...]:
    """Padded lengths 32, 64, 128, ... below `max_length`, then `max_length` itself."""
    buckets, length = [], 32
    while length < max_length:
        buckets.append(length)
        length *= 2
    return (*buckets, max_length)


def model_fingerprint(params: nnx.State, config: Any, tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 (16 hex digits) of the model config, the tokenizer's fingerprint
    (`rho_jax.data.tokenizer.tokenizer_fingerprint`) and every parameter's path, dtype, shape and bytes."""
    digest = hashlib.sha256()
    digest.update(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str).encode())
    digest.update(tokenizer_fingerprint(tokenizer).encode())
    for path, variable in sorted(nnx.to_flat_state(params), key=lambda item: tuple(map(str, item[0]))):
        value = np.asarray(jax.device_get(variable[...]))
        digest.update(f"{'/'.join(map(str, path))}:{value.dtype}:{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()[:16]


def pool_hidden_states(hidden: jax.Array, lengths: jax.Array, pooling: str) -> jax.Array:
    """`[B, D]` float32 pooled embeddings of hidden states `[B, T, D]` whose first `lengths[b]` positions
    are row b's document (see the module docstring); rows of length 0 give zeros (mean) or h[0] (last)."""
    hidden = hidden.astype(jnp.float32)
    if pooling == "mean":
        valid = jnp.arange(hidden.shape[1])[None, :] < lengths[:, None]
        return jnp.sum(hidden * valid[..., None], axis=1) / jnp.maximum(lengths, 1)[:, None].astype(jnp.float32)
    last = jnp.maximum(lengths - 1, 0)
    return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]


class DocumentEmbedder:
    """Embeds texts with `model` (see the module docstring).

    mesh: where the model runs (default: every local device, `MeshConfig()` layout). pooling: one of
    `POOLINGS`. max_length: tokens per document at most (default: min(512, the model's
    max_position_embeddings)). batch_size: rows per batch, rounded up to a multiple of the mesh's batch
    shards. buckets: padded lengths (default `default_buckets(max_length)`); the largest must be >= max_length.
    The model computes in its own `options.dtype`, which the `spec` records.
    """

    def __init__(self, model: Llama, tokenizer: PreTrainedTokenizerBase, *, mesh: Mesh | None = None,
                 pooling: str = "mean", max_length: int | None = None, batch_size: int = 32,
                 buckets: Sequence[int] | None = None):
        cfg = model.config
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        max_length = max_length if max_length is not None else min(DEFAULT_MAX_LENGTH, cfg.max_position_embeddings)
        if not isinstance(max_length, int) or not 1 <= max_length <= cfg.max_position_embeddings:
            raise ValueError(f"max_length must be an integer in [1, {cfg.max_position_embeddings}] (the model's "
                             f"max_position_embeddings), got {max_length!r}.")
        buckets = tuple(sorted(set(buckets))) if buckets is not None else default_buckets(max_length)
        if not buckets or buckets[0] < 1 or buckets[-1] < max_length:
            raise ValueError(f"buckets must be positive lengths whose largest is >= max_length {max_length}, got {buckets}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        self.config = cfg
        self.tokenizer = tokenizer
        self.mesh = mesh if mesh is not None else make_mesh(MeshConfig(), devices=jax.local_devices())
        shards = math.prod(self.mesh.shape[axis] for axis in BATCH_AXES)
        self.batch_size = -(-batch_size // shards) * shards
        self.pooling = pooling
        self.max_length = max_length
        self.buckets = buckets
        self.dtype_name = jnp.dtype(model.options.dtype).name
        graphdef, params = nnx.split(model)
        self.params = jax.device_put(params, param_shardings(params, self.mesh))
        self._forward = jax.jit(functools.partial(_embed_batch, graphdef, pooling, self.mesh),
                                out_shardings=replicated(self.mesh))

    @functools.cached_property
    def spec(self) -> EmbeddingSpec:
        return EmbeddingSpec(model_fingerprint(self.params, self.config, self.tokenizer), self.pooling,
                             self.max_length, self.dtype_name, self.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray]:
        """(token ids of each text cut to max_length, each text's full token count); a ValueError naming
        the first text that has no tokens."""
        encoded = self.tokenizer(list(texts), add_special_tokens=True)["input_ids"] if len(texts) else []
        counts = np.array([len(ids) for ids in encoded], np.int64)
        if np.any(counts == 0):
            raise ValueError(f"text {int(np.argmin(counts))} of {len(texts)} has no tokens (an empty text): it has no "
                             "embedding; drop empty documents first.")
        return [np.asarray(ids[: self.max_length], np.int32) for ids in encoded], counts

    def embed_token_ids(self, token_ids: Sequence[np.ndarray], progress: bool = False) -> np.ndarray:
        """float32 `[len(token_ids), hidden]`: the embedding of each token sequence (1 <= length <= max_length)."""
        lengths = np.array([len(ids) for ids in token_ids], np.int32)
        if len(lengths) and (lengths.min() < 1 or lengths.max() > self.max_length):
            raise ValueError(f"token sequences must have 1..{self.max_length} tokens, got lengths "
                             f"{lengths.min()}..{lengths.max()}.")
        out = np.empty((len(lengths), self.config.hidden_size), np.float32)
        bucket_of = np.searchsorted(np.asarray(self.buckets), lengths)
        sharding = batch_sharding(self.mesh)
        with tqdm(total=len(lengths), disable=not progress, unit="doc", desc="embed") as bar:
            for bucket in np.unique(bucket_of):
                rows = np.flatnonzero(bucket_of == bucket)
                for start in range(0, len(rows), self.batch_size):
                    chunk = rows[start:start + self.batch_size]
                    ids = np.zeros((self.batch_size, self.buckets[bucket]), np.int32)
                    batch_lengths = np.zeros(self.batch_size, np.int32)
                    for row, index in enumerate(chunk):
                        ids[row, : lengths[index]] = token_ids[index]
                        batch_lengths[row] = lengths[index]
                    pooled = self._forward(self.params, jax.device_put(ids, sharding), jax.device_put(batch_lengths, sharding))
                    out[chunk] = np.asarray(pooled)[: len(chunk)]
                    bar.update(len(chunk))
        return out

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """float32 `[len(texts), hidden]`: the embedding of each text (see the module docstring)."""
        return self.embed_token_ids(self.tokenize(texts)[0], progress)


def _embed_batch(graphdef: nnx.GraphDef, pooling: str, mesh: Mesh, params: nnx.State, input_ids: jax.Array,
                 lengths: jax.Array) -> jax.Array:
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # lets the model pin activations' batch axis
        model = nnx.merge(graphdef, params)
        segment_ids = (jnp.arange(input_ids.shape[1])[None, :] < lengths[:, None]).astype(jnp.int32)
        hidden = model.hidden_states(input_ids, segment_ids)
    return pool_hidden_states(hidden, lengths, pooling)


def load_embedder(model_path: str | Path, *, tokenizer: str | None = None, pooling: str = "mean",
                  max_length: int | None = None, batch_size: int = 32, dtype: str = "float32",
                  mesh: Mesh | None = None, buckets: Sequence[int] | None = None) -> DocumentEmbedder:
    """A `DocumentEmbedder` for the model at `model_path` (an HF directory, a rho_jax training run, one of
    its checkpoints/<step>, or a rho_jax model directory) computing in `dtype`, with the tokenizer at
    `tokenizer` or else the one saved with the model (FileNotFoundError when there is none); the other
    arguments as `DocumentEmbedder`."""
    source = dataclasses.replace(model_source(model_path), options=ModelOptions(dtype=dtype))
    if tokenizer is None:
        found = tokenizer_dir(source)
        if found is None:
            raise FileNotFoundError(f"{model_path} carries no tokenizer files; pass a tokenizer directory (--tokenizer).")
        tokenizer = str(found)
    mesh = mesh if mesh is not None else make_mesh(MeshConfig(), devices=jax.local_devices())
    return DocumentEmbedder(load_model(source, mesh), load_tokenizer(tokenizer), mesh=mesh, pooling=pooling,
                            max_length=max_length, batch_size=batch_size, buckets=buckets)


@functools.lru_cache(maxsize=4)
def cached_embedder(model_path: str, tokenizer: str | None = None, pooling: str = "mean", max_length: int | None = None,
                    batch_size: int = 32, dtype: str = "float32") -> DocumentEmbedder:
    """`load_embedder` loaded once per process for the same arguments (pipeline steps share it)."""
    return load_embedder(model_path, tokenizer=tokenizer, pooling=pooling, max_length=max_length,
                         batch_size=batch_size, dtype=dtype)


def embed_texts(texts: Sequence[str], model: str | Path, *, tokenizer: str | None = None, pooling: str = "mean",
                max_length: int | None = None, batch_size: int = 32, dtype: str = "float32",
                progress: bool = False) -> np.ndarray:
    """float32 `[len(texts), hidden]` embeddings of `texts` by the model at `model` (loaded once per process;
    arguments as `load_embedder`)."""
    embedder = cached_embedder(str(model), tokenizer, pooling, max_length, batch_size, dtype)
    return embedder.embed(texts, progress)


@dataclasses.dataclass(frozen=True)
class ModelEmbedding:
    """A one-argument embedder, `embedding(texts) -> float32 [len(texts), hidden]` = `embed_texts(texts, model,
    ...)` (e.g. for the near-duplicate stage of decontamination); picklable, it loads the model once per process."""

    model: str
    tokenizer: str | None = None
    pooling: str = "mean"
    max_length: int | None = None
    batch_size: int = 32
    dtype: str = "float32"

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return embed_texts(texts, self.model, tokenizer=self.tokenizer, pooling=self.pooling, max_length=self.max_length,
                           batch_size=self.batch_size, dtype=self.dtype)


class EmbedDocuments(PipelineStep):
    """datatrove step: sets `doc.metadata["embedding"]` (float32 array `[hidden]`) of every document.

    Arguments as `load_embedder`; `window` documents are tokenized and bucketed together. Stats:
    `embedded`, and `truncated` for documents longer than max_length tokens.
    """

    name = "🧮 Embed"
    type = "🔢 - EMBEDDING"

    def __init__(self, model: str | Path, *, tokenizer: str | None = None, pooling: str = "mean",
                 max_length: int | None = None, batch_size: int = 32, dtype: str = "float32", window: int = 1024):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive integer, got {window!r}.")
        self.model = str(model)
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        self.batch_size = batch_size
        self.dtype = dtype
        self.window = window

    def embedder(self) -> DocumentEmbedder:
        return cached_embedder(self.model, self.tokenizer, self.pooling, self.max_length, self.batch_size, self.dtype)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        embedder = self.embedder()
        for chunk in batched(data or (), self.window):
            with self.track_time(unit="batch"):
                token_ids, counts = embedder.tokenize([doc.text for doc in chunk])
                vectors = embedder.embed_token_ids(token_ids)
            for doc, count, vector in zip(chunk, counts, vectors):
                self.stat_update("embedded")
                if count > embedder.max_length:
                    self.stat_update("truncated")
                doc.metadata[EMBEDDING_KEY] = vector
                yield doc


class SaveEmbeddings(PipelineStep):
    """datatrove step: moves each document's `metadata["embedding"]` into `NNNNN.embeddings.npy` (float32
    `[documents, hidden]`) in `output_folder`, NNNNN the task's rank, and `source`'s `EmbeddingSpec` into
    `NNNNN.embeddings.json`. Row i is the i-th document passed on, i.e. line i of the `NNNNN.jsonl.gz`
    that a JsonlWriter placed right after this step writes (`embedded_shard_writer`)."""

    name = "💾 Save embeddings"
    type = "🔢 - EMBEDDING"

    def __init__(self, output_folder: DataFolderLike, source: EmbedDocuments):
        super().__init__()
        self.output_folder = get_datafolder(output_folder)
        self.source = source

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        rows = []
        for doc in data or ():
            if EMBEDDING_KEY not in doc.metadata:
                raise ValueError(f"document {doc.id} has no metadata['{EMBEDDING_KEY}']: put EmbedDocuments before "
                                 "SaveEmbeddings.")
            rows.append(doc.metadata.pop(EMBEDDING_KEY))
            yield doc
        if rows:
            spec = self.source.embedder().spec
            buffer = io.BytesIO()
            np.save(buffer, np.stack(rows).astype(np.float32))
            with self.output_folder.open(f"{rank:05d}{EMBEDDINGS_SUFFIX}", "wb") as f:
                f.write(buffer.getvalue())
            with self.output_folder.open(f"{rank:05d}{SPEC_SUFFIX}", "w") as f:
                json.dump({**spec.to_dict(), "model": self.source.model, "rows": len(rows)}, f, indent=1)


@dataclasses.dataclass
class EmbeddedShards:
    """Documents and their embeddings read back from an embedded folder, in shard then line order.

    records: each document's JSON object as the writer wrote it (id, text, metadata).
    where: `shard:line` of each document (1-based lines), for error messages.
    """

    records: list[dict[str, Any]]
    embeddings: np.ndarray
    spec: EmbeddingSpec
    where: list[str]


def read_embedded_shards(folder: str | Path) -> EmbeddedShards:
    """Every `NNNNN.jsonl.gz` shard of `folder` with its `NNNNN.embeddings.npy` rows; a ValueError when a
    shard has no embeddings, their row count differs from its lines, or the shards' specs differ."""
    folder = Path(folder)
    shards = sorted(folder.glob(f"*{SHARD_SUFFIX}"))
    if not shards:
        raise FileNotFoundError(f"{folder} holds no *{SHARD_SUFFIX} shards; run `quality embed` to write them.")
    records, where, matrices, spec = [], [], [], None
    for shard in shards:
        stem = shard.name[: -len(SHARD_SUFFIX)]
        matrix_path, spec_path = folder / f"{stem}{EMBEDDINGS_SUFFIX}", folder / f"{stem}{SPEC_SUFFIX}"
        if not matrix_path.is_file() or not spec_path.is_file():
            raise ValueError(f"{shard} has no {matrix_path.name} / {spec_path.name} beside it: it was not written by "
                             "`quality embed` (or that task did not finish).")
        lines = list(json_lines(shard))
        matrix = np.load(matrix_path, allow_pickle=False)
        if matrix.ndim != 2 or len(matrix) != len(lines):
            raise ValueError(f"{matrix_path} has shape {matrix.shape} but {shard} holds {len(lines)} documents.")
        shard_spec = EmbeddingSpec.from_dict(json.loads(spec_path.read_text()), str(spec_path))
        if spec is not None and shard_spec != spec:
            raise ValueError(f"{spec_path} records embeddings {shard_spec} but earlier shards {spec}: the folder mixes "
                             "embeddings of different models or settings.")
        spec = shard_spec
        records += lines
        where += [f"{shard}:{number}" for number in range(1, len(lines) + 1)]
        matrices.append(matrix.astype(np.float32))
    return EmbeddedShards(records, np.concatenate(matrices), spec, where)
