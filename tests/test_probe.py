"""Watching representations learn: the k-NN probe and its records during pretraining."""
from __future__ import annotations

import json

import pytest
import torch

import run_pretrain
from downstream.knn import KnnProbe, knn_accuracy, knn_predict
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


def test_probe_scores_an_objective_and_leaves_it_as_it_was(tmp_path):
    root = BUILDERS["folder"](tmp_path / "data", clips_per_class=3)["root"]
    probe = KnnProbe("folder", str(root), max_clips=7, k=5)
    objective = FakeObjective({}).train()
    before = {k: v.clone() for k, v in objective.state_dict().items()}
    torch.manual_seed(3)
    record = probe(objective, 0)
    after_rng = torch.rand(2)
    torch.manual_seed(3)
    assert torch.equal(after_rng, torch.rand(2))  # building the upstream drew nothing from the global stream
    assert objective.training and all(torch.equal(before[k], v) for k, v in objective.state_dict().items())
    assert record["task"] == "folder" and record["split"] == "test" and record["k"] == 5
    assert record["train_clips"] == 7 and record["test_clips"] == 7  # capped from 9 each
    assert 0.0 <= record["knn_accuracy"] <= 1.0 and record["chance"] == pytest.approx(1 / 3)
    assert probe(objective, 1)["knn_accuracy"] == record["knn_accuracy"]  # same weights and clips: same score


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
    assert all(p["task"] == "folder" and p["train_clips"] == 4 and 0 <= p["knn_accuracy"] <= 1
               for p in probes.values())


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
