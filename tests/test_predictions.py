"""Per-clip predictions: ``predictions.<split>.jsonl`` beside every reported evaluation
(downstream.predictions)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

import run_downstream
from downstream import results
from downstream.datasets import Clip, TaskData
from downstream.predictions import data_base, prediction_rows, write_predictions
from downstream.tasks import Loss
from tests.layouts import BUILDERS


def _task(tmp_path: Path, multilabel: bool = False) -> TaskData:
    clips = [Clip(tmp_path / "a" / "x.wav", [0, 2] if multilabel else 0, "test", uid="a/x"),
             Clip(tmp_path / "b" / "y.wav", [1] if multilabel else 1, "test", uid="b/y")]
    return TaskData("toy", ["cat", "dog", "bird"], multilabel, {"test": clips})


def test_rows_give_softmax_top_k_and_paths_relative_to_the_data_root(tmp_path):
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 3.0]])
    rows = prediction_rows(logits, torch.tensor([0, 1]), ["a/x", "b/y"], _task(tmp_path), "test", Loss.CE,
                           tmp_path.resolve(), k=2)
    e = [math.exp(2), 1.0, math.exp(1)]  # softmax of row 0 by hand: 0.665, 0.090, 0.245
    assert rows[0]["path"] == "a/x.wav" and rows[0]["label"] == "cat" and rows[0]["pred"] == "cat"
    assert [name for name, _ in rows[0]["topk"]] == ["cat", "bird"]
    assert rows[0]["topk"][0][1] == pytest.approx(e[0] / sum(e), abs=1e-6)
    assert rows[0]["topk"][1][1] == pytest.approx(e[2] / sum(e), abs=1e-6)
    assert rows[1]["label"] == "dog" and rows[1]["pred"] == "bird"  # a wrong prediction is kept as such
    # a clip outside the data root is named by split and id, never by a machine path
    outside = prediction_rows(logits, torch.tensor([0, 1]), ["a/x", "b/y"], _task(tmp_path), "test", Loss.CE,
                              tmp_path / "elsewhere")
    assert outside[0]["path"] == "test:a/x"


def test_multilabel_rows_use_sigmoid_scores_and_label_lists(tmp_path):
    logits = torch.tensor([[3.0, -3.0, 0.5], [-1.0, 0.0, -2.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    rows = prediction_rows(logits, targets, ["a/x", "b/y"], _task(tmp_path, True), "test", Loss.BCE, None,
                           k=3)
    assert rows[0]["label"] == ["cat", "bird"] and rows[0]["pred"] == ["cat", "bird"]  # sigmoid >= 0.5
    assert rows[1]["label"] == ["dog"] and rows[1]["pred"] == ["dog"]  # sigmoid(0) = 0.5 counts
    assert rows[0]["topk"][0] == ["cat", pytest.approx(1 / (1 + math.exp(-3)), abs=1e-6)]
    assert rows[0]["path"] == "test:a/x"  # no data root known


def test_rows_refuse_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match="2 clip ids"):
        prediction_rows(torch.zeros(3, 3), torch.zeros(3, dtype=torch.long), ["a/x", "b/y"], _task(tmp_path),
                        "test", Loss.CE, None)


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = write_predictions(tmp_path / "predictions.test.jsonl", [{"path": "a.wav", "pred": "é"}])
    assert [json.loads(x)
            for x in path.read_text(encoding="utf-8").splitlines()] == [{"path": "a.wav", "pred": "é"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.test.jsonl"]


def test_data_base_is_the_root_folder_or_the_manifest_folder(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\n")
    assert data_base(tmp_path) == tmp_path.resolve()
    assert data_base(tmp_path / "m.csv") == tmp_path.resolve()
    assert data_base(tmp_path / "missing") is None


def _args(tmp_path, root, task, name, *extra):
    return ["-u", "ssast_patch_mini", "-d", task, "--data-root", str(root), "--expdir", str(tmp_path / "exp"),
            "--results", str(tmp_path / "results.jsonl"), "--cache-dir", str(tmp_path / "cache"), "--device",
            "cpu", "-o", "runner.total_steps=2", "-o", "runner.eval_step=2", "-o", "runner.batch_size=4",
            "-o", "runner.gradient_accumulate_steps=1", *(["-n", name] if name else []), *extra]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_every_reported_evaluation_writes_its_predictions(tmp_path):
    root = BUILDERS["folder"](tmp_path / "data")["root"]
    assert run_downstream.main(_args(tmp_path, root, "folder", "run")) == 0
    run = tmp_path / "exp" / "run"
    records = {r.split: r for r in results.load(tmp_path / "results.jsonl")}
    for split in ("test", "dev"):
        rows = _lines(run / f"predictions.{split}.jsonl")
        assert len(rows) == 6  # 3 classes x 2 clips in the split folder
        for row in rows:  # the folder layout: <split>/<class>/<file>, relative to the data root
            assert (root / row["path"]).is_file() and row["path"].split("/")[:2] == [split, row["label"]]
            assert row["pred"] == row["topk"][0][0] and len(row["topk"]) == 3
            assert sum(s for _, s in row["topk"]) == pytest.approx(1.0, abs=1e-4)
        accuracy = sum(r["label"] == r["pred"] for r in rows) / len(rows)
        assert accuracy == pytest.approx(records[split].value)  # the file agrees with the reported metric
    before = (run / "predictions.test.jsonl").read_text()
    assert run_downstream.main(["-m", "evaluate", "-e", str(run), "--results",
                                str(tmp_path / "r2.jsonl")]) == 0
    assert (run / "predictions.test.jsonl").read_text() == before  # re-evaluation rewrites the same file
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))


@pytest.mark.parametrize("task", ["esc50", "iemocap"])
def test_fold_runs_keep_their_predictions_apart(tmp_path, task):
    built = BUILDERS[task](tmp_path / "data")
    data_root = built["root"].parent
    for fold in (1, 2):
        assert run_downstream.main(_args(tmp_path, data_root, task, "", "--fold", str(fold))) == 0
    runs = sorted((tmp_path / "exp").iterdir())
    assert [f"fold{k}" in r.name for k, r in zip((1, 2), runs)] == [True, True]  # one folder per fold
    for fold, run in zip((1, 2), runs):
        paths = {r["path"] for r in _lines(run / "predictions.test.jsonl")}
        if task == "esc50":  # the test clips are exactly the held-out fold's (meta/esc50.csv)
            with open(built["root"] / "meta" / "esc50.csv") as f:
                want = {f"ESC-50-master/audio/{r['filename']}" for r in csv.DictReader(f)
                        if int(r["fold"]) == fold}
        else:
            # IEMOCAP: session `fold` held out, its utterances of the 4 classes (exc merged into hap, fru out)
            session = built["root"] / f"Session{fold}"
            kept = {line.split("\t")[1] for txt in (session / "dialog" / "EmoEvaluation").glob("*.txt")
                    for line in txt.read_text().splitlines()
                    if line.startswith("[") and line.split("\t")[2] in ("neu", "hap", "exc", "ang", "sad")}
            want = {p.relative_to(data_root).as_posix()
                    for p in (session / "sentences" / "wav").rglob("*.wav")
                    if p.stem in kept}
            assert len(want) == 10  # 2 utterances of each of neu, hap, exc, ang, sad
        assert paths == want
