"""Model architecture config that maps one-to-one to Hugging Face `LlamaConfig` / `MistralConfig`.

Field names and meanings are those of `transformers` 5 (`rope_parameters` holds `rope_theta`
and the scaling variant). `ModelConfig.from_hf_dict` also accepts the older layout with
top-level `rope_theta` / `rope_scaling` that most checkpoints on disk still use.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

# model_type -> the HF architecture class that `save_hf` writes and `load_hf` accepts.
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
}
CONFIG_FILE = "config.json"
# Defaults of HF `MistralConfig` that differ from `LlamaConfig` (whose defaults are ModelConfig's):
# a Mistral config.json that omits a field means these values, as in transformers.
_MISTRAL_DEFAULTS: dict[str, Any] = {
    "intermediate_size": 14336,
    "num_key_value_heads": 8,
    "max_position_embeddings": 4096 * 32,
    "sliding_window": 4096,
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_ROPE_KEYS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def supported_architectures_text() -> str:
    return ", ".join(f"{arch} (model_type '{mt}')" for mt, arch in SUPPORTED_ARCHITECTURES.items())


def _is_int(value: Any) -> bool:
    """Whether `value` is an integer (a JSON/YAML `true` is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """Whether `value` is an integer or a float (a JSON/YAML `true` is not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class RopeParameters:
    """HF `rope_parameters`: base `rope_theta` plus an optional frequency-scaling variant.

    - `default`: inv_freq[i] = rope_theta ** (-2i / head_dim)
    - `linear`: inv_freq / factor
    - `llama3`: Llama 3.1 band-wise scaling (low frequencies / factor, high ones unchanged,
      smooth interpolation between wavelengths original_max_position_embeddings / {low,high}_freq_factor)
    """

    rope_type: str = "default"
    rope_theta: float = 10000.0
    factor: float | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None

    def __post_init__(self) -> None:
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"Unsupported rope_type {self.rope_type!r}; rho_jax supports {list(SUPPORTED_ROPE_TYPES)}."
            )
        if not _is_number(self.rope_theta) or self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be a number > 0, got {self.rope_theta!r}.")
        required = _ROPE_KEYS_BY_TYPE[self.rope_type]
        missing = [k for k in required if getattr(self, k) is None]
        if missing:
            raise ValueError(f"rope_type {self.rope_type!r} needs rope_parameters {missing}.")
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value <= 0):
                raise ValueError(f"rope_parameters.{name} must be a number > 0, got {value!r}.")
        original = self.original_max_position_embeddings
        if original is not None and (not _is_int(original) or original <= 0):
            raise ValueError(f"rope_parameters.original_max_position_embeddings must be a positive integer, got {original!r}.")

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> RopeParameters:
        """From an HF `rope_parameters` (or legacy `rope_scaling`) mapping; a `ValueError` if it is not one."""
        if not isinstance(params, dict):
            raise ValueError(f"rope_parameters must be a mapping, got {params!r}.")
        params = dict(params)
        if "type" in params:  # legacy spelling of rope_type
            params.setdefault("rope_type", params.pop("type"))
        rope_type = params.get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            cls(rope_type=rope_type)  # raises the unsupported-type error
        allowed = {"rope_type", "rope_theta", *_ROPE_KEYS_BY_TYPE[rope_type]}
        # Fields of other variants that HF tooling sometimes leaves behind are harmless only if unset.
        unknown = sorted(k for k, v in params.items() if k not in allowed and v is not None)
        if unknown:
            raise ValueError(
                f"rope_parameters keys {unknown} are not used by rope_type {rope_type!r} "
                f"(allowed: {sorted(allowed)})."
            )
        return cls(**{k: v for k, v in params.items() if k in allowed})

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Llama 1/2/3 or Mistral decoder; each field is the HF config field of the same name."""

    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None -> num_attention_heads (MHA)
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    rope_parameters: RopeParameters = RopeParameters()
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    sliding_window: int | None = None  # Mistral: a query sees at most this many most recent keys (itself included)
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        """Fill in the derived defaults and raise a `ValueError` naming the first field of a wrong type or value."""
        if not isinstance(self.rope_parameters, RopeParameters):
            object.__setattr__(self, "rope_parameters", RopeParameters.from_dict(self.rope_parameters))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None and all(_is_int(v) and v > 0 for v in (self.hidden_size, self.num_attention_heads)):
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.model_type, str) or self.model_type not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"Unsupported model_type {self.model_type!r}; rho_jax supports {supported_architectures_text()}."
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        for name in ("tie_word_embeddings", "attention_bias", "mlp_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        for name in ("initializer_range", "rms_norm_eps", "attention_dropout"):
            if not _is_number(getattr(self, name)):
                raise ValueError(f"{name} must be a number, got {getattr(self, name)!r}.")
        for name in ("bos_token_id", "pad_token_id"):
            if getattr(self, name) is not None and not _is_int(getattr(self, name)):
                raise ValueError(f"{name} must be an integer or null, got {getattr(self, name)!r}.")
        eos = self.eos_token_id
        if eos is not None and not (_is_int(eos) or isinstance(eos, tuple) and all(_is_int(i) for i in eos)):
            raise ValueError(f"eos_token_id must be an integer, a list of integers or null, got {eos!r}.")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_key_value_heads ({self.num_key_value_heads}) must divide "
                f"num_attention_heads ({self.num_attention_heads})."
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}.")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; Llama/Mistral use 'silu'.")
        if self.attention_dropout != 0.0:
            raise ValueError(f"attention_dropout must be 0.0 (not implemented), got {self.attention_dropout}.")
        if self.rms_norm_eps <= 0:
            raise ValueError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps}.")
        if self.model_type != "llama" and (self.attention_bias or self.mlp_bias):
            raise ValueError(
                f"attention_bias/mlp_bias are LlamaConfig fields; {self.architecture} has no biases."
            )
        if self.sliding_window is not None:
            if self.model_type != "mistral":
                raise ValueError("sliding_window is a Mistral field; set model_type: mistral or sliding_window: null.")
            if not _is_int(self.sliding_window) or self.sliding_window <= 0:
                raise ValueError(f"sliding_window must be a positive integer or null, got {self.sliding_window!r}.")

    @property
    def architecture(self) -> str:
        return SUPPORTED_ARCHITECTURES[self.model_type]

    def num_parameters(self) -> int:
        """Exact parameter count (embeddings included, tied output counted once)."""
        d, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        attention = d * q * 2 + d * kv * 2 + (q + 2 * kv + d if self.attention_bias else 0)
        mlp = 3 * d * self.intermediate_size + (2 * self.intermediate_size + d if self.mlp_bias else 0)
        per_layer = attention + mlp + 2 * d
        embeddings = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * per_layer + embeddings + d

    # ---- HF <-> rho_jax -------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> ModelConfig:
        """Build from an HF `config.json` dict (transformers 4 or 5 layout); unrelated HF keys are ignored.

        Fields it omits take transformers' defaults; a missing or unsupported model_type, or a field
        of the wrong type or value, raises a `ValueError` naming the field.
        """
        model_type = hf.get("model_type")
        architectures = hf.get("architectures") or []
        if model_type is None:
            raise ValueError(f"model_type is missing; rho_jax supports {supported_architectures_text()}.")
        if not isinstance(architectures, list):
            raise ValueError(f"architectures must be a list of class names, got {architectures!r}.")
        if not isinstance(model_type, str) or model_type not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"Unsupported architecture: model_type={model_type!r}, architectures={architectures}. "
                f"rho_jax supports {supported_architectures_text()}."
            )
        wrong = [a for a in architectures if a != SUPPORTED_ARCHITECTURES[model_type]]
        if wrong:
            raise ValueError(
                f"Unsupported architecture {wrong} for model_type {model_type!r}; "
                f"rho_jax supports {supported_architectures_text()}."
            )
        for key in ("rope_scaling", "rope_parameters"):
            if hf.get(key) is not None and not isinstance(hf[key], dict):
                raise ValueError(f"{key} must be a mapping, got {hf[key]!r}.")
        # transformers gives a legacy `rope_scaling` precedence over `rope_parameters`.
        rope = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
        theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta") or 10000.0
        rope.setdefault("rope_theta", theta)
        fields = {f.name for f in dataclasses.fields(cls)} - {"rope_parameters"}
        kwargs = {k: v for k, v in hf.items() if k in fields}
        if model_type == "mistral":
            kwargs = {**_MISTRAL_DEFAULTS, **kwargs}
        else:
            kwargs.pop("sliding_window", None)  # LlamaConfig has no sliding window; transformers ignores it
        if rope.get("rope_type", rope.get("type")) == "llama3":
            default_max = cls.max_position_embeddings
            rope.setdefault("original_max_position_embeddings", kwargs.get("max_position_embeddings", default_max))
        return cls(**kwargs, rope_parameters=RopeParameters.from_dict(rope))

    def to_hf_dict(self, dtype: str = "float32") -> dict[str, Any]:
        """The `config.json` contents that `transformers.AutoConfig` reads back into the same model."""
        out = dataclasses.asdict(self)
        out["rope_parameters"] = self.rope_parameters.to_dict()
        if isinstance(self.eos_token_id, tuple):
            out["eos_token_id"] = list(self.eos_token_id)
        if self.model_type == "llama":
            del out["sliding_window"]
        else:  # MistralConfig has no bias fields
            del out["attention_bias"], out["mlp_bias"]
        out["architectures"] = [self.architecture]
        out["dtype"] = dtype
        return out

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        """Read an HF `config.json` or a rho_jax model YAML (same field names).

        A file that does not parse, is not a mapping, or has a field of the wrong type or value
        raises a `ValueError` whose message starts with `path` (and names the field where one is at fault).
        """
        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(path.read_text())
            except (yaml.YAMLError, UnicodeDecodeError) as err:
                raise ValueError(f"{path}: not valid YAML: {err}") from err
        else:
            try:
                data = json.loads(path.read_text())
            except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
                raise ValueError(f"{path}: not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of config fields, got {type(data).__name__}.")
        try:
            return cls.from_hf_dict(data)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from err
