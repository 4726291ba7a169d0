"""Saying when a model has collapsed: baselines, per-class scores and the one-class warning, by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import run_downstream
from downstream import engine, metrics, results
from tests.layouts import BUILDERS


def _always(cls: int, n: int, num_classes: int) -> np.ndarray:
    """Logits of a head that answers class ``cls`` for every clip."""
    logits = np.zeros((n, num_classes))
    logits[:, cls] = 1.0
    return logits


def test_baselines_by_hand():
    # train: class 1 is the most common (2 of 4); test: class 1 is 1 of 5 clips
    base = metrics.class_baselines([0, 1, 1, 2], [0, 0, 1, 2, 2], num_classes=3)
    assert base == {"majority": pytest.approx(0.2), "majority_class": 1, "chance": pytest.approx(1 / 3)}
    # ties go to the lowest index; one-hot targets are read as their argmax
    tie = metrics.class_baselines([2, 0], np.eye(4)[[0, 0, 3]], num_classes=4)
    assert tie["majority_class"] == 0 and tie["majority"] == pytest.approx(2 / 3) and tie["chance"] == 0.25
    with pytest.raises(ValueError, match="at least one training label"):
        metrics.class_baselines([], [0], num_classes=2)


def test_multilabel_baseline_is_the_positive_rate():
    # class 0: 2 of 4 clips positive, class 1: 1 of 4, class 2: none (left out, as in the mAP)
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    base = metrics.class_baselines([[0], [1]], y, num_classes=3, multilabel=True)
    assert base["majority"] == base["chance"] == pytest.approx((0.5 + 0.25) / 2)
    assert base["majority_class"] is None
    # constant scores do score exactly that mAP
    assert metrics.mean_average_precision(np.zeros((4, 3)), y) == pytest.approx(base["chance"])


def test_per_class_accuracy_and_ap():
    targets = [0, 0, 1, 2, 2]
    acc = metrics.per_class_scores(_always(0, 5, 4), targets)
    assert acc[:3].tolist() == [1.0, 0.0, 0.0] and math.isnan(acc[3])  # class 3 has no clip
    pred = np.array([0, 1, 1, 2, 0])  # per class: 1/2, 1/1, 1/2
    assert metrics.per_class_scores(np.eye(3)[pred], targets).tolist() == [0.5, 1.0, 0.5]
    y = np.array([[1, 0], [0, 1], [1, 0]])
    s = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.7]])
    # class 0: ranks +,-,+ -> AP = (1/1 + 2/3) / 2; class 1: its one positive ranked 2nd -> 1/2
    assert metrics.per_class_scores(s, y, multilabel=True).tolist() == pytest.approx([5 / 6, 0.5])


def test_a_head_that_always_answers_one_class_is_flagged():
    targets = [0, 1, 2, 0, 1, 2]
    spread = metrics.prediction_spread(_always(0, 6, 3), targets)
    assert spread == {"clips": 6, "distinct": 1, "top_class": 0, "top_share": 1.0,
                      "target_share": pytest.approx(1 / 3)}
    warning = metrics.collapse_warning(spread, ["bird", "cat", "dog"])
    assert "100.0% of the clips are predicted as class 'bird'" in warning and "1 distinct" in warning
    # 20 of 21 on one class (95.2%) is still a collapse; 19 of 20 (95%) is not
    many = np.r_[np.zeros(20, int), [1]]
    assert metrics.collapse_warning(metrics.prediction_spread(np.eye(3)[many], np.arange(21) % 3)) is not None
    assert metrics.collapse_warning(metrics.prediction_spread(np.eye(3)[many[1:]], np.arange(20) % 3)) is None
    # a class that really is 96% of the labels may be predicted that often, as long as it is not all
    skewed = np.r_[np.zeros(24, int), [1]]
    assert metrics.collapse_warning(metrics.prediction_spread(np.eye(2)[skewed], skewed)) is None
    # one clip always has one predicted class: not a collapse
    assert metrics.collapse_warning(metrics.prediction_spread(_always(0, 1, 3), [1])) is None
    # a healthy spread is not flagged
    assert metrics.collapse_warning(metrics.prediction_spread(np.eye(3)[targets], targets)) is None


def test_evaluation_report_names_classes_and_keeps_json_clean():
    report = metrics.evaluation_report(torch.tensor(_always(0, 5, 3)), torch.tensor([0, 0, 1, 2, 2]),
                                       [1, 1, 0], ["bird", "cat", "dog"])
    assert report["baselines"] == {"majority": pytest.approx(0.2), "majority_class": "cat",
                                   "chance": pytest.approx(1 / 3)}
    assert report["per_class"] == {"bird": 1.0, "cat": 0.0, "dog": 0.0}
    assert report["predictions"]["top_class"] == "bird" and report["predictions"]["collapsed"] is True
    absent = metrics.evaluation_report(_always(0, 2, 3), [0, 1], [0], ["a", "b", "c"])
    assert absent["per_class"]["c"] is None  # no NaN in a record: NaN != NaN would defeat de-duplication


def test_run_records_baselines_and_warns_on_collapse(tmp_path, monkeypatch, capsys):
    """A whole frozen run whose head always answers class 0 ('bird')."""
    root = BUILDERS["folder"](tmp_path / "data")["root"]  # 3 classes x 2 clips per split
    for gone in ("train/bird/bird_train_000.wav", "train/dog/dog_train_001.flac",
                 "test/bird/bird_test_000.wav"):
        (root / gone).unlink()  # train: bird 1, cat 2, dog 1 -> majority 'cat'; test: bird 1, cat 2, dog 2
    predict = engine.predict

    def always_bird(*args, **kwargs):
        logits, targets, uids = predict(*args, **kwargs)
        return torch.tensor(_always(0, len(logits), logits.shape[1]), dtype=torch.float32), targets, uids

    monkeypatch.setattr(engine, "predict", always_bird)
    out = tmp_path / "results.jsonl"
    assert run_downstream.main(["-u", "ssast_patch_mini", "-d", "folder", "--data-root", str(root),
                                "--expdir",
                                str(tmp_path / "exp"), "--results", str(out), "-n", "bird", "--no-cache",
                                "--device", "cpu", "-o", "runner.total_steps=1", "-o", "runner.eval_step=1",
                                "-o", "runner.batch_size=2"]) == 0
    captured = capsys.readouterr()
    (test,) = [r for r in results.load(out) if r.split == "test"]
    assert test.value == pytest.approx(1 / 5)
    assert test.baselines == {"majority": pytest.approx(2 / 5), "majority_class": "cat",
                              "chance": pytest.approx(1 / 3)}
    assert test.per_class == {"bird": 1.0, "cat": 0.0, "dog": 0.0}
    assert test.predictions["distinct"] == 1 and test.predictions["collapsed"] is True
    assert "test accuracy = 0.2000 (step 1), baselines: majority 0.4000, chance 0.3333" in captured.out
    assert "warning: bird: test: collapsed predictions: 100.0% of the clips are predicted as class 'bird'" \
        in captured.err
    assert "warning: dev at step 1: collapsed predictions" in captured.out  # seen during training too
