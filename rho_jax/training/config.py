"""The run configuration: one YAML file (plus `key.sub=value` overrides) describes a whole run.

Sections (each a frozen dataclass, checked strictly by `rho_jax.training.schema.build`):
    output_dir   where checkpoints, metrics, the resolved config and the tokenizer go
    model        the trained model: from scratch (a model config file), a local HF directory or a
                 Hugging Face Hub id (owner/name[@revision]), or a rho_jax checkpoint (a training
                 run directory, one of its checkpoints, or a model directory from
                 `python -m rho_jax.convert to-orbax`); `model.lora` trains LoRA adapters on it
    reference    the frozen reference model (hf or checkpoint), `precomputed` (its scores stored
                 beside the prepared rows by `python -m rho_jax.score`), or null for plain CLM
    slm          ratio, score function, selection scope (default: paper settings with a
                 reference, ratio 1.0 = CLM without)
    data         tokenizer, sources with mixture weights, sequence length (`rho_jax.data`)
    optimizer    AdamW + schedule (`rho_jax.optimizer`); its length comes from `train`
    mesh         data / fsdp / tensor axis sizes
    train        global batch (sequences or tokens), run length (tokens or steps), accumulation, seed
    checkpoint   save interval in tokens, retention, async saving
    logging      log-line interval, progress bar, TensorBoard, Weights & Biases
    eval         held-out sets and how often to evaluate them
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path
from typing import Any

import yaml

from rho_jax.data.config import DataConfig, SourceConfig
from rho_jax.models.llama import ModelOptions
from rho_jax.models.lora import ALL_LINEAR, projection_names
from rho_jax.optimizer import OptimizerConfig
from rho_jax.sharding import MeshConfig
from rho_jax.slm import SLMConfig, check_reference
from rho_jax.training.schema import ConfigError, build, to_data

MODEL_INITS = ("scratch", "hf", "checkpoint", "precomputed")
LORA_DEFAULTS = {"r": 8, "alpha": 8.0, "target_modules": ("q_proj", "v_proj"), "rslora": False, "dropout": 0.0}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA training: the model's weights stay frozen, adapters `scale * (x @ A) @ B` on the named
    projections are trained (`rho_jax.models.lora`; scale = alpha / r, alpha / sqrt(r) with rslora).

    r, alpha, target_modules, rslora: the adapter of a new run (unset: `LORA_DEFAULTS`, PEFT's).
      target_modules: projection names (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`,
      `up_proj`, `down_proj`, or with their block: `self_attn.q_proj`), or `all-linear`.
    init: an adapter to train further instead of a new one: a PEFT adapter directory, a rho_jax
      adapter directory, or a LoRA training run (its newest checkpoint); it fixes r, alpha,
      target_modules and rslora (leave them unset).
    dropout: PEFT's lora_dropout on the adapters' input during training (unset: 0, or the init
      adapter's).
    """

    r: int | None = None
    alpha: float | None = None
    target_modules: tuple[str, ...] | None = None
    rslora: bool | None = None
    dropout: float | None = None
    init: str | None = None

    def __post_init__(self) -> None:
        if self.init is not None:
            fixed = [name for name in ("r", "alpha", "target_modules", "rslora") if getattr(self, name) is not None]
            if fixed:
                raise ValueError(f"init: the adapter at {self.init} fixes {', '.join(fixed)}; remove "
                                 f"{'them' if len(fixed) > 1 else 'it'} (only dropout may be set with init).")
        if self.r is not None and self.r < 1:
            raise ValueError(f"r must be >= 1, got {self.r}.")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}.")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.target_modules is not None:
            if not self.target_modules:
                raise ValueError("target_modules is empty; name at least one projection.")
            available = projection_names()
            unknown = [m for m in self.target_modules if m != ALL_LINEAR and m not in available]
            if unknown:
                raise ValueError(f"target_modules {unknown} match no projection of a Llama/Mistral layer; "
                                 f"available: {', '.join(available)} or {ALL_LINEAR}.")

    def resolved(self, name: str) -> Any:
        """Field `name` with its default filled in (`LORA_DEFAULTS`)."""
        value = getattr(self, name)
        return LORA_DEFAULTS[name] if value is None else value


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a model comes from.

    init: `scratch` (random init from `config`, a model YAML/JSON with HF field names), `hf` (a
      local HF directory at `path`, or a Hugging Face Hub id `owner/name[@revision]` when no such
      directory exists: its config, tokenizer and safetensors weights are downloaded into the HF
      cache, or found there with HF_HUB_OFFLINE=1), or `checkpoint` (`path` is a rho_jax training
      run directory (latest checkpoint), one of its `checkpoints/<step>` directories, or a rho_jax
      model directory),
      or, for a reference only, `precomputed`: no model; every data source carries the `scores` that
      `python -m rho_jax.score` computed with the reference.
    options: how the model computes (dtypes, scan, remat, attention); see `ModelOptions`. With
      `lora`, `options.param_dtype` is the storage dtype of the frozen base (e.g. bfloat16); the
      adapters and their optimizer state are float32.
    lora: train LoRA adapters on this (frozen) model instead of the model itself (`LoraConfig`).
    """

    init: str = "scratch"
    path: str | None = None
    config: str | None = None
    options: ModelOptions = ModelOptions()
    lora: LoraConfig | None = None

    def __post_init__(self) -> None:
        if self.init not in MODEL_INITS:
            raise ValueError(f"init must be one of {MODEL_INITS}, got {self.init!r}.")
        if self.init == "precomputed":
            if self.path is not None or self.config is not None:
                raise ValueError("init: precomputed takes no path or config; the scores are set per data source "
                                 "(data.sources[i].scores).")
        elif self.init == "scratch":
            if self.config is None:
                raise ValueError("init: scratch needs `config` (a model config file, e.g. configs/models/tiny-cpu.yaml).")
            if self.path is not None:
                raise ValueError("init: scratch takes `config`, not `path` (use init: hf or checkpoint to load weights).")
        else:
            if self.path is None:
                raise ValueError(f"init: {self.init} needs `path`.")
            if self.config is not None:
                raise ValueError(f"init: {self.init} reads the model config from `path`; remove `config`.")


def _check_positive(obj: Any, *names: str) -> None:
    """Each named field of `obj` is null or a positive integer."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value}.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Global batch: `batch_size` sequences or `batch_tokens` tokens (a multiple of data.seq_len);
    length: `total_tokens` or `total_steps` (exactly one of each pair)."""

    batch_size: int | None = None
    batch_tokens: int | None = None
    total_tokens: int | None = None
    total_steps: int | None = None
    accumulation_steps: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for first, second in (("batch_size", "batch_tokens"), ("total_tokens", "total_steps")):
            if (getattr(self, first) is None) == (getattr(self, second) is None):
                raise ValueError(f"set exactly one of {first} and {second}.")
        _check_positive(self, "batch_size", "batch_tokens", "total_tokens", "total_steps", "accumulation_steps")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Save every `every_tokens` tokens, at the end and on SIGTERM; keep the newest `keep_last`
    plus (optionally) every `keep_every`-th saved checkpoint for good."""

    every_tokens: int = 1_000_000_000
    keep_last: int = 3
    keep_every: int | None = None
    async_save: bool = True

    def __post_init__(self) -> None:
        if self.every_tokens <= 0:
            raise ValueError(f"every_tokens must be > 0, got {self.every_tokens}.")
        if self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {self.keep_last}.")
        if self.keep_every is not None and self.keep_every < 1:
            raise ValueError(f"keep_every must be >= 1 or null, got {self.keep_every}.")


WANDB_MODES = ("online", "offline", "disabled")


@dataclasses.dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases logging of a run (process 0): every step record and held-out loss.

    project: the W&B project; name: the run's display name (null: W&B picks one); entity: the W&B
    user or team (null: the default one); tags: labels of the run; mode: `online` (sync while
    training), `offline` (write into `<output_dir>/wandb`, upload later with `wandb sync`) or
    `disabled`. Needs the optional `wandb` package (`pip install 'rho-jax[wandb]'`), checked here so
    a run without it fails before it starts.
    """

    project: str
    name: str | None = None
    mode: str = "online"
    entity: str | None = None
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.project:
            raise ValueError("project must be a non-empty W&B project name.")
        if self.mode not in WANDB_MODES:
            raise ValueError(f"mode must be one of {WANDB_MODES}, got {self.mode!r}.")
        if importlib.util.find_spec("wandb") is None:
            raise ValueError("logging.wandb needs the wandb package, which is not installed: "
                             "pip install 'rho-jax[wandb]' (or set logging.wandb: null).")


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """A log line every `every_steps` steps (metrics.jsonl gets every step); progress bar; TensorBoard;
    Weights & Biases (`wandb`, null: off)."""

    every_steps: int = 10
    progress_bar: bool = True
    tensorboard: bool = True
    wandb: WandbConfig | None = None

    def __post_init__(self) -> None:
        if self.every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {self.every_steps}.")


@dataclasses.dataclass(frozen=True)
class EvalTaskConfig:
    """A few-shot task scored during training (as `python -m rho_jax.evaluate run` does): its first
    `limit` samples (null: all), greedy, up to `max_new_tokens` (null: the task's own, 1024 for the
    shipped math tasks)."""

    limit: int | None = 200
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        _check_positive(self, "limit", "max_new_tokens")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What is evaluated every `every_tokens` tokens (null: only at the start and the end).

    sets: held-out sets (name -> source), the mean loss over valid targets of at most `max_rows`
      packed rows, `batch_size` rows at a time (null: the training batch size).
    tasks: few-shot tasks (shipped task name or task YAML file -> EvalTaskConfig), accuracy of the
      model's greedy answers; their test files are read from `task_data_dir` and their exemplar
      files from `fewshot_dir`, as `evaluate run --data-dir/--fewshot-dir` do; `generation_batch_size`
      prompts are generated at a time.
    """

    sets: dict[str, SourceConfig] = dataclasses.field(default_factory=dict)
    every_tokens: int | None = None
    max_rows: int | None = 512
    batch_size: int | None = None
    tasks: dict[str, EvalTaskConfig] = dataclasses.field(default_factory=dict)
    task_data_dir: str | None = None
    fewshot_dir: str | None = None
    generation_batch_size: int = 16

    def __post_init__(self) -> None:
        _check_positive(self, "every_tokens", "max_rows", "batch_size", "generation_batch_size")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    output_dir: str
    model: ModelSource
    data: DataConfig
    train: TrainConfig
    reference: ModelSource | None = None
    slm: SLMConfig | None = None  # null: SLMConfig() with a reference, ratio 1.0 (CLM) without
    optimizer: OptimizerConfig = OptimizerConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    eval: EvalConfig = EvalConfig()

    def __post_init__(self) -> None:
        if self.slm is None:
            object.__setattr__(self, "slm", SLMConfig() if self.reference is not None else SLMConfig(ratio=1.0))
        if self.reference is not None and self.reference.init == "scratch":
            raise ConfigError("reference.init: a reference model must be trained; use init: hf or checkpoint.")
        if self.reference is not None and self.reference.lora is not None:
            raise ConfigError("reference.lora: the reference is never trained; to use a model with a trained adapter as "
                              "the reference, point reference (init: checkpoint) at the LoRA run, or merge the adapter "
                              "(python -m rho_jax.convert merge) and use init: hf.")
        if self.model.init == "precomputed":
            raise ConfigError("model.init: precomputed is for the reference only (its stored scores); the trained "
                              "model needs scratch, hf or checkpoint.")
        precomputed = self.precomputed_reference
        unscored = [s.name for s in self.data.sources if s.scores is None]
        if precomputed and unscored:
            raise ConfigError(
                f"reference.init: precomputed needs scores for every data source; {unscored} have none. Run "
                "python -m rho_jax.score on their prepared rows and set data.sources[i].scores."
            )
        if not precomputed and len(unscored) < len(self.data.sources):
            raise ConfigError(
                "data sources carry precomputed scores, but the reference is "
                + ("absent" if self.reference is None else f"computed online (init: {self.reference.init})")
                + ": set reference: {init: precomputed} to train on the scores, or remove the sources' scores."
            )
        check_reference(self.slm, self.reference is not None)
        if self.train.batch_tokens is not None and self.train.batch_tokens % self.data.seq_len:
            raise ConfigError(
                f"train.batch_tokens ({self.train.batch_tokens}) must be a multiple of data.seq_len ({self.data.seq_len})."
            )
        if self.batch_size % self.train.accumulation_steps:
            raise ConfigError(
                f"the batch of {self.batch_size} sequences is not divisible by "
                f"train.accumulation_steps={self.train.accumulation_steps}."
            )
        if self.optimizer.total_steps is not None and self.optimizer.total_steps != self.total_steps:
            raise ConfigError(
                f"optimizer.total_steps ({self.optimizer.total_steps}) disagrees with the run length "
                f"({self.total_steps} steps from train); leave it unset, it follows train.total_tokens/total_steps."
            )
        if self.optimizer.warmup_steps > self.total_steps:
            raise ConfigError(
                f"optimizer.warmup_steps ({self.optimizer.warmup_steps}) exceeds the run's {self.total_steps} steps."
            )

    @property
    def precomputed_reference(self) -> bool:
        """True when the reference's scores are read with the data instead of computed by a model."""
        return self.reference is not None and self.reference.init == "precomputed"

    @property
    def online_reference(self) -> ModelSource | None:
        """The reference model to run in the train step (None: no reference, or precomputed scores)."""
        return None if self.reference is None or self.precomputed_reference else self.reference

    @property
    def batch_size(self) -> int:
        """Sequences per global batch."""
        return self.train.batch_size or self.train.batch_tokens // self.data.seq_len

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.data.seq_len

    @property
    def total_steps(self) -> int:
        if self.train.total_steps is not None:
            return self.train.total_steps
        return math.ceil(self.train.total_tokens / self.tokens_per_step)

    def optimizer_config(self) -> OptimizerConfig:
        """The optimizer settings with the schedule length set to the run length."""
        return dataclasses.replace(self.optimizer, total_steps=self.total_steps)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain YAML-safe data (what config.yaml holds)."""
        return to_data(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.0.c=value' -> (['a', 'b', '0', 'c'], value parsed as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form key.sub=value.")
    return key.split("."), yaml.safe_load(value) if value else None


def apply_override(data: dict, path: list[str], value: Any) -> None:
    """Set `data[path]`, creating mappings on the way; numeric parts index into lists."""
    node: Any = data
    for depth, part in enumerate(path[:-1]):
        where = ".".join(path[: depth + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, where)]
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {'.'.join(path)}: {where} is {node!r}, not a mapping or list.")
    last = path[-1]
    if isinstance(node, list):
        node[_list_index(node, last, ".".join(path))] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {where}: {part!r} is not an index of a list of {len(node)} items.")
    return int(part)


def load_config(path: str | Path, overrides: list[str] = (), cls: type = RunConfig) -> Any:
    """Read a YAML config (a run's `RunConfig` unless `cls` says otherwise), apply `key.sub=value`
    overrides, and validate everything."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections, got {type(data).__name__}.")
    for text in overrides:
        apply_override(data, *parse_override(text))
    return build(cls, data, "config")


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config dicts, as 'key: old -> new'."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b, where = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(config_differences(a, b, where + "."))
        elif a != b:
            out.append(f"{where}: {a!r} -> {b!r}")
    return out
