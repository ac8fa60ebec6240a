"""Where a compiled step's time goes: a JAX profiler trace, summed per XLA operation.

`profile_ops(run, hlo_text, steps, trace_dir)` runs `run()` `steps` times under `jax.profiler.trace`
(the trace stays in `trace_dir` for Perfetto or TensorBoard), matches the trace's events to the
instructions of the compiled program's HLO text by name, and returns per-operation totals with the
operation's shape and source (`op_name` metadata). Operations whose source is a `dot_general` count
as matmuls, everything else (elementwise fusions, reductions, copies, sorts) as other work. Loops
and calls (`while`, `call`, `conditional`) only contain other operations and are left out.
Operations can overlap in time on several threads, so their sum may exceed the step's wall time.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

_INSTRUCTION = re.compile(r"%([\w.\-]+) = (\S+) (.*)$", re.M)
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CONTAINERS = ("while", "call", "conditional")


@dataclasses.dataclass(frozen=True)
class OpTime:
    name: str
    shape: str
    source: str
    seconds_per_step: float
    calls_per_step: float

    @property
    def is_matmul(self) -> bool:
        return "dot_general" in self.source


def _instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
    """instruction name -> (result shape, op_name metadata) for every instruction of `hlo_text`."""
    found = {}
    for m in _INSTRUCTION.finditer(hlo_text):
        source = _OP_NAME.search(m.group(3))
        found[m.group(1)] = (m.group(2), source.group(1) if source else "")
    return found


def _trace_events(trace_dir: Path) -> list[dict[str, Any]]:
    paths = sorted(trace_dir.rglob("*perfetto_trace.json.gz"))
    if not paths:
        raise FileNotFoundError(f"no perfetto trace was written under {trace_dir}")
    with gzip.open(paths[-1]) as f:
        trace = json.load(f)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def profile_ops(run: Callable[[], Any], hlo_text: str, steps: int, trace_dir: Path) -> list[OpTime]:
    """Per-operation time of `steps` calls of `run` (already compiled and warm), longest first."""
    jax.block_until_ready(run())
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        for _ in range(steps):
            jax.block_until_ready(run())
    instructions = _instructions(hlo_text)
    total, calls = collections.Counter(), collections.Counter()
    for event in _trace_events(trace_dir):
        name = event.get("name")
        if event.get("ph") == "X" and name in instructions and name.split(".")[0] not in _CONTAINERS:
            total[name] += event.get("dur", 0) * 1e-6
            calls[name] += 1
    return [OpTime(name, *instructions[name], seconds / steps, calls[name] / steps)
            for name, seconds in total.most_common()]


def format_profile(ops: list[OpTime], step_seconds: float, top: int = 12) -> str:
    """Matmul vs other work as shares of the summed operation time, and the `top` operations."""
    if not ops:
        return "no events of the program's operations in the trace (open the trace in Perfetto instead)"
    summed = sum(op.seconds_per_step for op in ops)
    matmul = sum(op.seconds_per_step for op in ops if op.is_matmul)
    lines = [f"operations: {summed * 1e3:.1f} ms per step summed over threads (step wall time "
             f"{step_seconds * 1e3:.1f} ms); matmuls {matmul / summed:.0%}, other work "
             f"(elementwise, reductions, copies) {1 - matmul / summed:.0%}",
             "", "| operation | ms / step | calls | shape | source |", "|---|---|---|---|---|"]
    for op in ops[:top]:
        lines.append(f"| {op.name} | {op.seconds_per_step * 1e3:.1f} | {op.calls_per_step:g} | {op.shape} "
                     f"| {op.source[-70:]} |")
    return "\n".join(lines)
