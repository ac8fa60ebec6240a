"""Symbolic equality of two answer strings with sympy, as the paper's math evaluation harness decides it.

Each string is parsed by the first parser that accepts it, trying the string with every `\\\\`
turned into `\\` first, then as written: sympy's LaTeX parser (`parse_latex`), sympy's Python-
syntax parser (`parse_expr`), then `latex2sympy2` (the harness's parser; PyPI `latex2sympy2-llmmath`);
a string no parser accepts stays a string. The two are equal if any check holds (a check that
raises counts as failed):

1. their printed forms are equal, or they compare equal;
2. `a.equals(b)`, or `simplify(a - b) == 0`;
3. both are equations and `|lhs - rhs|` of one `equals` that of the other;
4. both evaluate (`N`) to floats within relative tolerance 1e-4;
5. both are matrices of one shape whose entries agree after rounding to 3 decimals.

The verdicts depend on the parser versions: with the harness's pins (antlr4-python3-runtime 4.11.1,
the latex2sympy fork) they reproduce its published verdicts; under any other antlr runtime sympy's
LaTeX parser refuses to load and verdicts silently change, so `require_latex_parsers` checks it.

`parse_expr` and sympy's string conversion evaluate Python code. While a comparison runs, they
evaluate in a namespace without file, import, eval or plotting functions and without builtins, and a
string containing `__` is rejected unparsed (the harness would evaluate it); a verdict can differ from
the harness's only for strings that would have run such code. This narrows what a hostile completion
can do; it is not a sandbox (grading also runs each comparison in a separate process).
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import math
import types
from collections.abc import Callable, Iterator
from typing import Any

import sympy
import sympy.parsing.sympy_parser as sympy_parser
from latex2sympy2 import latex2sympy
from sympy.parsing.latex import parse_latex

RELATIVE_TOLERANCE = 1e-4  # the harness's `numeric_equal`
MATRIX_DECIMALS = 3

# sympy exports that read files, run programs, plot, or parse strings outside the guarded path.
_UNSAFE_SYMPY_NAMES = frozenset(
    {
        "parse_expr", "lambdify", "preview", "init_session", "init_printing", "interactive_traversal", "print_gtk",
        "pager_print", "textplot", "test", "doctest", "var",
        "plot", "plot_implicit", "plot_parametric", "plot3d", "plot3d_parametric_line", "plot3d_parametric_surface",
        "plot_backends",
    }
)  # fmt: skip
_UNSAFE_BUILTINS = frozenset(
    {
        "__build_class__", "__import__", "breakpoint", "compile", "delattr", "dir", "eval", "exec", "getattr",
        "globals", "hasattr", "input", "locals", "open", "print", "setattr", "vars", "aiter", "anext",
    }
)  # fmt: skip


class LatexParserUnavailable(RuntimeError):
    """sympy's LaTeX parser or latex2sympy2 cannot run here, so verdicts would not be the harness's."""


@functools.cache
def require_latex_parsers() -> None:
    """Raise `LatexParserUnavailable` unless both LaTeX parsers work (sympy's needs antlr4 runtime 4.11)."""
    try:
        parsed = [str(parse("\\frac{1}{2}")) for parse in (parse_latex, latex2sympy)]
    except ImportError as error:
        problem = f"{type(error).__name__}: {error}"
    else:
        if parsed == ["1/2", "1/2"]:
            return
        problem = f"'\\frac{{1}}{{2}}' parsed as {parsed}"
    raise LatexParserUnavailable(
        f"LaTeX parsing does not work ({problem}). Grading needs sympy's LaTeX parser and latex2sympy2 "
        "with antlr4-python3-runtime==4.11.1 (install 'antlr4-python3-runtime==4.11.1' and "
        "'latex2sympy2-llmmath==1.9.1'); another antlr runtime disables sympy's parser and changes verdicts."
    )


def symbolic_equal(a: str, b: str) -> bool:
    """True if `a` and `b` are the same mathematical object by the checks in the module docstring."""
    require_latex_parsers()
    with _guarded_string_evaluation():
        x, y = _to_sympy(a), _to_sympy(b)
        return any(_holds(check, x, y) for check in _CHECKS)


def _to_sympy(text: str) -> Any:
    """The first successful parse of `text` (see the module docstring), or `text` itself."""
    unescaped = text.replace("\\\\", "\\")
    candidates = (unescaped,) if unescaped == text else (unescaped, text)
    for parser in (parse_latex, sympy_parser.parse_expr, latex2sympy):
        for candidate in candidates:
            try:
                return parser(candidate)
            except Exception:  # each parser signals "not mine" with its own exception types
                pass
    return text


def _holds(check: Callable[[Any, Any], bool], a: Any, b: Any) -> bool:
    try:
        return bool(check(a, b))
    except Exception:  # sympy raises assorted errors on objects a check does not apply to
        return False


def _same_or_equal(a: Any, b: Any) -> bool:
    return str(a) == str(b) or a == b


def _equals_or_difference_zero(a: Any, b: Any) -> bool:
    return a.equals(b) or sympy.simplify(a - b) == 0


def _same_equation(a: Any, b: Any) -> bool:
    return abs(a.lhs - a.rhs).equals(abs(b.lhs - b.rhs))


def _numerically_close(a: Any, b: Any) -> bool:
    value_a, value_b = float(sympy.N(a)), float(sympy.N(b))
    return math.isclose(value_a, value_b, rel_tol=RELATIVE_TOLERANCE)


def _same_rounded_matrix(a: Any, b: Any) -> bool:
    if a.shape != b.shape:
        return False
    rounded = lambda m: m.applyfunc(lambda entry: round(entry, MATRIX_DECIMALS))
    return rounded(a).equals(rounded(b))


_CHECKS = (_same_or_equal, _equals_or_difference_zero, _same_equation, _numerically_close, _same_rounded_matrix)


@functools.cache
def _guarded_namespace() -> dict[str, Any]:
    """sympy's default `parse_expr` namespace without the names in `_UNSAFE_*`, and with no builtins module."""
    namespace: dict[str, Any] = {}
    exec("from sympy import *", namespace)
    for name, obj in vars(builtins).items():
        if isinstance(obj, types.BuiltinFunctionType):
            namespace[name] = obj
    namespace["max"], namespace["min"] = sympy.Max, sympy.Min
    for name in _UNSAFE_SYMPY_NAMES | _UNSAFE_BUILTINS:
        namespace.pop(name, None)
    namespace["__builtins__"] = {}
    return namespace


@contextlib.contextmanager
def _guarded_string_evaluation() -> Iterator[None]:
    """Within the block, every `parse_expr` (also sympy's own, behind `sympify` and `N` of a string) is guarded.

    Swaps the module attribute that sympy's string conversion looks up on each call; not thread-safe.
    """
    original = sympy_parser.parse_expr

    def guarded(s: str, local_dict: dict | None = None, transformations: Any = sympy_parser.standard_transformations,
                global_dict: dict | None = None, evaluate: bool = True) -> Any:  # fmt: skip
        if "__" in s:
            raise ValueError("refusing to evaluate a string that contains '__'")
        namespace = dict(_guarded_namespace()) if global_dict is None else global_dict
        return original(s, local_dict, transformations, namespace, evaluate)

    sympy_parser.parse_expr = guarded
    try:
        yield
    finally:
        sympy_parser.parse_expr = original
