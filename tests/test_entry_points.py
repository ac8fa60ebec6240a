"""Every `python -m rho_jax.*` command: it starts (`--help`), and every command line the README, the
docs, the configs and the launch notes show is accepted by that command's own argument parser."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# module run by `python -m` -> the module whose `build_parser()` defines its command line
ENTRY_POINTS = {
    "rho_jax.train": "rho_jax.train",
    "rho_jax.score": "rho_jax.score",
    "rho_jax.analyze": "rho_jax.analyze",
    "rho_jax.convert": "rho_jax.convert",
    "rho_jax.bench": "rho_jax.bench.cli",
    "rho_jax.quickstart": "rho_jax.quickstart.cli",
    "rho_jax.data.prepare": "rho_jax.data.prepare",
    "rho_jax.demo": "rho_jax.demo",
    "rho_jax.generate": "rho_jax.generate",
    "rho_jax.evaluate": "rho_jax.evaluate",
    "rho_jax.curate": "rho_jax.curate",
    "rho_jax.synthesize": "rho_jax.synthesize",
}
COMMAND = re.compile(r"python -m (rho_jax(?:\.\w+)*)(.*)")
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def command_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the shell lines a file shows: Markdown fenced blocks (continuations
    joined), inline code that is a whole command (`python -m` and at least two arguments; shorter
    spans name a command in prose), and YAML comment lines that are a command."""
    text = path.read_text()
    if path.suffix == ".yaml":
        return [(n, line.lstrip("# ")) for n, line in enumerate(text.splitlines(), 1)
                if re.match(r"#\s+python -m ", line)]
    lines = []
    for block in FENCE.finditer(text):
        first = text[: block.start(1)].count("\n") + 1
        joined = block.group(1).replace("\\\n", " ")
        lines += [(first + n, line) for n, line in enumerate(joined.splitlines())]
    outside = FENCE.sub(lambda block: "\n" * block.group(0).count("\n"), text)
    for span in re.finditer(r"`(python -m [^`]+)`", outside):
        if len(span.group(1).split()) >= 5 and " / " not in span.group(1):
            lines.append((outside[: span.start()].count("\n") + 1, span.group(1)))
    return lines


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, module, argv) of every concrete `python -m rho_jax.X ...` command in the README, the
    docs, launch/README.md and the configs' comments; usage synopses (`[optional]` parts, `...`) are
    left out and shell variables stand for 0."""
    files = [ROOT / "README.md", ROOT / "launch" / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "configs").rglob("*.yaml"))]
    found = []
    for path in files:
        for line_number, line in command_lines(path):
            match = COMMAND.search(line)
            if match is None:
                continue
            tail = re.split(r"\s#|&&|\||;", match.group(2))[0].strip().removesuffix("&")
            if any(mark in tail for mark in ("[", "...", "…")):
                continue
            argv = ["0" if word.startswith("$") else word for word in shlex.split(tail)]
            found.append((f"{path.relative_to(ROOT)}:{line_number}", match.group(1), argv))
    return found


def test_the_docs_show_commands_of_every_kind():
    modules = {module for _, module, _ in documented_commands()}
    assert {"rho_jax.train", "rho_jax.score", "rho_jax.analyze", "rho_jax.convert", "rho_jax.bench",
            "rho_jax.quickstart"} <= modules, modules


@pytest.mark.parametrize("where, module, argv", documented_commands(), ids=lambda x: x if isinstance(x, str) else None)
def test_documented_command_is_accepted(where, module, argv):
    assert module in ENTRY_POINTS, f"{where}: python -m {module} is not an entry point of rho_jax"
    parser = importlib.import_module(ENTRY_POINTS[module]).build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as exit_:
        pytest.fail(f"{where}: python -m {module} {shlex.join(argv)} is refused by its parser (exit {exit_.code})")


def test_every_entry_point_starts():
    """`python -m X --help` for all entry points at once (one interpreter each, in parallel)."""
    runs = {module: subprocess.Popen([sys.executable, "-m", module, "--help"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, cwd=ROOT)
            for module in ENTRY_POINTS}
    for module, process in runs.items():
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, f"python -m {module} --help failed:\n{output}"
        assert f"usage: python -m {module}" in output, output
