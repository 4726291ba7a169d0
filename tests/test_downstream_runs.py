"""Whole runs: exact resume, two torchrun ranks equal one process, ESC-50 epoch selection."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import run_downstream
from common.distributed import StepBatchSampler
from downstream import results
from downstream.tasks import get_task
from tests.layouts import BUILDERS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(tmp_path) -> Path:
    return BUILDERS["folder"](tmp_path / "data")["root"]


def _args(tmp_path, root, name, *extra):
    return ["-u", "ssast_patch_mini", "-d", "folder", "--data-root", str(root), "--expdir",
            str(tmp_path / "exp"),
            "--results", str(tmp_path / f"{name}.jsonl"), "-n", name, "--cache-dir", str(tmp_path / "cache"),
            "--device", "cpu", "-o", "runner.batch_size=4", "-o", "runner.eval_batch_size=8", *extra]


def _evals(tmp_path, name) -> list[dict]:
    return [json.loads(line) for line in open(tmp_path / "exp" / name / "evals.jsonl")]


def _assert_same_predictions(path_a: Path, path_b: Path, atol: float = 1e-4) -> None:
    """Two ``predictions.<split>.jsonl`` of models equal up to float summation order: the same clips in the
    same order, every class score within ``atol``, and the same predicted class except where the top two
    scores are within ``2 * atol``: such noise may flip a near tie, so accuracies are not compared exactly."""
    a, b = ([json.loads(line) for line in open(p)] for p in (path_a, path_b))
    assert [r["uid"] for r in a] == [r["uid"] for r in b] and a
    for x, y in zip(a, b, strict=True):
        sx, sy = dict(x["topk"]), dict(y["topk"])
        assert sx.keys() == sy.keys(), x["uid"]
        np.testing.assert_allclose([sx[c] for c in sx], [sy[c] for c in sx], rtol=0, atol=atol,
                                   err_msg=x["uid"])
        first, second = sorted(sx.values(), reverse=True)[:2]
        if first - second > 2 * atol:
            assert x["pred"] == y["pred"], x["uid"]


def test_step_sampler_slices_one_global_batch_and_restarts_anywhere():
    full = list(StepBatchSampler(10, 4, seed=1, start=0, stop=6))
    assert all(len(b) == 4 for b in full) and sorted(sum(full[:2], []) + full[2][:2]) == list(range(10))
    assert list(StepBatchSampler(10, 4, seed=1, start=3, stop=6)) == full[3:]
    ranks = [list(StepBatchSampler(10, 4, seed=1, start=0, stop=6, rank=r, world_size=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == full
    w = torch.tensor([1.0] * 9 + [0.0])
    assert 9 not in sum(StepBatchSampler(10, 4, seed=1, start=0, stop=20, weights=w), [])
    with pytest.raises(ValueError, match="divisible"):
        StepBatchSampler(10, 5, seed=1, start=0, stop=1, world_size=2)


@pytest.mark.parametrize("mode", [[], ["-f"]], ids=["frozen", "finetune"])
def test_resume_is_exact(tmp_path, folder, mode):
    # the run is extended from 2 to 4 steps, which re-plans a decaying lr schedule (folder_finetune.yaml's
    # cosine): extended with a constant lr here; an interrupted run is resumed in test_finetune_recipe.py
    mode = [*mode, "-o", "schedule.decay=constant"] if mode else mode
    four = ["-o", "runner.total_steps=4", "-o", "runner.eval_step=2"]
    assert run_downstream.main(_args(tmp_path, folder, "straight", *mode, *four)) == 0
    assert run_downstream.main(_args(tmp_path, folder, "split", *mode, "-o", "runner.total_steps=2",
                                     "-o", "runner.eval_step=2")) == 0
    assert run_downstream.main(_args(tmp_path, folder, "split", *mode, *four, "--resume")) == 0
    losses = {n: [e["train_loss"] for e in _evals(tmp_path, n)] for n in ("split", "straight")}
    assert losses["split"] == losses["straight"]
    a = torch.load(tmp_path / "exp/straight/last.ckpt", weights_only=False)["model"]
    b = torch.load(tmp_path / "exp/split/last.ckpt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_ranks_match_one_process_and_write_one_set_of_records(tmp_path, folder):
    opts = ["-o", "runner.total_steps=3", "-o", "runner.eval_step=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), ASTBENCH_CACHE=str(tmp_path / "cache"))
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "run_downstream.py"), *_args(tmp_path, folder, "ddp", *opts)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run_downstream.main(_args(tmp_path, folder, "single", *opts)) == 0
    ddp, single = _evals(tmp_path, "ddp"), _evals(tmp_path, "single")
    assert [e["step"] for e in ddp] == [1, 2, 3]  # one line per evaluation: rank 0 alone wrote
    np.testing.assert_allclose([e["train_loss"] for e in ddp], [e["train_loss"] for e in single], rtol=1e-5)
    recs = results.load(tmp_path / "ddp.jsonl")
    assert sorted(r.split for r in recs) == ["dev", "test"]
    last = {n: torch.load(tmp_path / "exp" / n / "last.ckpt", weights_only=False) for n in ("ddp", "single")}
    assert last["ddp"]["world_size"] == 2 and last["single"]["world_size"] == 1
    weights = {n: c["model"] for n, c in last.items()}
    assert weights["ddp"].keys() == weights["single"].keys()
    for k in weights["ddp"]:  # the gradients were summed in another order: equal up to float rounding
        torch.testing.assert_close(weights["ddp"][k], weights["single"][k], rtol=1e-4, atol=1e-6, msg=k)
    # The same final model scores the same: both last.ckpt re-scored, clip by clip (an accuracy could differ
    # by a clip whose two best classes are a near tie, so the predictions are compared, not the accuracies).
    for n in ("ddp", "single"):
        rescore = ["-m", "evaluate", "-e", str(tmp_path / "exp" / n / "last.ckpt"), "--device", "cpu",
                   "--results", str(tmp_path / "rescored.jsonl")]
        assert run_downstream.main(rescore) == 0
    for split in ("dev", "test"):
        _assert_same_predictions(tmp_path / "exp/ddp" / f"predictions.{split}.jsonl",
                                 tmp_path / "exp/single" / f"predictions.{split}.jsonl")


def test_esc50_select_over_fold_runs(tmp_path, capsys):
    curves = [[0.5, 0.7, 0.6], [0.4, 0.6, 0.9], [0.6, 0.8, 0.5], [0.5, 0.7, 0.7], [0.5, 0.7, 0.6]]
    dirs = []
    for k, curve in enumerate(curves, 1):
        d = tmp_path / f"fold{k}"
        d.mkdir()
        lines = [{"step": 34 * (i + 1), "split": "test", "accuracy": a} for i, a in enumerate(curve)]
        if k == 2:  # a resumed run re-evaluates step 68: the last line counts
            lines.insert(1, {"step": 68, "split": "test", "accuracy": 0.0})
        d.joinpath("evals.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        dirs.append(d)
    # fold means per epoch: 0.50, 0.70, 0.66 -> epoch 2 = step 68
    chosen = get_task("esc50").select_runs(dirs)
    assert chosen["step"] == 68 and chosen["fold_accuracies"] == [0.7, 0.6, 0.8, 0.7, 0.7]
    assert chosen["mean_accuracy"] == pytest.approx(0.7)
    assert run_downstream.main(["-m", "esc50-select", "-e", *map(str, dirs)]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 68
    assert run_downstream.main(["-m", "esc50-select", "-e", str(dirs[0]), str(tmp_path / "none")]) == 2
    assert "evals.jsonl" in capsys.readouterr().err
