"""Few-shot task accuracy during training (`eval.tasks`, the paper's Figure 1: accuracy vs tokens).

At each evaluation the model's current parameters generate greedy completions of every task's
first `limit` samples (one `Generator`, built at the first evaluation and given new parameters
after, so its programs compile once), which are graded as `python -m rho_jax.evaluate run` grades
them. Every process takes part in generation (the parameters are sharded over the whole mesh);
process 0 grades and writes each evaluation's samples to `<run>/eval_samples/<task>/step_<N>.jsonl`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from flax import nnx
from jax.sharding import Mesh

from rho_jax.evaluation.runner import generate_missing, graded_rows, sampling_for
from rho_jax.evaluation.sample_files import write_jsonl
from rho_jax.evaluation.tasks import Sample, TaskSpec, build_samples, load_task
from rho_jax.generation import Generator, SamplingParams
from rho_jax.training.config import EvalConfig

SAMPLES_DIR = "eval_samples"


@dataclasses.dataclass(frozen=True)
class TrainingTask:
    """A task as evaluated during training: its spec, samples and sampling settings."""

    spec: TaskSpec
    samples: list[Sample]
    params: SamplingParams


def training_tasks(eval_cfg: EvalConfig) -> list[TrainingTask]:
    """The tasks of `eval.tasks` with their samples built (every input checked; nothing generated yet)."""
    data_dir = Path(eval_cfg.task_data_dir) if eval_cfg.task_data_dir else None
    fewshot_dir = Path(eval_cfg.fewshot_dir) if eval_cfg.fewshot_dir else None
    tasks = []
    for name, task_cfg in eval_cfg.tasks.items():
        spec = load_task(name)
        samples = build_samples(spec, data_dir=data_dir, fewshot_dir=fewshot_dir, limit=task_cfg.limit)
        tasks.append(TrainingTask(spec, samples, sampling_for(spec, task_cfg.max_new_tokens, SamplingParams())))
    return tasks


class TaskEvaluator:
    """`evaluator(params, step)` -> {task name: {"accuracy" (%), "num_samples", ...}} (on process 0; {} elsewhere)."""

    def __init__(self, tasks: list[TrainingTask], graphdef: nnx.GraphDef, tokenizer: Any, mesh: Mesh, batch_size: int,
                 run_dir: Path, primary: bool):
        self.tasks, self.graphdef, self.tokenizer, self.mesh = tasks, graphdef, tokenizer, mesh
        self.batch_size, self.run_dir, self.primary = batch_size, run_dir, primary
        self.generator: Generator | None = None

    def _generator(self, params: nnx.State) -> Generator:
        if self.generator is None:
            self.generator = Generator(nnx.merge(self.graphdef, params), self.tokenizer, self.mesh,
                                       batch_size=self.batch_size)
        else:
            self.generator.set_params(params)
        return self.generator

    def __call__(self, params: nnx.State, step: int) -> dict[str, dict[str, Any]]:
        generator = self._generator(params)
        results = {}
        for task in self.tasks:
            generations = generate_missing(generator, task.samples, {}, task.params, None, progress=False)
            if not self.primary:
                continue
            rows, result = graded_rows(task.spec, task.samples, generations, percent_leniency=True)
            directory = self.run_dir / SAMPLES_DIR / task.spec.name
            directory.mkdir(parents=True, exist_ok=True)
            write_jsonl(directory / f"step_{step}.jsonl", rows)
            results[task.spec.name] = result.to_json()
        return results
