"""Check rho_jax's task samples against the paper's math evaluation harness, byte for byte.

    python scripts/check_prompts.py --harness HARNESS_DIR --data-dir DATA_DIR --fewshot-dir PROMPTS_DIR
                                    [--published OUTPUTS_DIR] [--tasks gsm8k,math]

HARNESS_DIR is a checkout of the harness (its parser.py, utils.py, data_loader.py are imported and
run, unmodified; the `datasets` import is stubbed when the package is missing, since only local
files are read). For every shipped task whose test file exists under DATA_DIR (or else under the
harness's own data/), the harness's load_data + parse_question + parse_ground_truth +
construct_prompt (prompt type "cot", exemplar files from PROMPTS_DIR, else the harness's own
prompts/cot/) are compared with `build_samples`: sample order (idx), question, gt, gt_cot and
prompt. With --published (a folder with the harness's output folders, e.g. gsm8k/ and
minerva_math/), each output file's `question`, `gt` and `gt_cot` are compared with ours too.

Prints per-task counts and the first difference; exits 1 if anything differs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import os
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rho_jax.evaluation.tasks import Sample, build_samples, load_task, shipped_task_names

# The harness's data name for a shipped task, where they differ (its MATH500 run is "minerva_math").
HARNESS_NAMES = {"math": "minerva_math"}
COMPARED = ("question", "gt", "gt_cot", "prompt")


def import_harness(harness: Path) -> types.SimpleNamespace:
    """The harness's parser, utils and data_loader modules, imported from its checkout."""
    try:
        importlib.import_module("datasets")
    except ImportError:
        stub = types.ModuleType("datasets")

        def _unavailable(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("the harness tried to download a dataset; only local files are compared")

        stub.load_dataset = stub.concatenate_datasets = _unavailable
        stub.Dataset = types.SimpleNamespace(from_list=_unavailable)
        sys.modules["datasets"] = stub
    sys.path.insert(0, str(harness))
    try:
        modules = {name: importlib.import_module(name) for name in ("utils", "parser", "data_loader")}
    finally:
        sys.path.remove(str(harness))
    return types.SimpleNamespace(**modules)


@contextlib.contextmanager
def prompts_cwd(fewshot_dir: Path, harness: Path) -> Iterator[None]:
    """Run with a working directory whose prompts/cot/ holds fewshot_dir's files (the harness reads
    ./prompts/cot/<name>.md), falling back to the harness's own exemplar files."""
    with tempfile.TemporaryDirectory() as tmp:
        cot = Path(tmp) / "prompts" / "cot"
        cot.mkdir(parents=True)
        for source in (harness / "prompts" / "cot", fewshot_dir):  # fewshot_dir's files win
            for file in source.glob("*.md") if source.is_dir() else []:
                target = cot / file.name
                target.unlink(missing_ok=True)
                target.symlink_to(file.resolve())
        previous = os.getcwd()
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(previous)


def harness_samples(h: types.SimpleNamespace, data_name: str, data_root: Path) -> list[dict[str, Any]]:
    """The harness's idx, question, gt_cot, gt and prompt of every test example, as its math_eval.py makes them."""
    args = types.SimpleNamespace(prompt_type="cot")
    out = []
    for example in h.data_loader.load_data(data_name, "test", str(data_root)):
        example = copy.deepcopy(example)
        example["question"] = h.parser.parse_question(example, data_name)
        gt_cot, gt = h.parser.parse_ground_truth(example, data_name)
        out.append({"idx": example["idx"], "question": example["question"], "gt_cot": gt_cot, "gt": gt,
                    "prompt": h.utils.construct_prompt(example, data_name, args)})
    return out


def first_difference(ours: str, theirs: str) -> str:
    at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return f"at char {at}: ours {ours[max(at - 40, 0):at + 40]!r} vs harness {theirs[max(at - 40, 0):at + 40]!r}"


def compare(label: str, ours: list[Sample], theirs: list[dict[str, Any]], keys: tuple[str, ...]) -> bool:
    """Print how many of `keys` agree sample by sample (matched by idx) and the first difference of each."""
    by_idx = {row["idx"]: row for row in theirs}
    matched = [(sample, by_idx[sample.idx]) for sample in ours if sample.idx in by_idx]
    ok = len(ours) == len(theirs) == len(matched)
    order = [s.idx for s in ours] == [row["idx"] for row in theirs]
    print(f"{label}: {len(ours)} samples (reference {len(theirs)}, matched by idx {len(matched)}, "
          f"same order {'yes' if order else 'NO'})")
    ok &= order
    for key in keys:
        same = 0
        first = None
        for sample, row in matched:
            mine = sample.fields.get("gt_cot") if key == "gt_cot" else getattr(sample, key)
            if key == "gt_cot" and mine is None:  # no cot field in the spec: the harness writes str(None)
                mine = "None"
            if mine == row[key]:
                same += 1
            elif first is None:
                first = f"idx {sample.idx}: {first_difference(str(mine), str(row[key]))}"
        print(f"  {key:9s} identical {same}/{len(matched)}" + (f"; first difference {first}" if first else ""))
        ok &= same == len(matched)
    return ok


def read_published(folder: Path) -> list[dict[str, Any]]:
    from rho_jax.training.run_dir import read_jsonl

    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise SystemExit(f"--published: no *.jsonl file in {folder}")
    return [row for file in files for row in read_jsonl(file)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--harness", type=Path, required=True, help="a checkout of the math evaluation harness")
    parser.add_argument("--data-dir", type=Path, required=True, help="the tasks' data (<name>/test.jsonl)")
    parser.add_argument("--fewshot-dir", type=Path, required=True, help="the exemplar files (<name>.md)")
    parser.add_argument("--published", type=Path, default=None, help="a folder of harness outputs (<data name>/*.jsonl)")
    parser.add_argument("--tasks", default=None, help="comma-separated shipped task names (default: all)")
    args = parser.parse_args(argv)
    if not (args.harness / "parser.py").is_file():
        raise SystemExit(f"--harness: {args.harness} has no parser.py; give a checkout of the math evaluation harness")
    h = import_harness(args.harness)
    all_ok = True
    for name in args.tasks.split(",") if args.tasks else shipped_task_names():
        spec = load_task(name)
        if spec.source.file is None:
            print(f"{name}: skipped (not a file source)")
            continue
        roots = [root for root in (args.data_dir, args.harness / "data") if (root / spec.source.file).is_file()]
        if not roots:
            print(f"{name}: skipped (no {spec.source.file} under --data-dir or the harness's data/)")
            continue
        fewshot_dir = args.fewshot_dir if (args.fewshot_dir / (spec.fewshot_file or "")).is_file() \
            else args.harness / "prompts" / "cot"
        ours = build_samples(spec, data_dir=roots[0], fewshot_dir=fewshot_dir)
        data_name = HARNESS_NAMES.get(name, name)
        with prompts_cwd(fewshot_dir, args.harness):
            theirs = harness_samples(h, data_name, roots[0])
        all_ok &= compare(f"{name} vs harness {data_name} ({roots[0] / spec.source.file}, exemplars {fewshot_dir})",
                          ours, theirs, COMPARED)
        published = args.published / data_name if args.published else None
        if published is not None and published.is_dir():
            all_ok &= compare(f"{name} vs published {published}", ours, read_published(published),
                              ("question", "gt", "gt_cot"))
    print("all identical" if all_ok else "DIFFERENCES FOUND")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
