"""Watching representations learn: the k-NN probe and its records during pretraining."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import run_pretrain
import upstream
from downstream.datasets.clips import Clip
from downstream.knn import (
    KnnProbe,
    ProbeSet,
    ci95,
    clip_features,
    clip_group,
    knn_accuracy,
    knn_leave_group_out,
    knn_predict,
    mean_features,
    probe_upstream,
)
from pretrain import run
from tests.layouts import BUILDERS
from tests.test_pretrain import FakeObjective, make_cfg, write_recipe


def test_knn_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 10  # three far-apart clusters
    labels = torch.arange(3).repeat_interleave(20)
    train = centres[labels] + 0.1 * torch.randn(60, 8, generator=g)
    test = centres[labels] + 0.1 * torch.randn(60, 8, generator=g)
    assert knn_accuracy(train, labels, test, labels, num_classes=3) == 1.0
    # labels that do not follow the features score at chance, not 100%
    assert knn_accuracy(train, labels, test, labels.roll(20), num_classes=3) == 0.0


def test_vote_is_weighted_by_similarity():
    # the test point sits on the one class-1 neighbour; two class-0 neighbours are at cosine 0.6
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    labels = torch.tensor([1, 0, 0])
    test = torch.tensor([[2.0, 0.0]])  # scale does not matter: cosine
    # exp(1 / 0.07) > 2 exp(0.6 / 0.07): class 1 wins, though a plain majority of the 3 says class 0
    assert knn_predict(train, labels, test, num_classes=2, k=3).tolist() == [1]
    # at a high temperature the weights flatten and the two class-0 votes win
    assert knn_predict(train, labels, test, num_classes=2, k=3, temperature=100.0).tolist() == [0]
    # k=1: the nearest neighbour alone; k above M: all M vote
    assert knn_predict(train, labels, test, num_classes=2, k=1).tolist() == [1]
    assert knn_predict(train, labels, test, num_classes=2, k=50, temperature=100.0).tolist() == [0]
    with pytest.raises(ValueError, match="labels for"):
        knn_predict(train, labels[:2], test, num_classes=2)


def test_leave_group_out_never_takes_a_neighbour_from_the_clip_s_own_group():
    # group 0: a0 (class 0), a1 (class 1) almost on a0; group 1: b0 (class 0) near both, b1 (class 1) apart
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.9, 0.2], [0.0, 1.0]])
    labels, groups = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1])
    # hand-computed k=1 neighbours from the other group: a0 -> b0 (cos .976), a1 -> b0 (.986),
    # b0 -> a1 (.986), b1 -> a1 (.050)
    assert knn_leave_group_out(feats, labels, groups, num_classes=2, k=1).tolist() == [0, 0, 1, 1]
    # every clip its own group: a0 and a1 vote for each other, b1 takes b0 (cos .217)
    assert knn_leave_group_out(feats, labels, torch.arange(4), num_classes=2, k=1).tolist() == [1, 0, 1, 0]
    # k larger than the clips outside a group: capped at 2, b0 and b1 both vote for a0 (T=0.07: b0 wins)
    assert knn_leave_group_out(feats, labels, groups, num_classes=2, k=50).tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="two groups"):
        knn_leave_group_out(feats, labels, torch.zeros(4), num_classes=2)


def test_interval_and_groups_and_time_mean():
    assert ci95(0.5, 100) == pytest.approx(1.959964 * 0.05)
    assert ci95(0.9, 1000) == pytest.approx(1.959964 * (0.09 / 1000) ** 0.5)
    assert math.isnan(ci95(math.nan, 10)) and math.isnan(ci95(0.5, 0))
    assert clip_group(Clip(Path("w/1a2b3c4d_nohash_3.wav"), 0, "test")) == "1a2b3c4d"
    assert clip_group(Clip(Path("a/1-100-A-0.wav"), 0, "train", fold=2)) == "fold2"
    assert clip_group(Clip(Path("c/x.wav"), 0, "train")) is None
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],  # clip 0: 2 frames, then padding
                           [[1.0, 1.0], [2.0, 2.0], [6.0, 0.0]]])
    means = mean_features({"last_hidden_state": hidden, "lengths": torch.tensor([2, 3])})
    torch.testing.assert_close(means, torch.tensor([[2.0, 3.0], [3.0, 1.0]]))


def test_probe_scores_an_objective_and_leaves_it_as_it_was(tmp_path):
    root = BUILDERS["folder"](tmp_path / "data", clips_per_class=3)["root"]
    probe = KnnProbe("folder", str(root), max_clips=14, k=5)  # no groups: train -> test, 7 clips each
    objective = FakeObjective({}).train()
    before = {k: v.clone() for k, v in objective.state_dict().items()}
    torch.manual_seed(3)
    record = probe(objective, 0)
    after_rng = torch.rand(2)
    torch.manual_seed(3)
    assert torch.equal(after_rng, torch.rand(2))  # building the upstream drew nothing from the global stream
    assert objective.training and all(torch.equal(before[k], v) for k, v in objective.state_dict().items())
    assert record["task"] == "folder" and record["protocol"] == "train -> test" and record["k"] == 5
    assert record["n_clips"] == 7  # the test clips, capped from 9
    assert 0.0 <= record["knn_accuracy"] <= 1.0 and record["chance"] == pytest.approx(1 / 3)
    assert record["ci95"] == pytest.approx(ci95(record["knn_accuracy"], 7))
    assert 0.0 <= record["clip_knn_accuracy"] <= 1.0
    assert probe(objective, 1)["knn_accuracy"] == record["knn_accuracy"]  # same weights and clips: same score


def test_probe_leaves_one_speaker_out_over_every_clip(tmp_path):
    root = BUILDERS["speech_commands_v2"](tmp_path / "data", clips_per_class=2)["root"].parent
    probe = KnnProbe("speech_commands_v2", str(root), k=3)
    assert probe.protocol == "leave one speaker out"
    assert probe.n_clips == 3 * 3 * 2  # words x splits x clips: train, dev and test all scored
    record = probe(FakeObjective({}).train(), 0)
    assert record["n_clips"] == 18 and record["majority"] == pytest.approx(1 / 3)
    # the score is the leave-one-group-out vote on these features, computed again here
    feats = clip_features(probe_upstream(FakeObjective({})), probe._audio(16000))["mean"]
    pred = knn_leave_group_out(feats, probe.labels, probe.groups, 3, k=3)
    assert record["knn_accuracy"] == pytest.approx(float((pred == probe.labels).double().mean()))


def test_probe_loads_the_encoder_as_the_downstream_does():
    """SSAST pretrains on 16x16 patches at stride 16; its downstream upstream (s3prl) uses stride 10."""
    from upstream.registry import get_family

    objective = get_family("ssast").build_objective({"family": "ssast", "size": "mini"})
    own, probed = objective.to_upstream(), probe_upstream(objective)
    reference = upstream.load("ssast_patch_mini", random_init=True)
    assert (probed.cfg.encoder.fstride, probed.cfg.encoder.tstride) == (
        reference.cfg.encoder.fstride, reference.cfg.encoder.tstride)
    assert probed.cfg.encoder.tstride != own.cfg.encoder.tstride
    torch.testing.assert_close(probed.encoder.patch_embed.proj.weight, own.encoder.patch_embed.proj.weight)
    assert probe_upstream(FakeObjective({})).cfg == FakeObjective({}).to_upstream().cfg  # not registered


def test_probe_refuses_what_it_cannot_score(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        KnnProbe("nope", str(tmp_path))
    with pytest.raises(ValueError, match="max_clips"):
        KnnProbe("folder", str(tmp_path), max_clips=0)


def test_pretraining_calls_the_probe_at_step_0_and_every_n_steps(tmp_path):
    root = BUILDERS["folder"](tmp_path / "data")["root"]
    calls = []

    def probe(objective, step):
        calls.append((step, objective.training))
        return {"knn_accuracy": step / 100}

    out = tmp_path / "run"
    run(make_cfg(out, root, "max_steps=12", "probe_every=5", "log_every=4"), probe=probe)
    assert calls == [(0, True), (5, True), (10, True)]
    lines = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    probes = [(r["step"], r["probe"]["knn_accuracy"]) for r in lines if "probe" in r]
    assert probes == [(0, 0.0), (5, 0.05), (10, 0.1)]
    assert [r["step"] for r in lines] == [0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10, 10, 11, 12]  # in step order
    # a resumed run keeps the records up to its checkpoint and does not probe step 0 again
    calls.clear()
    ckpt_run = tmp_path / "split"
    settings = ("max_steps=12", "probe_every=5", "ckpt_every=5")
    run(make_cfg(ckpt_run, root, *settings), probe=probe, stop_at_step=5)
    run(make_cfg(ckpt_run, root, *settings), probe=probe, resume=True)
    assert [s for s, _ in calls] == [0, 5, 10]
    resumed = [json.loads(line) for line in (ckpt_run / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed if "probe" in r] == [0, 5, 10]  # step 5 recorded once


def test_cli_probe_writes_records(tmp_path):
    root = BUILDERS["folder"](tmp_path / "data")["root"]
    recipe = write_recipe(tmp_path / "fake.yaml", {}, max_steps=4, probe_every=2, log_every=2)
    args = ["-c", str(recipe), "--data", str(root), "-n", "p", "--expdir", str(tmp_path / "exp"), "--device",
            "cpu", "--probe", "folder", "--probe-data-root", str(root), "--probe-clips", "4"]
    assert run_pretrain.main(args) == 0
    lines = [json.loads(line) for line in (tmp_path / "exp/p/losses.jsonl").read_text().splitlines()]
    probes = {r["step"]: r["probe"] for r in lines if "probe" in r}
    assert sorted(probes) == [0, 2, 4]
    assert all(p["task"] == "folder" and p["n_clips"] == 2 and 0 <= p["knn_accuracy"] <= 1
               for p in probes.values())  # 4 clips: 2 train, 2 scored


def test_a_probe_set_writes_one_line_per_task(tmp_path):
    root = BUILDERS["folder"](tmp_path / "data")["root"]
    probes = ProbeSet([lambda o, step: {"task": "a", "knn_accuracy": step / 10},
                       lambda o, step: {"task": "b", "knn_accuracy": step / 20}])
    out = tmp_path / "run"
    run(make_cfg(out, root, "max_steps=4", "probe_every=2", "log_every=2"), probe=probes)
    lines = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    got = [(r["step"], r["probe"]["task"], r["probe"]["knn_accuracy"]) for r in lines if "probe" in r]
    assert got == [(0, "a", 0.0), (0, "b", 0.0), (2, "a", 0.2), (2, "b", 0.1), (4, "a", 0.4), (4, "b", 0.2)]


def test_cli_probe_bad_inputs(tmp_path, capsys):
    root = BUILDERS["folder"](tmp_path / "data")["root"]
    recipe = write_recipe(tmp_path / "fake.yaml", {}, max_steps=2)
    base = ["-c", str(recipe), "--data", str(root), "-n", "p", "--expdir", str(tmp_path / "exp"),
            "--device", "cpu"]
    assert run_pretrain.main([*base, "--probe", "nope"]) == 2
    assert "error: --probe nope: unknown task 'nope'" in capsys.readouterr().err
    missing = str(tmp_path / "missing")
    assert run_pretrain.main([*base, "--probe", "folder", "--probe-data-root", missing]) == 2
    err = capsys.readouterr().err
    assert err.startswith("run_pretrain.py: error: --probe folder:") and err.count("\n") == 1
    with pytest.raises(SystemExit):
        run_pretrain.main([*base, "--probe-data-root", str(root)])
    assert "only apply with --probe" in capsys.readouterr().err
    assert not (tmp_path / "exp" / "p" / "losses.jsonl").exists()
