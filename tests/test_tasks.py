"""``downstream.tasks``: every task's spec (folds, selection, loss, metric), and the losses and metrics it
hands out, checked against hand computations."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from downstream.tasks import FOLD_AVERAGED_SPLIT, TASKS, Loss, Metric, TaskSpec, get_task
from tests.layouts import make_folder


# ----------------------------------------------------------------------------------------------------------
# What each task is
# ----------------------------------------------------------------------------------------------------------
def test_every_task_states_its_recipe():
    # name: (metric, frozen loss, fine-tuning loss, folds, selection split, fold-averaged selection)
    expected = {
        "as20k": ("mAP", "bce", "bce", (), "test", False),
        "esc50": ("accuracy", "ce", "ce", (1, 2, 3, 4, 5), "test", True),
        "speech_commands_v2": ("accuracy", "ce", "bce", (), "dev", False),
        "speech_commands_v1": ("accuracy", "ce", "ce", (), "dev", False),
        "voxceleb1": ("accuracy", "ce", "ce", (), "dev", False),
        "iemocap": ("accuracy", "ce", "ce", (1, 2, 3, 4, 5), "dev", False),
        "folder": ("accuracy", "ce", "ce", (), "dev", False),
        "manifest": ("accuracy", "ce", "ce", (), "dev", False),
    }
    assert set(TASKS) == set(expected)
    for name, (metric, loss, ft_loss, folds, selection, fold_avg) in expected.items():
        spec = get_task(name)
        assert (spec.metric, spec.loss_for(False), spec.loss_for(True)) == (metric, loss, ft_loss), name
        assert isinstance(spec.metric, Metric) and isinstance(spec.loss_for(True), Loss)
        assert spec.folds == folds and spec.selection_split == selection, name
        assert (spec.select_runs is not None) == fold_avg, name
        assert spec.result_splits == (("test", FOLD_AVERAGED_SPLIT) if fold_avg else ("test",)), name
        assert spec.reader.__name__ == name  # every task reads with the reader of its own name
    assert get_task("speech_commands_v1").balanced_sampling
    assert get_task("esc50").selected_split == "test@fold-avg-step"


def test_specs_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="unknown task 'nope'; registered: as20k, esc50"):
        get_task("nope")
    with pytest.raises(ValueError, match="'tuned' is not a valid Metric"):
        TaskSpec("x", lambda **kw: None, lambda r: {}, metric="tuned")
    with pytest.raises(ValueError, match="select_runs and selected_split go together"):
        TaskSpec("x", lambda **kw: None, lambda r: {}, folds=(1, 2), select_runs=lambda dirs: {})
    with pytest.raises(ValueError, match="selects over fold runs; give its folds"):
        TaskSpec("x", lambda **kw: None, lambda r: {}, select_runs=lambda dirs: {}, selected_split="t")
    assert TaskSpec("x", lambda **kw: None, lambda r: {}, metric="mAP", loss="bce").metric is Metric.MAP


def test_folds_are_checked_against_the_spec():
    esc, vox = get_task("esc50"), get_task("voxceleb1")
    assert esc.check_fold(3) == 3 and vox.check_fold(None) is None
    with pytest.raises(ValueError, match=r"needs --fold, one of \[1, 2, 3, 4, 5\]"):
        esc.check_fold(None)
    with pytest.raises(ValueError, match=r"--fold 6 is out of range for task 'esc50'"):
        esc.check_fold(6)
    with pytest.raises(ValueError, match="has no folds, but --fold 2 was given"):
        vox.check_fold(2)


def test_read_sets_the_specs_selection_split(tmp_path):
    data = get_task("folder").read(make_folder(tmp_path)["root"], log=lambda line: None)
    assert data.selection_split == "dev"


# ----------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------
# Two classes, four clips. Logits (sigmoid keeps their order):
#   class 0: [2, 1, 1, -2] vs [1, 0, 1, 0]: 2 (+) P=1 R=1/2; the tie at 1 (one +, one -) P=2/3 R=1
#            -> AP = 1/2 + (1/2)(2/3) = 5/6; AUC over the 4 (pos, neg) pairs: 1 + 1 + 1/2 (tie) + 1 = 3.5/4
#   class 1: [0, 3, -1, 1] vs [0, 1, 0, 1]: both positives on top -> AP = 1, AUC = 1
# mAP = (5/6 + 1) / 2 = 11/12; mAUC = (0.875 + 1) / 2 = 0.9375; d' = sqrt(2) * Phi^-1(0.9375)
# = sqrt(2) * 1.53412054435 = 2.16957408014.
AS_LOGITS = torch.tensor([[2.0, 0.0], [1.0, 3.0], [1.0, -1.0], [-2.0, 1.0]])
AS_TARGETS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])


def test_map_report_carries_mauc_and_d_prime():
    report = Metric.MAP.report(AS_LOGITS, AS_TARGETS)
    assert report == {"mAP": pytest.approx(11 / 12), "mAUC": pytest.approx(0.9375),
                      "d_prime": pytest.approx(2.16957408014), "num_classes": 2, "num_classes_skipped_ap": 0}
    assert report["mAP"] == Metric.MAP(AS_LOGITS, AS_TARGETS)  # the record's value, exactly
    assert get_task("as20k").metric.report(AS_LOGITS, AS_TARGETS) == report


def test_map_report_on_a_perfect_ranking_gives_infinite_d_prime_that_survives_json():
    report = Metric.MAP.report(torch.tensor([[3.0], [-3.0]]), torch.tensor([[1.0], [0.0]]))
    assert report["mAP"] == 1.0 and report["mAUC"] == 1.0 and report["d_prime"] == math.inf
    assert json.loads(json.dumps(report))["d_prime"] == math.inf


def test_accuracy_report():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5], [0.0, 0.0, 1.0]])
    # argmax [0, 1, 0, 2] vs [0, 1, 2, 2]: 3 of 4
    assert Metric.ACCURACY(logits, torch.tensor([0, 1, 2, 2])) == 0.75
    assert Metric.ACCURACY.report(logits, torch.tensor([0, 1, 2, 2])) == {"accuracy": 0.75}


def test_metric_and_loss_are_their_names_everywhere_a_name_goes():
    assert f"{Metric.MAP}" == str(Metric.MAP) == "mAP" and Loss.BCE == "bce"
    assert json.dumps({Metric.MAP: Loss.CE}) == '{"mAP": "ce"}'
    # pickled (a checkpoint's metrics) as plain names, so loading never needs this module's classes
    loaded = pickle.loads(pickle.dumps({Metric.ACCURACY: 0.5, "loss": Loss.BCE}))
    assert loaded == {"accuracy": 0.5, "loss": "bce"} and all(type(k) is str for k in loaded)
    assert type(loaded["loss"]) is str


# ----------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------
def test_cross_entropy_by_hand():
    # logits [0, ln 3] for class 1: softmax = [1/4, 3/4] -> CE = -ln(3/4); class 0 -> -ln(1/4).
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    expected = (-math.log(3 / 4) - math.log(1 / 4)) / 2
    assert Loss.CE(logits, torch.tensor([1, 0])).item() == pytest.approx(expected)
    # mixed (soft) targets train on their argmax, as SSAST's CE
    assert Loss.CE(logits, torch.tensor([[0.3, 0.7], [0.6, 0.4]])).item() == pytest.approx(expected)
    assert Loss.CE.probabilities(logits)[0].tolist() == pytest.approx([0.25, 0.75])


def test_binary_cross_entropy_by_hand():
    # logit 0 -> p = 1/2: -ln(1/2) whatever the target; logit ln 3 -> p = 3/4: target 1 -> -ln(3/4),
    # target 0 -> -ln(1/4). Index labels become one-hot (SSAST KS2's BCE).
    logits = torch.tensor([[0.0, math.log(3.0)]])
    per_class = [-math.log(1 / 2), -math.log(3 / 4)]
    assert Loss.BCE(logits, torch.tensor([1])).item() == pytest.approx(sum(per_class) / 2)
    assert Loss.BCE(logits, torch.tensor([[0.0, 0.0]])).item() == pytest.approx(
        (-math.log(1 / 2) - math.log(1 / 4)) / 2)
    assert Loss.BCE.probabilities(logits)[0].tolist() == pytest.approx([0.5, 0.75])
    assert Loss.BCE(logits, torch.tensor([1])).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, torch.tensor([[0.0, 1.0]])).item())
