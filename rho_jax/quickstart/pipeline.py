"""The quickstart, end to end: corpus -> embedding model -> curated reference data -> reference model
-> CLM and SLM per seed -> report.

Every model is trained by the ordinary training CLI (`rho_jax.train.main`) with the configs in
`configs/quickstart/` plus path and seed overrides, and the reference data is curated from the
corpus's mixed pool by the curation CLI (`rho_jax.curate.main`, see `reference_data`); each command
is printed so it can be rerun by hand. The output directory holds `quickstart.json` (the settings):
rerunning with the same settings resumes (finished runs and curation steps are skipped, interrupted
runs resume from their checkpoints), rerunning with other settings is refused.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import statistics
import time
from pathlib import Path
from typing import Any

from rho_jax import train
from rho_jax.analysis.token_html import render_token_html
from rho_jax.data.tokenizer import load_tokenizer
from rho_jax.models.atomic_dir import atomic_directory
from rho_jax.quickstart.corpus import CorpusSpec, build_corpus
from rho_jax.quickstart.curves import heldout_curve
from rho_jax.quickstart.probe import LABELS, probe_batches
from rho_jax.quickstart.reference_data import REFERENCE_FILE, curation_steps, reference_data_facts, run_step, write_reference
from rho_jax.quickstart.report import SeedResult, write_report
from rho_jax.quickstart.selection import RunModels, documents_for_display, selection_by_step
from rho_jax.sharding import make_mesh
from rho_jax.training.config import ConfigError, load_config
from rho_jax.training.run_dir import CONFIG_FILE, METRICS_FILE, read_jsonl

SETTINGS_FILE = "quickstart.json"
DATA_DIR = "data"
CORPUS_FILE = "corpus.json"
CURATION_DIR = "curation"
CLASSIFIER_KINDS = ("logistic", "random_forest", "ridge")
PLOT_FILE = "heldout_loss.png"
HTML_FILE = "selected_tokens.html"


class QuickstartError(RuntimeError):
    """The quickstart cannot go on; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the quickstart does; equal settings give equal results (and may resume each other)."""

    output: str = "runs/quickstart"
    seeds: tuple[int, ...] = (0, 1, 2)
    configs: str = "configs/quickstart"
    corpus: CorpusSpec = CorpusSpec()
    embedder_overrides: tuple[str, ...] = ()
    classifier: str = "random_forest"
    quality_threshold: float | None = None
    reference_overrides: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    probe_batches: int = 16

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON data (tuples become lists), as stored in quickstart.json."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclasses.dataclass(frozen=True)
class RunPlan:
    title: str
    output_dir: Path
    config: Path
    overrides: tuple[str, ...]

    @property
    def argv(self) -> list[str]:
        return ["--config", str(self.config), *self.overrides]

    @property
    def command(self) -> str:
        return "python -m rho_jax.train " + shlex.join(self.argv)


def check_output(settings: Settings) -> Path:
    """The output directory, new or holding a quickstart with the same settings (else refused)."""
    out = Path(settings.output)
    settings_file = out / SETTINGS_FILE
    if settings_file.is_file():
        old = json.loads(settings_file.read_text())
        new = settings.to_json()
        changed = [f"{key}: {old.get(key)!r} -> {new[key]!r}" for key in new if old.get(key) != new[key]]
        if changed:
            raise QuickstartError(
                f"{out} holds a quickstart with other settings; continuing would mix two experiments.\n  "
                + "\n  ".join(changed) + "\nUse another --output, or the original settings to resume.")
    elif out.exists() and any(out.iterdir()):
        raise QuickstartError(f"{out} is a non-empty directory without {SETTINGS_FILE}; choose a new --output.")
    out.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(settings.to_json(), indent=2) + "\n")
    return out


def ensure_corpus(settings: Settings, out: Path) -> Path:
    """Build the corpus into `<out>/data` once (atomically); later runs reuse it."""
    directory = out / DATA_DIR
    if (directory / CORPUS_FILE).is_file():
        return directory
    with atomic_directory(directory) as staging:
        counts = build_corpus(settings.corpus, staging)
        (staging / CORPUS_FILE).write_text(json.dumps({"spec": dataclasses.asdict(settings.corpus),
                                                       "documents": counts}, indent=2) + "\n")
    return directory


def _paths(*files: Path) -> str:
    return json.dumps([str(f) for f in files])  # a YAML flow list


def embedder_plan(settings: Settings, out: Path) -> RunPlan:
    """The embedding model of the quality classifier: CLM on the raw pool."""
    data = out / DATA_DIR
    return RunPlan("embedding model (CLM on the raw pool)", out / "embedder", Path(settings.configs) / "embedder.yaml",
                   (f"output_dir={out / 'embedder'}", f"data.sources.0.paths={_paths(data / 'pool.jsonl')}",
                    f"data.tokenizer={data / 'tokenizer'}", *settings.embedder_overrides))


def run_plans(settings: Settings, out: Path) -> tuple[RunPlan, list[tuple[int, RunPlan, RunPlan]]]:
    """The reference run, and (seed, CLM run, SLM run) per seed."""
    configs, data = Path(settings.configs), out / DATA_DIR
    paths = lambda name: _paths(data / name)  # noqa: E731
    common = (f"data.tokenizer={data / 'tokenizer'}", f"eval.sets.heldout.paths={paths('heldout.jsonl')}")
    curated = _paths(out / CURATION_DIR / REFERENCE_FILE)
    reference = RunPlan("reference model (CLM on the curated high-quality data)", out / "reference",
                        configs / "reference.yaml", (f"output_dir={out / 'reference'}", f"data.sources.0.paths={curated}",
                                                     *common, *settings.reference_overrides))
    pairs = []
    for seed in settings.seeds:
        seeded = (f"data.sources.0.paths={paths('noisy.jsonl')}", *common, f"train.seed={seed}", f"data.seed={seed}",
                  *settings.overrides)
        # CLM's own settings come last, so an override meant for SLM (e.g. slm.ratio=0.7) leaves CLM plain CLM.
        clm = RunPlan(f"CLM on the noisy corpus, seed {seed}", out / f"clm-seed{seed}", configs / "slm.yaml",
                      (f"output_dir={out / f'clm-seed{seed}'}", *seeded, "reference=null", "slm.ratio=1.0"))
        slm = RunPlan(f"SLM on the noisy corpus, seed {seed}", out / f"slm-seed{seed}", configs / "slm.yaml",
                      (f"output_dir={out / f'slm-seed{seed}'}", f"reference.path={out / 'reference'}", *seeded))
        pairs.append((seed, clm, slm))
    return reference, pairs


def train_run(plan: RunPlan, index: int, total: int) -> None:
    print(f"\n==> [{index}/{total}] {plan.title}\n    {plan.command}", flush=True)
    code = train.main(plan.argv)
    if code == train.STOPPED:
        raise QuickstartError(f"{plan.title} was stopped after saving a checkpoint; rerun the same quickstart "
                              "command to resume.")
    if code != 0:
        raise QuickstartError(f"{plan.title} failed (exit code {code}); see the error above. "
                              "Rerun the same quickstart command to resume once it is fixed.")


def curate_reference_data(settings: Settings, out: Path, embedder: Path, index: int, total: int) -> dict[str, Any]:
    """Run the curation commands (skipping finished ones), write reference.jsonl; returns the report's facts."""
    curation = out / CURATION_DIR
    steps = curation_steps(out / DATA_DIR, embedder, curation, kind=settings.classifier,
                           threshold=settings.quality_threshold)
    print(f"\n==> [{index}/{total}] reference data: quality classifier + filter + decontamination of the pool", flush=True)
    for step in steps:
        if not run_step(step):
            raise QuickstartError(f"curation step '{step.title}' failed; see the error above. Rerun the same quickstart "
                                  "command to resume once it is fixed.")
    write_reference(curation)
    return reference_data_facts(out / DATA_DIR, curation)


def mean_selected_fraction(run_dir: Path) -> float:
    return statistics.fmean(record["selected_fraction"] for record in read_jsonl(run_dir / METRICS_FILE))


def run(settings: Settings) -> dict[str, Any]:
    """Run (or resume) the whole quickstart; returns the report summary."""
    started = time.perf_counter()
    if settings.classifier not in CLASSIFIER_KINDS:
        raise QuickstartError(f"classifier must be one of {CLASSIFIER_KINDS}, got {settings.classifier!r}.")
    if settings.quality_threshold is not None and not 0 < settings.quality_threshold <= 1:
        raise QuickstartError(f"the quality threshold is a score of the 0/1 scale in (0, 1], got {settings.quality_threshold}.")
    embedder = embedder_plan(settings, Path(settings.output))
    reference, pairs = run_plans(settings, Path(settings.output))
    check_plans([embedder, reference, *(plan for _, clm, slm in pairs for plan in (clm, slm))])
    out = check_output(settings)
    total = 4 + 2 * len(pairs) + 1
    print(f"==> [1/{total}] corpus and tokenizer -> {out / DATA_DIR}", flush=True)
    data = ensure_corpus(settings, out)
    curation_started = time.perf_counter()
    train_run(embedder, 2, total)
    reference_data = curate_reference_data(settings, out, embedder.output_dir, 3, total)
    print(f"    (embedding model and reference data: {time.perf_counter() - curation_started:.0f} s)", flush=True)
    train_run(reference, 4, total)
    for i, (_, clm, slm) in enumerate(pairs):
        train_run(clm, 5 + 2 * i, total)
        train_run(slm, 6 + 2 * i, total)

    print(f"\n==> [{total}/{total}] report: selection on the labelled probe, curves, token page", flush=True)
    tokenizer = load_tokenizer(str(data / "tokenizer"))
    first = load_config(pairs[0][2].output_dir / CONFIG_FILE)  # every SLM run has this seq_len and batch size
    probe = probe_batches(data / "noisy.jsonl", tokenizer, seq_len=first.data.seq_len, batch_rows=first.batch_size,
                          num_batches=settings.probe_batches)
    results, display = [], None
    for seed, clm, slm in pairs:
        cfg = load_config(slm.output_dir / CONFIG_FILE)
        models = RunModels(cfg, slm.output_dir, make_mesh(cfg.mesh))
        selection = selection_by_step(models, probe)
        results.append(SeedResult(seed, heldout_curve(clm.output_dir), heldout_curve(slm.output_dir),
                                  mean_selected_fraction(slm.output_dir), selection))
        if display is None:
            display = documents_for_display(models, models.saved_steps()[-1], probe, tokenizer, max_documents=6)
            probe_tokens = {label: selection[0][label]["tokens"] for label in LABELS}
            context = report_context(settings, cfg, out, reference, probe_tokens)
    render_token_html("rho_jax quickstart: tokens selected by SLM", html_intro(context), display, 4.0, out / HTML_FILE)
    reference_loss = heldout_curve(reference.output_dir)[-1][1]
    summary = write_report(out, results, reference_loss, reference_data, context)
    print((out / "report.md").read_text())
    print(f"Report: {out / 'report.md'}, plot: {out / PLOT_FILE}, tokens: {out / HTML_FILE} "
          f"({time.perf_counter() - started:.0f} s)")
    return summary


def report_context(settings: Settings, cfg: Any, out: Path, reference: RunPlan, probe_tokens: dict[str, int]) -> dict[str, Any]:
    """Setup facts the report states."""
    reference_cfg = load_config(reference.output_dir / CONFIG_FILE)
    probe_total = sum(probe_tokens.values())
    composition = ", ".join(f"{probe_tokens[label] / probe_total:.0%} {label}" for label in LABELS)
    description = (
        f"Reference model: CLM on {reference_cfg.total_steps * reference_cfg.tokens_per_step:,} tokens of the curated "
        f"high-quality math word problems (see Reference data). CLM and SLM: the same model from the same initialization, "
        f"{cfg.total_steps * cfg.tokens_per_step:,} tokens each ({cfg.total_steps} steps of {cfg.tokens_per_step:,}) of a "
        f"noisy corpus ({composition} of its tokens), SLM with score `{cfg.slm.score}` and ratio {cfg.slm.ratio}. "
        f"Held-out loss: mean cross-entropy on in-domain problems no model trained on. Output: `{out}`."
    )
    return {"description": description, "ratio": cfg.slm.ratio, "tokens_per_step": cfg.tokens_per_step,
            "probe": f"{settings.probe_batches} training-sized batches of the noisy corpus, {probe_total:,} target tokens "
                     f"({composition})", "plot": PLOT_FILE, "html": HTML_FILE}


def html_intro(context: dict[str, Any]) -> str:
    return (f"<p>Documents from the noisy training corpus, scored by the first seed's final SLM model against the "
            f"reference. Each token's background is its excess loss (model loss minus reference loss); bold "
            f"underlined tokens are those SLM trains on (top {context['ratio']:.0%} of the batch); dotted outlines "
            f"mark injected noise (web boilerplate and off-domain text). Hover a token for its losses.</p>")


def check_plans(plans: list[RunPlan]) -> None:
    """Fail early, before anything is built, if a config is missing or invalid with its overrides."""
    for plan in plans:
        if not plan.config.is_file():
            raise QuickstartError(f"{plan.config} does not exist; run from the repository root or pass --configs.")
        try:
            load_config(plan.config, list(plan.overrides))
        except ConfigError as err:
            raise QuickstartError(f"{plan.title}: {err}") from err
