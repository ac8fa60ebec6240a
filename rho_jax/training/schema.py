"""Strict construction of nested frozen dataclasses from plain YAML data.

`build(cls, data, "name")` checks every key against the dataclass fields (unknown keys fail with
the list of allowed ones and a did-you-mean hint), every value against the field's type hint
(int, float, bool, str, None, unions, `tuple[X, ...]`, `dict`, `Any`, nested dataclasses), then
calls the constructor so the dataclass's own `__post_init__` checks run; every failure becomes a
`ConfigError` naming the dotted path of the offending field. `to_data` is the inverse.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from typing import Any

import numpy as np


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type, or not allowed."""


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}


def _describe(tp: Any) -> str:
    if tp in _TYPE_NAMES:
        return _TYPE_NAMES[tp]
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict or tp is dict:
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in typing.get_args(tp))
    return str(tp)


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _convert(tp: Any, value: Any, path: str) -> Any:
    """`value` checked against (and, for nested dataclasses / tuples, converted to) type `tp`."""
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        arms = typing.get_args(tp)
        if value is None:
            if type(None) in arms:
                return None
        else:
            errors = []
            for arm in (a for a in arms if a is not type(None)):
                try:
                    return _convert(arm, value, path)
                except ConfigError as err:
                    errors.append(err)
            if len(errors) == 1:
                raise errors[0]
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {_shown(value)}.")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected {_describe(tp)}, got {_shown(value)}.")
        item_type = typing.get_args(tp)[0]
        return tuple(_convert(item_type, item, f"{path}[{i}]") for i, item in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {_shown(value)}.")
        args = typing.get_args(tp)
        return {k: _convert(args[1], v, f"{path}.{k}") for k, v in value.items()} if args else dict(value)
    return _convert_scalar(tp, value, path)


def _convert_scalar(tp: type, value: Any, path: str) -> Any:
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)  # 1.0e9 tokens
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    hint = ""
    if tp in (int, float) and _reads_as_number(value):
        hint = " (YAML reads 1e9 as a string: write 1.0e+9 or 1_000_000_000)"
    raise ConfigError(f"{path}: expected {_describe(tp)}, got {_shown(value)}{hint}.")


def _reads_as_number(value: Any) -> bool:
    """Whether `value` is a string that Python reads as a finite number but YAML 1.1 did not (e.g. '1e9', '3e-4')."""
    if not isinstance(value, str):
        return False
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def build(cls: type, data: Any, path: str) -> Any:
    """An instance of dataclass `cls` from mapping `data`, every key and value checked."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {sorted(_field_types(cls))}, got {_shown(data)}.")
    types_ = _field_types(cls)
    for key in data:
        if key not in types_:
            close = difflib.get_close_matches(str(key), types_, n=1)
            suggestion = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{path}.{key}: unknown key.{suggestion} Allowed keys: {', '.join(sorted(types_))}.")
    required = [f.name for f in dataclasses.fields(cls)
                if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise ConfigError(f"{path}: missing required key(s) {', '.join(missing)}.")
    kwargs = {key: _convert(types_[key], value, f"{path}.{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path}: {err}") from err


def to_data(value: Any) -> Any:
    """Plain YAML-safe data (dicts, lists, scalars) from nested dataclasses; dtypes become names."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_data(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (list, tuple)):
        return [to_data(v) for v in value]
    if isinstance(value, dict):
        return {k: to_data(v) for k, v in value.items()}
    if isinstance(value, (np.dtype, type)) and not isinstance(value, bool):
        return np.dtype(value).name
    return value
