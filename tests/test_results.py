"""downstream.results: round trip, concurrent atomic appends, corrupt-line errors."""
from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from downstream import results
from downstream.results import ResultRecord


def _record(i: int = 0) -> ResultRecord:
    return ResultRecord(upstream="ssast_patch_mini", task="esc50", split="test", metric="accuracy", value=0.5,
                        fold=1 + i % 5, mode="frozen", config={"runner": {"total_steps": i}},
                        expname=f"run{i}")


def test_round_trip(tmp_path):
    path = tmp_path / "r" / "results.jsonl"
    recs = [_record(i) for i in range(3)]
    for r in recs:
        results.append(r, path)
    back = results.load(path)
    assert back == recs
    assert back[0].config_hash == results.config_hash({"runner": {"total_steps": 0}})
    assert back[0].code_version and back[0].timestamp
    assert results.load(tmp_path / "missing.jsonl") == []


def test_bad_mode_raises():
    with pytest.raises(ValueError, match="mode"):
        ResultRecord(upstream="u", task="t", split="test", metric="accuracy", value=1.0, mode="probe")


def _writer(path: str, offset: int, n: int) -> None:
    big = {"blob": "x" * 20000}  # lines far larger than PIPE_BUF, so interleaving would show
    for i in range(n):
        r = _record(offset + i)
        r.config = big
        results.append(r, path)


def test_concurrent_appends_stay_whole(tmp_path):
    path = str(tmp_path / "results.jsonl")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, k * 100, 25)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = open(path).read().splitlines()
    assert len(lines) == 50
    assert all(json.loads(line)["config"]["blob"] == "x" * 20000 for line in lines)
    assert len(results.load(path)) == 50


def test_corrupt_line_named(tmp_path):
    path = tmp_path / "results.jsonl"
    results.append(_record(0), path)
    with open(path, "a") as f:
        f.write('{"upstream": "half a line\n')
    results.append(_record(1), path)
    with pytest.raises(ValueError, match="line 2"):
        results.load(path)
    assert len(results.load(path, skip_corrupt=True)) == 2


@pytest.mark.parametrize("status, want", [("", "abc123"), (" M downstream/job.py\n", "abc123+dirty")])
def test_code_version_marks_edited_tracked_files(monkeypatch, status, want):
    """A record claims a commit only when no tracked file differs from it (git's answers stubbed)."""
    import subprocess

    answers = {"rev-parse": "abc123\n", "status": status}

    def fake_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 0, stdout=answers[cmd[1]], stderr="")

    monkeypatch.setattr(results, "_CODE_VERSION", None)
    monkeypatch.setattr(results.subprocess, "run", fake_run)
    assert results.code_version() == want
