"""Prompt templates: the text sent to the model for one chunk, how its output is parsed, and the
sampling settings the template was published with.

A template is a TOML file (the shipped ones live in `rho_jax/synthesis/templates/`, named by
their stem: `genstruct`, `ko-simple-qa`) with the keys
    prompt          the prompt text; `{text}` (required) is the chunk, `{title}` the document's title
    parser          how the output is read (`rho_jax.synthesis.parsing.PARSERS`)
    chat            true: the prompt is one user message wrapped in the tokenizer's chat template
    max_new_tokens, temperature, top_p, top_k   sampling defaults
    end_of_turn     tokens that end a completion besides the model's EOS, when the tokenizer has them
    markers         marker strings of the prompt format that must not be left in a parsed question
                    or answer (the parser's own markers, `parsing.MARKERS`, always count)
A user template may also be a plain text file (any other suffix): its whole content is the prompt,
the parser and `chat` come from the caller, sampling defaults are temperature 1.0, 256 new tokens.

Rendering: braces other than `{text}` and `{title}` are kept literally. A chat prompt is
`apply_chat_template([user message], add_generation_prompt=True)`, stripped, and encoded without
adding special tokens (the template writes them); a raw prompt is encoded with the tokenizer's
special tokens (BOS).
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from rho_jax.synthesis.parsing import MARKERS, PARSERS
from rho_jax.synthesis.validation import StrayMarkers

TEMPLATES_DIR = Path(__file__).parent / "templates"
_FIELDS = ("{text}", "{title}")
_KEYS = {"prompt", "parser", "chat", "max_new_tokens", "temperature", "top_p", "top_k", "end_of_turn", "markers"}


@dataclasses.dataclass(frozen=True)
class Template:
    name: str
    prompt: str
    parser: str
    chat: bool = False
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    end_of_turn: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if "{text}" not in self.prompt:
            raise ValueError(f"template {self.name!r} has no {{text}} field: the prompt must say where the chunk goes.")
        if self.parser not in PARSERS:
            raise ValueError(f"template {self.name!r}: parser must be one of {PARSERS}, got {self.parser!r}.")
        if not all(isinstance(m, str) and m.strip() for m in self.markers):
            raise ValueError(f"template {self.name!r}: markers must be non-blank strings, got {list(self.markers)}.")

    def text(self, chunk: str, title: str = "") -> str:
        """The prompt text for `chunk` of a document titled `title` (before any chat template)."""
        pieces = self.prompt.split("{text}")
        return chunk.join(piece.replace("{title}", title) for piece in pieces)

    def encode(self, tokenizer, chunk: str, title: str = "") -> list[int]:
        """The prompt's token ids (see the module docstring)."""
        text = self.text(chunk, title)
        if not self.chat:
            return tokenizer(text, add_special_tokens=True)["input_ids"]
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"template {self.name!r} is a chat prompt but the tokenizer has no chat template; "
                             "use a chat model's tokenizer (--tokenizer) or a raw template.")
        wrapped = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                add_generation_prompt=True)
        return tokenizer(wrapped.strip(), add_special_tokens=False)["input_ids"]

    def end_token_ids(self, tokenizer) -> list[int]:
        """Ids of the `end_of_turn` tokens the tokenizer has (unknown ones are left out)."""
        vocab = tokenizer.get_vocab()
        return [vocab[token] for token in self.end_of_turn if token in vocab]

    def stray_markers(self, tokenizer=None) -> StrayMarkers:
        """What a valid pair must not hold: this template's `markers` and its parser's, plus the
        special tokens of `tokenizer` (if given) as strings and as ids (`validation.StrayMarkers`)."""
        special = special_tokens(tokenizer) if tokenizer is not None else {}
        return StrayMarkers(strings=(*self.markers, *MARKERS[self.parser], *special),
                            token_ids=frozenset(special.values()))


def special_tokens(tokenizer) -> dict[str, int]:
    """The tokenizer's special tokens (BOS, EOS, pad, ... and every added token marked special, such
    as Llama-3's `<|start_header_id|>`) by text, with their ids."""
    found = dict(zip(tokenizer.all_special_tokens, tokenizer.all_special_ids, strict=True))
    found.update({token.content: index for index, token in tokenizer.added_tokens_decoder.items() if token.special})
    return found


def shipped_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.toml"))


def _from_toml(name: str, path: Path) -> Template:
    with open(path, "rb") as f:
        spec = tomllib.load(f)
    unknown = set(spec) - _KEYS
    if unknown:
        raise ValueError(f"template {path}: unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}.")
    for key in ("prompt", "parser"):
        if key not in spec:
            raise ValueError(f"template {path} lacks the key {key!r}.")
    return Template(name=name, **{**spec, "end_of_turn": tuple(spec.get("end_of_turn", ())),
                                  "markers": tuple(spec.get("markers", ()))})


def load_template(name_or_path: str, parser: str | None = None, chat: bool = False) -> Template:
    """A shipped template by name, a TOML template file, or a plain text prompt file read with
    `parser` (required then) and `chat` (see the module docstring)."""
    if name_or_path in shipped_templates():
        return _from_toml(name_or_path, TEMPLATES_DIR / f"{name_or_path}.toml")
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"no template {name_or_path!r}: give a shipped one ({', '.join(shipped_templates())}) "
                                "or a template file.")
    if path.suffix == ".toml":
        return _from_toml(path.stem, path)
    if parser is None:
        raise ValueError(f"the text template {path} needs a parser; choose one of {PARSERS}.")
    return Template(name=path.stem, prompt=path.read_text(encoding="utf-8"), parser=parser, chat=chat)
