"""Run a benchmark as named parts, each in its own process under a time limit, into one report that grows part by part.

A part is a command (a child process in its own process session) that writes what it measured to a
JSON "part file" as it goes (`PartRecorder`). The parts run one after the other; part i gets

    min(its own budget, total budget - seconds already spent)

seconds and is killed (its whole process group) when they run out. After every part, finished or not,
`report.json` and `report.md` in the output directory are rewritten (atomically) with all parts so far:

    status   ok         the command exited 0
             failed     it exited otherwise; `error` holds its recorded exception (or its output's last line)
             timed out  killed at its time limit; `results` holds what it recorded before
             skipped    not started: less than `MIN_PART_S` seconds of the total budget were left
    results  the part file's contents: what the part measured (partial when it failed or timed out)

Every child's output goes, as it comes, to the end of `parts.log` in the output directory. A process stopped while running
a part (SIGTERM, e.g. `timeout`) kills that part's process group and leaves the report of the parts before
it intact; the report exists, with no parts, from the start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rho_jax.integrity import write_json_atomic, write_text_atomic

MIN_PART_S = 5.0
STATUSES = ("ok", "failed", "timed out", "skipped")


@dataclasses.dataclass(frozen=True)
class Part:
    """A part of a benchmark: `name` (identifier), `title` (report heading), `budget_s` (time limit)."""

    name: str
    title: str
    budget_s: float


class PartRecorder:
    """What a part measured, rewritten to its part file after each `record` (a kill loses nothing recorded)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.results: dict[str, Any] = {}

    def record(self, key: str, value: Any) -> None:
        self.results[key] = value
        write_json_atomic(self.path, {"results": self.results})

    def fail(self, error: str) -> None:
        write_json_atomic(self.path, {"results": self.results, "error": error})


def _read_part_file(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _last_line(log: str) -> str:
    lines = [line for line in log.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def run_part(part: Part, command: Sequence[str], timeout_s: float, part_file: Path, env: dict[str, str] | None,
             log: Path) -> dict[str, Any]:
    """Run `command` (which records into `part_file`, its output streamed to the end of `log`) for at most
    `timeout_s` seconds; its entry in the report."""
    start = time.monotonic()
    with open(log, "a+") as output:
        output.write(f"===== {part.name} =====\n")
        output.flush()
        begin = output.tell()
        child = subprocess.Popen(list(command), stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            returncode = child.wait(timeout=timeout_s)
            status = "ok" if returncode == 0 else "failed"
        except BaseException as err:  # the time limit, or this process stopped (SIGTERM, Ctrl-C): the part goes too
            with contextlib.suppress(ProcessLookupError):  # the child and whatever it started (e.g. pytest)
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            if not isinstance(err, subprocess.TimeoutExpired):
                raise
            status = "timed out"
        output.seek(begin)
        text = output.read()
        output.write(f"===== {part.name}: {status} =====\n")
    recorded = _read_part_file(part_file)
    error = recorded.get("error")
    if status == "failed" and error is None:
        error = _last_line(text)
    elif status == "timed out":
        error = f"timed out after {timeout_s:.0f} s"
    return {"name": part.name, "title": part.title, "status": status, "seconds": round(time.monotonic() - start, 2),
            "budget_s": round(timeout_s, 2), "error": error, "results": recorded.get("results", {})}


def run_parts(parts: Sequence[Part], command_of: Callable[[Part, Path, float], Sequence[str]], output: Path,
              total_budget_s: float, header: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `parts` in order (`command_of(part, part_file, timeout_s)` is a part's command), rewriting the
    report in `output` after each; returns the report."""
    output.mkdir(parents=True, exist_ok=True)
    log = output / "parts.log"
    log.write_text("")
    report: dict[str, Any] = {**header, "total_budget_s": total_budget_s, "parts": []}
    write_report(report, output)
    deadline = time.monotonic() + total_budget_s
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # a part's process is in its own session:
    try:                                                          # a stop of this one must end it too
        with tempfile.TemporaryDirectory() as tmp:
            for part in parts:
                left = deadline - time.monotonic()
                if left < MIN_PART_S:
                    entry = {"name": part.name, "title": part.title, "status": "skipped", "seconds": 0.0, "budget_s": 0.0,
                             "error": f"only {max(left, 0):.0f} s of the total budget {total_budget_s:.0f} s were left",
                             "results": {}}
                else:
                    part_file, timeout_s = Path(tmp) / f"{part.name}.json", min(part.budget_s, left)
                    entry = run_part(part, command_of(part, part_file, timeout_s), timeout_s, part_file, env, log)
                report["parts"].append(entry)
                write_report(report, output)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return report


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def write_report(report: dict[str, Any], output: Path) -> None:
    write_json_atomic(output / "report.json", report)
    write_text_atomic(output / "report.md", format_report(report))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _markdown(key: str, value: Any) -> list[str]:
    """A result as Markdown: a list of flat dicts as a table, a multi-line string as a code block, else one line."""
    if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
        columns = list(dict.fromkeys(column for row in value for column in row))
        lines = [f"{key}:", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(row.get(column, "")) for column in columns) + " |" for row in value]
        return lines + [""]
    if isinstance(value, str) and "\n" in value:
        return [f"{key}:", "", "```", value.rstrip(), "```", ""]
    return [f"- {key}: {_cell(value)}"]


def format_report(report: dict[str, Any]) -> str:
    """The report as Markdown: the header's fields, then each part's status, time and results."""
    lines = [f"# {report.get('title', 'report')}", ""]
    lines += [f"- {key}: {_cell(value)}" for key, value in report.items() if key not in ("title", "parts")]
    for part in report["parts"]:
        lines += ["", f"## {part['title']} ({part['name']}): {part['status']}, {part['seconds']:.0f} s of "
                      f"{part['budget_s']:.0f} s", ""]
        if part["error"]:
            lines += [f"error: `{part['error']}`", ""]
        for key, value in part["results"].items():
            lines += _markdown(key, value)
    return "\n".join(lines) + "\n"
