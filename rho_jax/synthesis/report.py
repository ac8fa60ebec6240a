"""The run report: per-verdict counts and timings summed over the finished shards, as JSON and Markdown.

report.json: {"settings", "shards" (finished / total), "documents", "chunks", "completions",
"counts" ({verdict: n} over "valid" and every reason of `validation.REASONS`, zeros included;
they sum to "completions"), "generated_tokens", "seconds" ({prepare, generate, validate, write}
summed), "pairs_per_s" and "tokens_per_s" (accepted pairs and generated tokens per second of the
summed seconds), "generation_share" (generate / all seconds)}.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from rho_jax.synthesis.validation import REASONS, VALID

SHARD_REPORT = "report.json"
SHARDS_DIR = "shards"
_PHASES = ("prepare", "generate", "validate", "write")


def summarize(shard_reports: list[dict[str, Any]], total_shards: int, settings: dict[str, Any]) -> dict[str, Any]:
    """The totals of `shard_reports` (see the module docstring)."""
    counts: Counter = Counter()
    seconds = dict.fromkeys(_PHASES, 0.0)
    for report in shard_reports:
        counts.update(report["counts"])
        for phase in _PHASES:
            seconds[phase] += report["seconds"].get(phase, 0.0)
    elapsed = sum(seconds.values())
    generated = sum(r["generated_tokens"] for r in shard_reports)
    return {
        "settings": settings,
        "shards": {"finished": len(shard_reports), "total": total_shards},
        **{key: sum(r[key] for r in shard_reports) for key in ("documents", "chunks", "completions")},
        "counts": {key: counts[key] for key in (VALID, *REASONS)},
        "generated_tokens": generated,
        "seconds": seconds,
        "pairs_per_s": counts[VALID] / elapsed if elapsed else 0.0,
        "tokens_per_s": generated / elapsed if elapsed else 0.0,
        "generation_share": seconds["generate"] / elapsed if elapsed else 0.0,
    }


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown page: a table of verdicts, then throughput and timings."""
    total = summary["completions"]
    lines = ["# Synthesis report", "",
             f"Template `{summary['settings'].get('template')}`, model `{summary['settings'].get('model')}`"
             + (f", adapter `{summary['settings']['adapter']}`" if summary["settings"].get("adapter") else "") + ".",
             f"Shards {summary['shards']['finished']}/{summary['shards']['total']}, documents {summary['documents']}, "
             f"chunks {summary['chunks']}, completions {total}.", "",
             "| verdict | count | share |", "|---|---:|---:|"]
    for key, value in summary["counts"].items():
        lines.append(f"| {key} | {value} | {value / total if total else 0.0:.1%} |")
    seconds = summary["seconds"]
    lines += ["", f"Throughput: {summary['pairs_per_s']:.2f} pairs/s, {summary['tokens_per_s']:.1f} generated tokens/s "
              f"({summary['generated_tokens']} tokens).",
              "Time: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items())
              + f"; generation {summary['generation_share']:.1%} of the total.", ""]
    return "\n".join(lines)


def write_report(out_dir: Path, shards: list[str]) -> dict[str, Any]:
    """Summarize the finished shards of `out_dir` among `shards`; write report.json and report.md."""
    reports = []
    for shard in shards:
        path = out_dir / SHARDS_DIR / shard / SHARD_REPORT
        if path.is_file():
            reports.append(json.loads(path.read_text(encoding="utf-8")))
    settings_path = out_dir / "settings.json"
    settings = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else {}
    summary = summarize(reports, len(shards), settings)
    (out_dir / "report.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(markdown(summary), encoding="utf-8")
    return summary
