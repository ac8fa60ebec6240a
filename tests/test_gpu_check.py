"""The GPU check's orchestration (`rho_jax.bench.parts`, `python -m rho_jax.bench gpu`): each part in its own
process under its time limit, the report rewritten after every part, a failing or timed-out part recorded
with what it measured before while the parts after it still run; the whole check in --smoke mode on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rho_jax.bench import gpu_check
from rho_jax.bench import parts as part_runner
from rho_jax.bench.parts import Part, run_parts

# A fake part: records "before", then per mode raises, sleeps past any budget, or counts the report's parts so far.
CHILD = """
import json, sys, time
from rho_jax.bench.parts import PartRecorder
recorder = PartRecorder(sys.argv[1])
recorder.record("before", 1.5)
mode, report = sys.argv[2], sys.argv[3]
if mode == "raise":
    raise ValueError("boom in the child")
if mode == "sleep":
    time.sleep(120)
recorder.record("parts_in_report", len(json.load(open(report))["parts"]) if mode == "peek" else 0)
"""


def _run(tmp_path, modes, budgets, total_budget_s=60.0):
    specs = [Part(name, name.title(), budgets.get(name, 30.0)) for name in modes]
    report_file = tmp_path / "report.json"

    def command(part, part_file, timeout_s):
        return [sys.executable, "-c", CHILD, str(part_file), modes[part.name], str(report_file)]

    return run_parts(specs, command, tmp_path, total_budget_s, {"title": "fake check"})


def test_failed_and_timed_out_parts_keep_their_results_and_later_parts_run(tmp_path):
    report = _run(tmp_path, {"first": "ok", "broken": "raise", "stuck": "sleep", "last": "peek"}, {"stuck": 2.0})
    first, broken, stuck, last = report["parts"]
    assert (first["status"], first["error"], first["results"]) == ("ok", None, {"before": 1.5, "parts_in_report": 0})
    assert broken["status"] == "failed" and broken["error"] == "ValueError: boom in the child"
    assert broken["results"] == {"before": 1.5}
    assert stuck["status"] == "timed out" and stuck["error"] == "timed out after 2 s"
    assert stuck["results"] == {"before": 1.5} and 2.0 <= stuck["seconds"] < 20
    assert last["status"] == "ok" and last["results"]["parts_in_report"] == 3  # the report was on disk part by part
    assert json.loads((tmp_path / "report.json").read_text()) == report
    markdown = (tmp_path / "report.md").read_text()
    assert "## Stuck (stuck): timed out, 2 s of 2 s" in markdown and "error: `ValueError: boom in the child`" in markdown
    assert "boom in the child" in (tmp_path / "parts.log").read_text()


def test_total_budget_caps_a_part_and_skips_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(part_runner, "MIN_PART_S", 1.0)  # a part needs 1 s of the total budget left to start
    report = _run(tmp_path, {"stuck": "sleep", "never": "ok"}, {}, total_budget_s=2.0)
    stuck, never = report["parts"]
    assert stuck["status"] == "timed out" and stuck["budget_s"] == pytest.approx(2.0, abs=0.2)
    assert never["status"] == "skipped" and never["results"] == {} and "of the total budget 2 s" in never["error"]


# A check whose one part writes its process id and sleeps.
ORCHESTRATOR = """
import pathlib, sys
from rho_jax.bench.parts import Part, run_parts
out = pathlib.Path(sys.argv[1])
child = ("import os, pathlib, sys, time; tmp = pathlib.Path(sys.argv[1] + '.tmp'); tmp.write_text(str(os.getpid())); "
         "tmp.rename(sys.argv[1]); time.sleep(120)")
run_parts([Part("stuck", "Stuck", 60)], lambda part, f, t: [sys.executable, "-c", child, str(out / "child.pid")], out, 60, {})
"""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_stopped_check_ends_its_running_part(tmp_path):
    """SIGTERM (what `timeout` sends) to the check kills the part's process, which has a session of its own."""
    check = subprocess.Popen([sys.executable, "-c", ORCHESTRATOR, str(tmp_path)])
    pid_file, deadline = tmp_path / "child.pid", time.monotonic() + 60
    while not pid_file.exists():
        assert time.monotonic() < deadline and check.poll() is None
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert _alive(child)
    check.send_signal(signal.SIGTERM)
    assert check.wait(timeout=30) == 128 + signal.SIGTERM
    assert not _alive(child)
    assert json.loads((tmp_path / "report.json").read_text())["parts"] == []  # written before the first part


def test_junit_summary_counts_and_names_failures(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text('''<testsuites><testsuite name="pytest" tests="5" failures="1" errors="1" skipped="1" time="2.5">
<testcase classname="tests.test_a" name="test_ok"/>
<testcase classname="tests.test_a" name="test_bad"><failure message="AssertionError: 3 != 4&#10;more">tb</failure></testcase>
<testcase classname="tests.test_b" name="test_err"><error message="">tb</error></testcase>
<testcase classname="tests.test_b" name="test_skip"><skipped message="no GPU"/></testcase>
<testcase classname="tests.test_b" name="test_ok2"/></testsuite></testsuites>''')
    summary, failures = gpu_check.junit_summary(xml)
    assert summary == {"passed": 2, "failed": 2, "skipped": 1, "seconds": 2.5}
    assert failures == [{"test": "tests.test_a::test_bad", "message": "AssertionError: 3 != 4"},
                        {"test": "tests.test_b::test_err", "message": ""}]


@pytest.mark.parametrize("online, precomputed, mfu, share, verdicts", [
    (1.40, 1.05, 0.40, 0.0299, ["PASS", "PASS", "PASS", "PASS"]),  # at the thresholds; the selection's is strict
    (1.41, 1.06, 0.39, 0.03, ["MISS", "MISS", "MISS", "MISS"]),
    (1.2, 1.0, None, None, ["PASS", "PASS", "n/a", "n/a"]),  # no datasheet peak, no --selection-tokens
])
def test_targets_pass_or_miss_at_their_thresholds(online, precomputed, mfu, share, verdicts):
    result = {"rows": [{"variant": "CLM", "ratio": 1.0, "mfu": 0.5},
                       {"variant": "SLM (online reference)", "ratio": online, "mfu": mfu},
                       {"variant": "SLM (precomputed scores)", "ratio": precomputed, "mfu": 0.5}],
              "large_selection": None if share is None else {"seconds": 0.1, "share": share}}
    rows = gpu_check.target_rows(result)
    assert [row["verdict"] for row in rows] == verdicts
    assert [row["measured"] for row in rows] == [online, precomputed, mfu, share]
    assert [row["threshold"] for row in rows] == ["<= 1.4", "<= 1.05", ">= 0.4", "< 0.03"]


@pytest.mark.parametrize("argv, message", [
    (["--parts", "step,warp"], "unknown part"),
    (["--part-budget", "step=0"], "SECONDS > 0"),
    (["--part-budget", "nope=3"], "unknown part 'nope'"),
    (["--budget-s", "-1"], "positive"),
])
def test_bad_arguments_are_refused_before_any_part_runs(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        gpu_check.main([*argv, "--output", str(tmp_path / "out")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_part_limits_fit_the_check_s_budget_and_the_script_s_limit():
    """The parts' own limits add up to the default total, which leaves gpu_check.sh's hard limit time to start."""
    assert sum(part.budget_s for part in gpu_check.PARTS) == gpu_check.DEFAULT_BUDGET_S
    script = (gpu_check.ROOT / "scripts" / "gpu_check.sh").read_text()
    assert "${GPU_CHECK_TIMEOUT_S:-480}" in script and gpu_check.DEFAULT_BUDGET_S + 20 <= 480 <= 8 * 60


def test_synthetic_rows_hold_the_asked_number_of_packed_documents():
    batch = gpu_check._synthetic_batch(vocab_size=50, batch=3, seq_len=40, documents=4, seed=1)
    assert batch["input_ids"].shape == batch["segment_ids"].shape == (3, 40) and batch["input_ids"].max() < 50
    for segments in batch["segment_ids"]:
        assert sorted(set(segments)) == [1, 2, 3, 4] and list(segments) == sorted(segments)  # 4 contiguous runs
    assert list((~batch["valid"]).sum(axis=1)) == [3, 3, 3]  # no target across the 3 document boundaries of a row


def _smoke(tmp_path, monkeypatch, *argv):
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # the children run on this process's one CPU device
    code = gpu_check.main(["--smoke", "--output", str(tmp_path), *argv])
    report = json.loads((tmp_path / "report.json").read_text())
    return code, {part["name"]: part for part in report["parts"]}


@pytest.mark.slow
def test_smoke_check_reports_every_part_with_numbers(tmp_path, monkeypatch):
    code, parts = _smoke(tmp_path, monkeypatch)
    assert code == 0 and list(parts) == list(gpu_check.PART_NAMES)
    assert all(part["status"] == "ok" for part in parts.values()), {n: p["error"] for n, p in parts.items()}
    assert parts["environment"]["results"]["platform"] == "cpu"
    assert parts["correctness"]["results"]["attention kernels"] == pytest.approx(
        {"passed": 1, "failed": 0, "skipped": 0, "seconds": parts["correctness"]["results"]["attention kernels"]["seconds"]})
    step = parts["step"]["results"]
    assert [row["variant"] for row in step["variants"]][:3] == ["CLM", "SLM (online reference)", "SLM (precomputed scores)"]
    assert all(row["step_ms"] > 0 and row["tokens_per_s"] > 0 for row in step["variants"])
    assert step["variants"][0]["time_over_clm"] == 1.0
    assert [row["verdict"] in ("PASS", "MISS") for row in step["targets"]] == [True] * 4
    assert step["targets"][0]["measured"] == step["variants"][1]["time_over_clm"]
    remat = parts["remat"]["results"]
    assert [row["batch"] for row in remat["tries"]] == [1, 2] and all(row["fits"] for row in remat["tries"])
    assert remat["largest_batch_that_fits"] == 2 and remat["tries"][1]["step_ms"] > 0
    steps = {(row["seq"], row["attention"]): row for row in parts["attention"]["results"]["steps"]}
    assert set(steps) == {(64, "blockwise"), (64, "cudnn"), (128, "blockwise"), (128, "cudnn")}
    assert steps[(128, "blockwise")]["batch"] == 2 and steps[(128, "blockwise")]["step_ms"] > 0
    assert "cuDNN" in steps[(64, "cudnn")]["error"]  # a kernel the device lacks is an error row, not the end
    trainer = parts["trainer"]["results"]
    assert trainer["trainer_tokens_per_s"] > 0 and trainer["bare_tokens_per_s"] > 0
    assert trainer["trainer_over_bare_tokens_per_s"] == pytest.approx(trainer["bare_step_ms"] / trainer["trainer_step_ms"])
    markdown = (tmp_path / "report.md").read_text()
    assert all(f"## {part.title} ({part.name}): ok" in markdown for part in gpu_check.PARTS)
