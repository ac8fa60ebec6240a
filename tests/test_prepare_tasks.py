"""`python -m rho_jax.data.prepare --tasks N --workers W`: the default is today's single-process output, N tasks give
the concatenation of each task's files packed alone in task order whatever the workers, a killed prepare resumes
by task, training reads the output, and Slurm gets a job array (a stand-in sbatch here). All data are made up here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter
from slurm_stand_in import slurm_stand_in

from rho_jax.data import DataConfig, SourceConfig, eval_batches, load_tokenizer, prepared, train_dataset
from rho_jax.data.packing import source_rows
from rho_jax.data.prepare import main
from rho_jax.data.prepare_plan import PreparePlan, split_files, start_or_resume, work_directory
from rho_jax.data.sources import open_source
from rho_jax.models.parity import build_tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SEQ_LEN = 16
ROWS_PER_SHARD = 3


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("tokenizer")
    build_tiny_tokenizer(directory)
    return str(directory)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    """Five jsonl files of different sizes (7 to 23 distinct documents, every fourth with a prompt)."""
    folder = tmp_path_factory.mktemp("corpus")
    paths = []
    for f, count in enumerate((11, 7, 23, 9, 15)):
        records = [{"text": f"doc {f}-{i}: " + " ".join(f"w{f}x{i}y{j}" for j in range((i * 7 + f) % 11)),
                    "question": f"why {f}.{i}?" if i % 4 == 0 else ""} for i in range(count)]
        path = folder / f"part-{f}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        paths.append(str(path))
    return paths


def run(tokenizer_dir: str, corpus: list[str], output: Path, *options: str) -> dict | None:
    return main([f"--tokenizer={tokenizer_dir}", f"--seq_len={SEQ_LEN}", f"--output={output}", "--prompt_field=question",
                 f"--rows_per_shard={ROWS_PER_SHARD}", *options, *corpus])


def packed_records(tokenizer_dir: str, files: list[str]) -> list[bytes]:
    """Reference: the records of packing `files` alone, in file order, as online training packs them."""
    source = open_source(SourceConfig(paths=tuple(files), prompt_field="question"))
    return [prepared.row_to_record(row) for row in source_rows(source, load_tokenizer(tokenizer_dir), SEQ_LEN + 1)]


def output_records(output: Path) -> list[bytes]:
    """The records of a prepared directory in the order training reads them (shards sorted by name)."""
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    paths = sorted(str(p) for p in output.glob("*.array_record"))
    source = ArrayRecordDataSource(paths)
    return [source[i] for i in range(len(source))]


def files_of(output: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(output.iterdir())}


def expected_split(corpus: list[str], tasks: int) -> list[list[str]]:
    """Reference task split: file i goes to the task whose byte range [r S / N, (r + 1) S / N) holds its middle."""
    sizes = [os.path.getsize(p) for p in corpus]
    total, start, blocks = sum(sizes), 0, [[] for _ in range(tasks)]
    for path, size in zip(corpus, sizes):
        middle = start + size / 2
        blocks[next(r for r in range(tasks) if middle < (r + 1) * total / tasks)].append(path)
        start += size
    return blocks


def test_default_single_task_output_is_todays_single_process_output(tokenizer_dir, corpus, tmp_path):
    metadata = run(tokenizer_dir, corpus, tmp_path / "out")
    records = packed_records(tokenizer_dir, corpus)
    assert output_records(tmp_path / "out") == records
    # Today's writer: shards of ROWS_PER_SHARD records, group_size 1, named rows-00000... -- byte for byte.
    reference = tmp_path / "reference"
    reference.mkdir()
    for k in range(0, len(records), ROWS_PER_SHARD):
        writer = ArrayRecordWriter(str(reference / prepared.shard_name(k // ROWS_PER_SHARD)), "group_size:1")
        for record in records[k:k + ROWS_PER_SHARD]:
            writer.write(record)
        writer.close()
    written = files_of(tmp_path / "out")
    assert {name: data for name, data in written.items() if name.endswith(".array_record")} == files_of(reference)
    assert metadata["shards"] == sorted(files_of(reference))
    assert (metadata["num_rows"], metadata["num_documents"]) == (len(records), 65)
    assert metadata["tasks"] == [{"files": corpus, "num_rows": len(records), "num_tokens": metadata["num_tokens"],
                                  "num_documents": 65, "shards": metadata["shards"]}]
    assert not work_directory(tmp_path / "out").exists()


@pytest.mark.parametrize("tasks", [3, 7])
def test_n_tasks_concatenate_each_tasks_files_packed_alone(tokenizer_dir, corpus, tmp_path, tasks):
    metadata = run(tokenizer_dir, corpus, tmp_path / "out", f"--tasks={tasks}")
    split = expected_split(corpus, tasks)
    assert [task["files"] for task in metadata["tasks"]] == split and sum(map(bool, split)) >= 3
    per_task = [packed_records(tokenizer_dir, files) if files else [] for files in split]
    assert output_records(tmp_path / "out") == [record for records in per_task for record in records]
    assert metadata["shards"] == [prepared.shard_name(k) for k in range(len(metadata["shards"]))]
    assert metadata["shards"] == [name for task in metadata["tasks"] for name in task["shards"]]

    # What stays identical to one task: the documents' tokens, in the same order; what changes: each task
    # starts a new row, so rows differ from the first task border on and each task's last row is padded.
    def token_stream(records):
        rows = [prepared.record_to_row(r, SEQ_LEN + 1) for r in records]
        return np.concatenate([row["tokens"][row["segment_ids"] != 0] for row in rows])

    single = packed_records(tokenizer_dir, corpus)
    np.testing.assert_array_equal(token_stream(output_records(tmp_path / "out")), token_stream(single))
    assert metadata["num_tokens"] == len(token_stream(single)) and metadata["num_documents"] == 65
    assert metadata["num_rows"] >= len(single)


def test_task_split_is_contiguous_and_balanced_by_bytes():
    sizes = [5, 1, 1, 30, 2, 2, 2, 40, 1]
    paths = [f"f{i}" for i in range(len(sizes))]
    for tasks in range(1, 12):
        blocks = split_files(paths, sizes, tasks)
        assert [p for block in blocks for p in block] == paths and len(blocks) == tasks
        start = 0
        for rank, block in enumerate(blocks):
            for path in block:
                size = sizes[paths.index(path)]
                assert rank * sum(sizes) <= (start + size / 2) * tasks < (rank + 1) * sum(sizes)
                start += size
    assert split_files(["a", "b"], [0, 0], 2) == [["a", "b"], []]
    with pytest.raises(ValueError, match="--tasks must be >= 1, got 0"):
        split_files(paths, sizes, 0)


def test_a_rerun_with_other_settings_or_changed_files_is_refused(tmp_path, corpus):
    plan = PreparePlan(tokenizer="tok", tokenizer_fingerprint="abc", seq_len=16, rows_per_shard=8, format="jsonl",
                       text_field="text", prompt_field=None, text_split="file", on_bad_record="error",
                       files=[{"path": "a", "bytes": 1, "mtime_ns": 2}], task_files=[["a"]])
    work = tmp_path / ".out.prepare"
    assert start_or_resume(work, plan) is False
    assert start_or_resume(work, plan) is True
    other = PreparePlan(**{**plan.__dict__, "seq_len": 32, "files": [{"path": "a", "bytes": 1, "mtime_ns": 3}]})
    with pytest.raises(ValueError, match=r"unfinished prepare with other files, seq_len .* delete that folder"):
        start_or_resume(work, other)


def test_training_reads_an_n_task_output(tokenizer_dir, corpus, tmp_path):
    run(tokenizer_dir, corpus, tmp_path / "out", "--tasks=3")
    split = expected_split(corpus, 3)
    expected = [prepared.record_to_row(r, SEQ_LEN + 1) for files in split for r in packed_records(tokenizer_dir, files)]
    tok = load_tokenizer(tokenizer_dir)
    source = SourceConfig(paths=(str(tmp_path / "out" / "*.array_record"),))
    batches = eval_batches(source, tok, seq_len=SEQ_LEN, global_batch_rows=1, max_rows=None)
    assert len(batches) == len(expected)
    for batch, row in zip(batches, expected):
        np.testing.assert_array_equal(batch["input_ids"][0], row["tokens"][:-1])
        np.testing.assert_array_equal(batch["targets"][0], row["tokens"][1:])
    cfg = DataConfig(tokenizer=tokenizer_dir, sources=(source,), seq_len=SEQ_LEN)
    first = next(iter(train_dataset(cfg, tok, batch_rows=2)))
    assert first["input_ids"].shape == (2, SEQ_LEN)
    with pytest.raises(ValueError, match=r"seq_len 16, but data\.seq_len is 32"):
        train_dataset(DataConfig(tokenizer=tokenizer_dir, sources=(source,), seq_len=32), tok, batch_rows=2)


@pytest.mark.slow
def test_the_output_does_not_depend_on_the_workers(tokenizer_dir, corpus, tmp_path):
    run(tokenizer_dir, corpus, tmp_path / "one", "--tasks=4", "--workers=1")
    run(tokenizer_dir, corpus, tmp_path / "two", "--tasks=4", "--workers=2")
    assert files_of(tmp_path / "one") == files_of(tmp_path / "two")
    assert len(json.loads((tmp_path / "one" / "metadata.json").read_text())["shards"]) > 4


KILLED_PREPARE = r'''
import os, signal, sys
from rho_jax.data import prepare_task
from rho_jax.data.prepare import main

marker, ranks_log = sys.argv[1:3]
original_run_task, original_write_shards = prepare_task.run_task, prepare_task.write_shards
running = {}


def run_task(work, rank):
    with open(ranks_log, "a") as log:
        log.write(f"{rank}\n")
    running["rank"] = rank
    return original_run_task(work, rank)


def write_shards(rows, directory, rows_per_shard, progress):
    """Task 1, the first time: SIGKILL to the whole process group after 4 rows, as a scheduler kills a job."""
    def rows_then_kill():
        for k, row in enumerate(rows):
            if running["rank"] == 1 and k == 4 and not os.path.exists(marker):
                open(marker, "w").close()
                os.killpg(0, signal.SIGKILL)
            yield row
    return original_write_shards(rows_then_kill(), directory, rows_per_shard, progress)


prepare_task.run_task, prepare_task.write_shards = run_task, write_shards
if __name__ == "__main__":  # helper processes start from a fork server, which imports this module
    main(sys.argv[3:])
'''


@pytest.mark.slow
def test_a_killed_prepare_resumes_by_task(tokenizer_dir, corpus, tmp_path):
    script = tmp_path / "killed_prepare.py"
    script.write_text(KILLED_PREPARE)
    output = tmp_path / "out"
    args = [sys.executable, str(script), str(tmp_path / "marker"), str(tmp_path / "ranks"), f"--tokenizer={tokenizer_dir}",
            f"--seq_len={SEQ_LEN}", f"--output={output}", "--prompt_field=question", f"--rows_per_shard={ROWS_PER_SHARD}",
            "--tasks=3", *corpus]
    first = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300, start_new_session=True)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    work = work_directory(output)
    assert sorted(p.name for p in (work / "logs" / "completions").iterdir()) == ["00000"]
    assert (work / "task-00001.partial").is_dir() and not output.exists()
    second = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300, start_new_session=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming the prepare" in second.stdout
    assert (tmp_path / "ranks").read_text().split() == ["0", "1", "1", "2"]  # task 0 was not run again
    run(tokenizer_dir, corpus, tmp_path / "uninterrupted", "--tasks=3")
    assert files_of(output) == files_of(tmp_path / "uninterrupted")
    assert not work.exists()


@pytest.mark.slow
def test_slurm_submits_a_job_array_and_a_rerun_publishes_what_the_jobs_wrote(tokenizer_dir, corpus, tmp_path):
    fake = tmp_path / "fake"
    env = slurm_stand_in(fake)
    output = tmp_path / "out"
    command = [sys.executable, "-m", "rho_jax.data.prepare", f"--tokenizer={tokenizer_dir}", f"--seq_len={SEQ_LEN}",
               f"--output={output}", "--prompt_field=question", f"--rows_per_shard={ROWS_PER_SHARD}", "--executor=slurm",
               "--partition=cpu", "--tasks=2", "--time=2:00:00", "--env-command=export PREPARE_ENV=ready", *corpus]
    submit = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert submit.returncode == 0, submit.stderr[-2000:]
    assert "rerun the same command" in submit.stdout and not output.exists()
    calls = (fake / "sbatch_calls").read_text().splitlines()
    assert len(calls) == 2 and calls[0].startswith("--export=ALL,RUN_OFFSET=0")
    job = (fake / "job_1.sh").read_text()
    for directive in ("--array=0-1", "--partition=cpu", "--time=2:00:00", "--cpus-per-task=1", "--job-name=prepare"):
        assert f"#SBATCH {directive}\n" in job, directive
    assert "export PREPARE_ENV=ready" in job
    assert f"launch_pickled_pipeline {work_directory(output) / 'logs' / 'executor.pik'}" in job
    for task in ("0", "1"):  # the cluster runs the array
        result = subprocess.run(["bash", str(fake / "job_1.sh")], env={**env, "SLURM_ARRAY_TASK_ID": task,
                                "SLURM_NODELIST": "localhost", "SLURM_JOB_ID": "42"}, capture_output=True, text=True,
                                timeout=300, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    publish = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert publish.returncode == 0, publish.stderr[-2000:]
    assert len((fake / "sbatch_calls").read_text().splitlines()) == 2  # nothing submitted again
    run(tokenizer_dir, corpus, tmp_path / "local", "--tasks=2")
    assert files_of(output) == files_of(tmp_path / "local")


@pytest.mark.slow
def test_the_same_tasks_on_a_local_ray_cluster(tokenizer_dir, corpus, tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install ray): the Ray executor is untested here")
    from rho_jax.data.prepare import build_parser, prepare

    args = build_parser().parse_args([f"--tokenizer={tokenizer_dir}", f"--seq_len={SEQ_LEN}",
                                      f"--output={tmp_path / 'ray'}", "--executor=ray", "--tasks=3", "--workers=2", *corpus])
    args.mem_per_cpu_gb = 0.5
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        prepare(SourceConfig(paths=tuple(corpus), prompt_field="question"), tokenizer=tokenizer_dir, seq_len=SEQ_LEN,
                output=str(tmp_path / "ray"), rows_per_shard=ROWS_PER_SHARD, executor=args)
    finally:
        ray.shutdown()
    run(tokenizer_dir, corpus, tmp_path / "local", "--tasks=3")
    assert files_of(tmp_path / "ray") == files_of(tmp_path / "local")
