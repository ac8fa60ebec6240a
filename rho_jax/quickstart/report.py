"""The quickstart's report: a Markdown table, the same figures as JSON, and a PNG of the curves.

Per seed: final held-out loss of CLM and SLM (same initialization, same tokens), the tokens SLM
needed to reach CLM's final held-out loss, SLM's selected fraction, and how often SLM selected
the clean, web-noise and off-domain tokens of the labelled probe. Across seeds: mean, standard
deviation (n - 1) and range. And how the reference data was made (`reference_data_markdown`): the
quality classifier's held-out precision/recall/F1, what the filter kept of each kind of pool document,
the planted contaminations decontamination found, and the reference set's size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rho_jax.quickstart.corpus import POOL_KINDS  # noqa: E402
from rho_jax.quickstart.curves import Curve, tokens_to_reach  # noqa: E402
from rho_jax.quickstart.probe import LABELS  # noqa: E402

Counts = dict[str, dict[str, int]]


@dataclasses.dataclass(frozen=True)
class SeedResult:
    seed: int
    clm: Curve
    slm: Curve
    selected_fraction: float  # mean over SLM's training steps
    selection: dict[int, Counts]  # probe step -> counts per label

    @property
    def clm_final(self) -> float:
        return self.clm[-1][1]

    @property
    def slm_final(self) -> float:
        return self.slm[-1][1]

    @property
    def total_tokens(self) -> int:
        return self.clm[-1][0]

    @property
    def tokens_to_clm_final(self) -> float | None:
        return tokens_to_reach(self.slm, self.clm_final)

    def selection_rates(self) -> dict[str, float]:
        """Selected / tokens per label, over every probed step."""
        return {label: _rate([self.selection[s][label] for s in self.selection]) for label in LABELS}


def _rate(counts: list[dict[str, int]]) -> float:
    tokens = sum(c["tokens"] for c in counts)
    return sum(c["selected"] for c in counts) / tokens if tokens else float("nan")


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def summarize(results: list[SeedResult]) -> dict[str, Any]:
    """The report's figures as plain data (also written as report.json)."""
    seeds = []
    for r in results:
        reached = r.tokens_to_clm_final
        seeds.append({
            "seed": r.seed, "tokens": r.total_tokens, "clm_final_loss": r.clm_final, "slm_final_loss": r.slm_final,
            "slm_minus_clm": r.slm_final - r.clm_final, "slm_tokens_to_clm_final": reached,
            "slm_fraction_of_tokens": None if reached is None else reached / r.total_tokens,
            "selected_fraction": r.selected_fraction, "selection_rates": r.selection_rates(),
        })
    steps = sorted(set.intersection(*(set(r.selection) for r in results)))
    by_step = {step: {label: _rate([r.selection[step][label] for r in results]) for label in LABELS} for step in steps}
    fractions = [s["slm_fraction_of_tokens"] for s in seeds]
    return {
        "seeds": seeds,
        "slm_minus_clm": _spread([s["slm_minus_clm"] for s in seeds]),
        "slm_fraction_of_tokens": _spread(fractions) if None not in fractions else None,
        "slm_wins": sum(s["slm_minus_clm"] < 0 for s in seeds),
        "selection_rates": {label: _rate([r.selection[s][label] for r in results for s in r.selection]) for label in LABELS},
        "selection_by_step": by_step,
    }


def _percent(rate: float) -> str:
    """A selection rate as a percentage; "-" for the rate of no tokens (NaN)."""
    return "-" if math.isnan(rate) else f"{rate:.1%}"


def _tokens(n: float) -> str:
    return f"{n / 1e3:.0f}k" if n < 1e6 else f"{n / 1e6:.2f}M"


def markdown(summary: dict[str, Any], context: dict[str, Any], reference_data: dict[str, Any]) -> str:
    """The report as Markdown; `context` describes the setup (see `pipeline.report_context`), `reference_data`
    how the reference data was curated (see `reference_data_markdown`)."""
    lines = [
        "# rho_jax quickstart: SLM vs CLM on a noisy corpus",
        "",
        context["description"],
        "",
        "| seed | CLM held-out loss | SLM held-out loss | SLM - CLM "
        "| tokens SLM needed to reach CLM's final loss | selected fraction |",
        "|---|---|---|---|---|---|",
    ]
    for s in summary["seeds"]:
        reached = s["slm_tokens_to_clm_final"]
        reach = "not reached" if reached is None else (
            f"{_tokens(reached)} of {_tokens(s['tokens'])} ({s['slm_fraction_of_tokens']:.0%})")
        lines.append(f"| {s['seed']} | {s['clm_final_loss']:.3f} | {s['slm_final_loss']:.3f} | "
                     f"{s['slm_minus_clm']:+.3f} | {reach} | {s['selected_fraction']:.3f} |")
    gap, frac = summary["slm_minus_clm"], summary["slm_fraction_of_tokens"]
    n = len(summary["seeds"])
    lines.append(f"| **mean +- std** | | | **{gap['mean']:+.3f} +- {gap['std']:.3f}** | "
                 + (f"**{frac['mean']:.0%} +- {frac['std']:.0%}** of the tokens" if frac else "-") + " | |")
    lines += [
        "",
        f"SLM beat CLM on held-out loss in **{summary['slm_wins']} of {n}** seeds; the gap ranged from "
        f"{gap['min']:+.3f} to {gap['max']:+.3f}"
        + (f", and SLM reached CLM's final loss after {frac['min']:.0%} to {frac['max']:.0%} of the tokens "
           f"({1 / frac['mean']:.1f}x fewer on average)." if frac else "."),
        "",
        "## Which tokens SLM selected",
        "",
        f"Labelled probe: {context['probe']}. Selection at ratio {context['ratio']} "
        f"(a token type selected at the ratio would be picked {context['ratio']:.0%} of the time):",
        "",
        "| tokens trained | clean in-domain | injected web noise | off-domain documents |",
        "|---|---|---|---|",
    ]
    for step, rates in summary["selection_by_step"].items():
        lines.append(f"| {_tokens(step * context['tokens_per_step'])} (step {step}) | "
                     + " | ".join(_percent(rates[label]) for label in LABELS) + " |")
    overall = summary["selection_rates"]
    lines.append("| **all probed steps** | " + " | ".join(f"**{_percent(overall[label])}**" for label in LABELS) + " |")
    if any(math.isnan(overall[label]) for label in LABELS):
        lines += ["", "(-: the probe holds no token of that type; `--probe-batches` takes more batches.)"]
    lines += ["", *reference_data_markdown(reference_data)]
    lines += ["", f"Files: `{context['plot']}` (held-out loss curves), `{context['html']}` (token selection, "
              "colored by excess loss), `report.json` (these figures), and one run directory per model.", ""]
    return "\n".join(lines)


def reference_data_markdown(facts: dict[str, Any]) -> list[str]:
    """The "Reference data" section: `facts` as made by `reference_data.reference_data_facts`."""
    c, f, d, r = facts["classifier"], facts["filter"], facts["decontamination"], facts["reference"]
    kinds = [kind for kind in POOL_KINDS if f["total"][kind]]
    return [
        "## Reference data",
        "",
        f"Curated from a pool of {sum(f['total'].values()):,} documents by `python -m rho_jax.curate` (the commands "
        f"are printed above): a `{c['kind']}` quality classifier on an embedding model's features, trained on "
        f"{c['train_documents']} labelled documents; on its {c['heldout_documents']} held-out labelled documents "
        f"**precision {c['precision']:.3f}, recall {c['recall']:.3f}, F1 {c['f1']:.3f}** (high quality = a clean "
        f"worked problem). The filter kept documents scoring >= {f['cutoff']:.3f}:",
        "",
        "| pool documents | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
        "| kept / total | " + " | ".join(f"{f['kept'][k]} / {f['total'][k]}" for k in kinds) + " |",
        "",
        f"Decontamination of the kept documents against the held-out set (word {d['n']}-grams, drop): "
        f"**{d['planted_found']} of the {d['planted_kept_by_filter']} planted held-out problems the filter kept found** "
        f"({d['planted']} planted, {d['planted'] - d['planted_kept_by_filter']} already dropped by the filter), "
        f"{d['other_documents_flagged']} other documents flagged (template siblings: other GSM-Symbolic instances of a "
        f"held-out problem's template, sharing a {d['n']}-word run with it). Reference set: **{r['documents']:,} documents** ("
        + ", ".join(f"{r['by_kind'][k]} {k}" for k in kinds if r["by_kind"][k]) + ").",
    ]


def plot(results: list[SeedResult], reference_loss: float, summary: dict[str, Any], context: dict[str, Any],
         path: Path) -> None:
    """Held-out loss vs tokens for CLM and SLM, each seed in its own colour (CLM dashed, SLM solid,
    so every SLM run is seen against its own CLM run), and selection rates per token type."""
    ratio = context["ratio"]
    fig, (curves, rates) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    for i, r in enumerate(results):
        color = plt.get_cmap("tab10")(i % 10)
        for curve, style in ((r.clm, "--"), (r.slm, "-")):
            curves.plot([t / 1e3 for t, _ in curve], [loss for _, loss in curve], color=color, linestyle=style,
                        alpha=0.9, marker=".")
        curves.annotate(f"seed {r.seed}", (r.slm[-1][0] / 1e3, r.slm_final), xytext=(4, 0), textcoords="offset points",
                        color=color, fontsize=8, va="center")
        reached = r.tokens_to_clm_final
        if reached is not None:
            curves.plot([reached / 1e3], [r.clm_final], "|", color=color, markersize=14)
    curves.plot([], [], "k--", label="CLM (all tokens)")
    curves.plot([], [], "k-", label=f"SLM (ratio {ratio})")
    curves.axhline(reference_loss, color="0.35", linestyle=":", label="reference model (trained on clean data)")
    curves.set(xlabel="training tokens (thousands)", ylabel="held-out in-domain loss (nats/token)",
               title=f"Held-out loss, {len(results)} seed(s); | = SLM reaches CLM's final loss")
    curves.legend()
    curves.grid(alpha=0.3)
    steps = list(summary["selection_by_step"])
    tokens = [step * context["tokens_per_step"] / 1e3 for step in steps]
    for label, color in zip(LABELS, ("tab:green", "tab:red", "tab:purple")):
        rates.plot(tokens, [summary["selection_by_step"][s][label] for s in steps], marker="o", color=color, label=label)
    rates.axhline(ratio, color="gray", linestyle=":", label=f"ratio {ratio}")
    rates.set(xlabel="training tokens (thousands)", ylabel="fraction of the tokens selected", ylim=(0, 1.02),
              title="What SLM selects, by token type (all seeds)")
    rates.legend()
    rates.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(directory: Path, results: list[SeedResult], reference_loss: float, reference_data: dict[str, Any],
                 context: dict[str, Any]) -> dict[str, Any]:
    """Write report.md, report.json and the plot into `directory`; returns the summary."""
    summary = summarize(results)
    plot(results, reference_loss, summary, context, directory / context["plot"])
    (directory / "report.md").write_text(markdown(summary, context, reference_data))
    (directory / "report.json").write_text(json.dumps({"context": context, "reference_heldout_loss": reference_loss,
                                                       "reference_data": reference_data, **summary}, indent=2) + "\n")
    return summary
