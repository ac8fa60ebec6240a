"""Task specs: one YAML file per few-shot task, validated strictly, loaded into a frozen `TaskSpec`.

A spec (see the shipped ones in `task_specs/`):

    name: gsm8k                              # required, the task's name in outputs
    description: GSM8K test, 1319 problems   # required, one line
    source: {file: gsm8k/test.jsonl}         # required: a JSONL path under --data-dir, or
                                             #   {hf: <dataset id>, config: <name>, split: <split>} (config optional)
    question: "{question}"                   # required, question template (see task_rules)
    gt: {field: answer, rule: after_hashes}  # required; optional cot_field: a field copied as gt_cot
    query_template: "Question: {question}\\nAnswer:"   # required, exactly one {question}
    kind: number                             # required answer kind: number | latex | choice
    fewshot_file: gsm8k.md                   # optional, exemplar file under --fewshot-dir
    fewshot_from_train:                      # optional, exemplars made from the first n rows of a split:
      n: 8                                   #   query_template(question) + solution_template(cot, gt)
      source: {file: gsm8k/train.jsonl}
      solution_template: " {cot}\\nThe answer is {gt}."
    stop: ["</s>", "\\n\\nQuestion:", "\\n\\nProblem:"]   # optional (this is the default)
    max_new_tokens: 1024                     # optional (this is the default)
    copy_fields: [answer]                    # optional, row fields copied into each sample's outputs

Unknown keys, missing keys, wrong types and unknown rules/filters/kinds raise `TaskError` naming the
file and the key. Templates must be quoted in YAML: a bare `{question}` is a YAML mapping.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import yaml

from rho_jax.evaluation import task_rules

ANSWER_KINDS = ("number", "latex", "choice")
# The harness's stop strings for few-shot chain-of-thought prompts.
DEFAULT_STOP = ("</s>", "\n\nQuestion:", "\n\nProblem:")
DEFAULT_MAX_NEW_TOKENS = 1024
SHIPPED_DIR = "task_specs"


class TaskError(ValueError):
    """A task spec, data file or exemplar file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class DataSource:
    """Where rows come from: `file` (a JSONL path relative to --data-dir) or a Hugging Face dataset."""

    file: str | None = None
    hf: str | None = None
    config: str | None = None
    split: str | None = None

    def describe(self) -> str:
        if self.file is not None:
            return f"file {self.file}"
        return f"Hugging Face dataset {self.hf}" + (f" ({self.config})" if self.config else "") + f", split {self.split}"


@dataclass(frozen=True)
class GroundTruth:
    """How a row's ground truth is read: `rule` (see task_rules.GT_RULES) applied to `field`."""

    field: str
    rule: str
    cot_field: str | None = None


@dataclass(frozen=True)
class TrainExemplars:
    """Few-shot exemplars from the first `n` rows of `source`: query_template(question) + solution_template."""

    n: int
    source: DataSource
    solution_template: str


@dataclass(frozen=True)
class TaskSpec:
    """A few-shot task, as declared by its YAML file (`origin`)."""

    name: str
    description: str
    source: DataSource
    question: str
    gt: GroundTruth
    query_template: str
    kind: str
    fewshot_file: str | None = None
    fewshot_from_train: TrainExemplars | None = None
    stop: tuple[str, ...] = DEFAULT_STOP
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    copy_fields: tuple[str, ...] = ()
    origin: str = ""


def _shipped_files() -> dict[str, Any]:
    folder = resources.files("rho_jax.evaluation").joinpath(SHIPPED_DIR)
    return {entry.name[: -len(".yaml")]: entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def shipped_task_names() -> list[str]:
    """Names of the task specs shipped with rho_jax, sorted."""
    return sorted(_shipped_files())


def load_task(name_or_path: str) -> TaskSpec:
    """A shipped task by name, or the task spec in a user's YAML file."""
    shipped = _shipped_files()
    if name_or_path in shipped:
        return parse_task(shipped[name_or_path].read_text(encoding="utf-8"), str(shipped[name_or_path]))
    path = Path(name_or_path)
    if path.is_file():
        return parse_task(path.read_text(encoding="utf-8"), str(path))
    looks_like_path = path.suffix in (".yaml", ".yml") or "/" in name_or_path
    what = f"task file {name_or_path} does not exist" if looks_like_path else f"unknown task {name_or_path!r}"
    raise TaskError(f"{what}; shipped tasks: {', '.join(sorted(shipped))} (or give the path of a task YAML file)")


class _Reader:
    """Typed access to one YAML mapping, with errors that name the file and the key path."""

    def __init__(self, origin: str, mapping: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...]):
        self.origin, self.where = origin, where
        if not isinstance(mapping, dict):
            self.fail(where, f"must be a mapping of keys to values, got {type(mapping).__name__}")
        unknown = [key for key in mapping if key not in required + optional]
        if unknown:
            self.fail(self.key(str(unknown[0])), f"is not a known key; allowed here: {', '.join(required + optional)}")
        missing = [key for key in required if key not in mapping]
        if missing:
            self.fail(self.key(missing[0]), "is missing (required)")
        self.mapping = mapping

    def key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, message: str) -> NoReturn:
        raise TaskError(f"{self.origin}: " + (f"`{key}` " if key else "") + message)

    def has(self, key: str) -> bool:
        return key in self.mapping

    def text(self, key: str, *, template: bool = False) -> str:
        value = self.mapping[key]
        if not isinstance(value, str) or not value:
            hint = " (quote templates in YAML: a bare {x} is read as a mapping)" if template and isinstance(value, dict) else ""
            self.fail(self.key(key), f"must be a non-empty string, got {value!r}{hint}")
        return value

    def choice(self, key: str, allowed: tuple[str, ...] | list[str]) -> str:
        value = self.text(key)
        if value not in allowed:
            self.fail(self.key(key), f"is {value!r}; allowed: {', '.join(allowed)}")
        return value

    def positive_int(self, key: str) -> int:
        value = self.mapping[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            self.fail(self.key(key), f"must be a positive integer, got {value!r}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.mapping[key]
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            self.fail(self.key(key), f"must be a list of non-empty strings, got {value!r}")
        return tuple(value)

    def sub(self, key: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> _Reader:
        return _Reader(self.origin, self.mapping[key], self.key(key), required, optional)


def _source(reader: _Reader) -> DataSource:
    if reader.has("file") == reader.has("hf"):
        reader.fail(reader.where, "must name exactly one of `file` (a JSONL path under --data-dir) or `hf` (a dataset id)")
    if reader.has("file"):
        for key in ("config", "split"):
            if reader.has(key):
                reader.fail(reader.key(key), "only applies to an `hf` source")
        return DataSource(file=reader.text("file"))
    if not reader.has("split"):
        reader.fail(reader.key("split"), "is missing (required for an `hf` source)")
    return DataSource(hf=reader.text("hf"), config=reader.text("config") if reader.has("config") else None,
                      split=reader.text("split"))


def _query_template(reader: _Reader) -> str:
    template = reader.text("query_template", template=True)
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        reader.fail("query_template", f"is not a valid template ({err})")
    if names != ["question"]:
        reader.fail("query_template", f"must contain exactly one {{question}} slot and no other, found {names}")
    return template


def _solution_template(reader: _Reader) -> str:
    template = reader.text("solution_template", template=True)
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        reader.fail(reader.key("solution_template"), f"is not a valid template ({err})")
    if not set(names) <= {"cot", "gt"}:
        reader.fail(reader.key("solution_template"), f"may only use the slots {{cot}} and {{gt}}, found {names}")
    return template


def parse_task(text: str, origin: str) -> TaskSpec:
    """Validate and load the YAML text of a task spec read from `origin` (a path, for messages)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise TaskError(f"{origin}: not valid YAML ({err})") from None
    top = _Reader(origin, data, "", ("name", "description", "source", "question", "gt", "query_template", "kind"),
                  ("fewshot_file", "fewshot_from_train", "stop", "max_new_tokens", "copy_fields"))
    question = top.text("question", template=True)
    try:
        task_rules.parse_template(question)
    except ValueError as err:
        top.fail("question", f"template {question!r} {err}")
    gt_reader = top.sub("gt", ("field", "rule"), ("cot_field",))
    gt = GroundTruth(field=gt_reader.text("field"), rule=gt_reader.choice("rule", sorted(task_rules.GT_RULES)),
                     cot_field=gt_reader.text("cot_field") if gt_reader.has("cot_field") else None)
    if gt.cot_field is not None and gt.rule in task_rules.RULES_WITH_COT:
        gt_reader.fail(gt_reader.key("cot_field"), f"is not allowed with rule {gt.rule}, which takes gt_cot from `{gt.field}`")
    train = None
    if top.has("fewshot_from_train"):
        train_reader = top.sub("fewshot_from_train", ("n", "source", "solution_template"))
        train = TrainExemplars(n=train_reader.positive_int("n"),
                               source=_source(train_reader.sub("source", (), ("file", "hf", "config", "split"))),
                               solution_template=_solution_template(train_reader))
    return TaskSpec(
        name=top.text("name"),
        description=top.text("description"),
        source=_source(top.sub("source", (), ("file", "hf", "config", "split"))),
        question=question,
        gt=gt,
        query_template=_query_template(top),
        kind=top.choice("kind", ANSWER_KINDS),
        fewshot_file=top.text("fewshot_file") if top.has("fewshot_file") else None,
        fewshot_from_train=train,
        stop=top.strings("stop") if top.has("stop") else DEFAULT_STOP,
        max_new_tokens=top.positive_int("max_new_tokens") if top.has("max_new_tokens") else DEFAULT_MAX_NEW_TOKENS,
        copy_fields=top.strings("copy_fields") if top.has("copy_fields") else (),
        origin=origin,
    )
