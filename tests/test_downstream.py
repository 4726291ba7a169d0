"""Downstream: featurizer, heads, validator, and run_downstream end to end on every task's tiny layout."""
from __future__ import annotations

import json

import pytest
import torch

import run_downstream
import upstream
from downstream import results
from downstream.featurizer import Featurizer
from downstream.heads import PSLAHead, UtteranceHead
from downstream.tasks import TASKS, get_task
from downstream.validate import errors, validate_upstream
from tests.layouts import BUILDERS


@pytest.fixture(autouse=True)
def _feature_cache_in_tmp(tmp_path, monkeypatch):
    """Frozen runs cache features; keep them out of the home folder."""
    monkeypatch.setenv("ASTBENCH_CACHE", str(tmp_path / "feature_cache"))


TINY = ["-o", "runner.total_steps=2", "-o", "runner.eval_step=1", "-o", "runner.batch_size=4",
        "-o", "runner.eval_batch_size=8"]


# ------------------------------------------------------------------------------------------ modules
def test_featurizer_weighted_sum_and_layer():
    hs = [torch.full((2, 3, 4), float(i)) for i in range(3)]
    f = Featurizer(3)
    assert torch.allclose(f.layer_weights().sum(), torch.tensor(1.0))
    assert torch.allclose(f(hs), torch.full((2, 3, 4), 1.0))  # zeros -> uniform weights
    with torch.no_grad():
        f.weights.copy_(torch.tensor([0.3, -2.0, 1.0]))
    assert torch.allclose(f.layer_weights().sum(), torch.tensor(1.0))
    assert torch.equal(Featurizer(3, layer=2)(hs), hs[2])
    assert torch.equal(Featurizer(3, layer=-1)(hs), hs[2])
    assert not list(Featurizer(3, layer=1).parameters())
    with pytest.raises(ValueError, match="out of range"):
        Featurizer(3, layer=3)


def test_utterance_head_ignores_padding():
    torch.manual_seed(0)
    head = UtteranceHead(6, 5, proj_dim=8)
    x = torch.randn(1, 4, 6)
    padded = torch.cat([x, 100 * torch.randn(1, 3, 6)], 1)
    lengths = torch.tensor([4])
    assert torch.allclose(head(x, lengths), head(padded, lengths), atol=1e-6)
    # hand check: Linear(256) -> mean over valid frames -> Linear
    expect = head.classifier(head.projector(x).mean(1))
    assert torch.allclose(head(padded, lengths), expect, atol=1e-6)
    assert PSLAHead(6, 5)(torch.randn(3, 6)).shape == (3, 5)


def test_task_registry_covers_readers():
    assert set(TASKS) == set(BUILDERS)
    assert get_task("as20k").metric == "mAP" and get_task("as20k").loss == "bce"
    assert get_task("speech_commands_v2").loss_for(finetune=True) == "bce"
    assert get_task("speech_commands_v2").loss_for(finetune=False) == "ce"
    assert get_task("speech_commands_v1").balanced_sampling
    assert get_task("esc50").folds == (1, 2, 3, 4, 5) and get_task("iemocap").folds == (1, 2, 3, 4, 5)


# ------------------------------------------------------------------------------------------ validator
def test_validator_accepts_good_plugin_and_registered():
    from tests import plugin_upstream

    assert validate_upstream(plugin_upstream.build()) == []
    assert errors(validate_upstream(upstream.load("ssast_patch_mini"))) == []


@pytest.mark.parametrize("builder,expect", [("build_wrong_lengths", "lengths"), ("build_nan", "NaN")])
def test_validator_flags_broken_plugin(builder, expect):
    from tests import plugin_upstream

    problems = errors(validate_upstream(getattr(plugin_upstream, builder)()))
    assert problems and any(expect in p for p in problems), problems


def test_cli_rejects_broken_plugin(tmp_path, capsys):
    kw = BUILDERS["folder"](tmp_path / "data")
    rc = run_downstream.main(["-u", "tests.plugin_upstream:build_nan", "-d", "folder", "--data-root",
                              str(kw["root"]), "--expdir", str(tmp_path / "exp"), *TINY])
    assert rc == 3 and "NaN" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ end to end
def _run(tmp_path, task, extra=(), up="ssast_patch_mini", name=None):
    kw = BUILDERS[task](tmp_path / "data")
    root = kw.get("path") or (tmp_path / "data")
    if task == "folder":
        root = kw["root"]
    args = ["-u", up, "-d", task, "--data-root", str(root), "--expdir", str(tmp_path / "exp"),
            "--results", str(tmp_path / "results.jsonl"), *TINY, *extra]
    if "fold" in kw:
        args += ["--fold", str(kw["fold"])]
    if name:
        args += ["-n", name]
    return run_downstream.main(args), results.load(tmp_path / "results.jsonl")


# fine-tuning on whole VoxCeleb1 / IEMOCAP utterances takes most of this test's time: run by `make test-slow`
_SLOW_RUNS = {("voxceleb1", True), ("iemocap", True)}


@pytest.mark.parametrize("finetune,task", [
    pytest.param(finetune, task, id=f"{'finetune' if finetune else 'frozen'}-{task}",
                 marks=[pytest.mark.slow] if (task, finetune) in _SLOW_RUNS else [])
    for finetune in (False, True) for task in sorted(BUILDERS)])
def test_every_task_both_modes(tmp_path, task, finetune):
    rc, recs = _run(tmp_path, task, ["-f"] if finetune else [])
    assert rc == 0
    spec = get_task(task)
    assert recs and {r.split for r in recs} >= {"test"}
    for r in recs:
        assert r.task == task and r.metric == spec.metric and r.mode == ("finetune" if finetune else "frozen")
        assert 0.0 <= r.value <= 1.0 and r.upstream == "ssast_patch_mini" and r.config_hash
        assert r.fold == (1 if spec.folds else None)
        assert r.scores[r.metric] == r.value  # every score of the evaluation; AS-20K: mAUC and d' beside mAP
        assert set(r.scores) == ({"mAP", "mAUC", "d_prime", "num_classes", "num_classes_skipped_ap"}
                                 if task == "as20k" else {"accuracy"})
    assert len([r for r in recs if r.split == "test"]) == 1  # one test record per fold


@pytest.mark.parametrize("up,task", [("mae_ast_patch_mini", "speech_commands_v1"), ("asit_mini", "iemocap")])
def test_other_families(tmp_path, up, task):
    for extra in ([], ["-f"]):
        rc, recs = _run(tmp_path, task, extra, up=up, name=f"{up}{len(extra)}")
        assert rc == 0
    assert {r.mode for r in recs} == {"frozen", "finetune"} and all(r.upstream == up for r in recs)


def test_layer_and_plugin_run(tmp_path):
    rc, recs = _run(tmp_path, "folder", ["-l", "1"], up="tests.plugin_upstream:build")
    assert rc == 0 and recs[0].layer == 1


def test_resume_and_evaluate_reproduce(tmp_path):
    rc, recs = _run(tmp_path, "speech_commands_v2", name="run")
    assert rc == 0
    expdir = tmp_path / "exp" / "run"
    assert torch.load(expdir / "last.ckpt", weights_only=False)["step"] == 2
    rc, _ = _run(tmp_path, "speech_commands_v2", ["--resume", "-o", "runner.total_steps=3"], name="run")
    assert rc == 0
    assert torch.load(expdir / "last.ckpt", weights_only=False)["step"] == 3
    steps = [json.loads(line)["step"] for line in open(expdir / "evals.jsonl")]
    assert steps == [1, 2, 3]
    before = [r for r in results.load(tmp_path / "results.jsonl") if r.split == "test"][-1]
    rc = run_downstream.main(["-m", "evaluate", "-e", str(expdir), "--results",
                              str(tmp_path / "results.jsonl")])
    assert rc == 0
    after = [r for r in results.load(tmp_path / "results.jsonl") if r.split == "test"][-1]
    assert after is not before and after.value == pytest.approx(before.value) and after.step == before.step


def test_clear_errors(tmp_path, capsys):
    assert run_downstream.main(["-u", "ssast_patch_mini", "-d", "esc50", "--fold", "7"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert run_downstream.main(["-u", "ssast_patch_mini", "-d", "nope"]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert run_downstream.main(["-u", "no_such_model", "-d", "folder", "--data-root", str(tmp_path)]) == 2
    assert "unknown upstream" in capsys.readouterr().err
    assert run_downstream.main(["-u", "ssast_patch_mini", "-d", "voxceleb1", "--data-root",
                                str(tmp_path)]) == 2
    assert "VoxCeleb1" in capsys.readouterr().err
    assert run_downstream.main(["-u", "ssast_patch_mini", "-d", "folder", "--data-root",
                                str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_downstream.main(["-u", "ssast_patch_mini", "-d", "folder", "-o", "runner.nope=1"]) == 2
    assert "nope" in capsys.readouterr().err


def test_family_overrides_give_ssast_the_psla_input_length_and_leave_other_families_alone():
    from common.config import load_config
    from downstream import protocols
    from downstream.config import DownstreamConfig

    for task, frames in (("as20k", 1024), ("esc50", 512), ("speech_commands_v2", 128)):  # recipes.md §3
        # SSAST's input length comes from its protocol (configs/protocols/ssast.yaml) now
        assert protocols.resolve("ssast_patch_400", task,
                                 True).overrides_for("ssast_patch_400")["target_length"] \
            == frames
        for other in ("mae_ast_patch", "asit_base"):
            assert protocols.resolve(other, task, True).overrides_for(other) == {}
    cfg = protocols.resolve("ssast_frame_400", "esc50", True,
                            overrides=["upstream_overrides.target_length=256"])
    assert cfg.overrides_for("ssast_frame_400")["target_length"] == 256  # -o wins over the protocol
    cfg = load_config(DownstreamConfig, None, ["family_overrides.ssast.target_length=64"])
    assert cfg.overrides_for("ssast_patch_400") == {"target_length": 64}
    assert cfg.overrides_for("mae_ast_patch") == {}
    bad = load_config(DownstreamConfig, None, ["family_overrides.ssast=3"])
    with pytest.raises(ValueError, match="family_overrides.ssast"):
        bad.overrides_for("ssast_patch_400")
    assert cfg.overrides_for("tests.plugin_upstream:build") == {}  # a plug-in belongs to no family
    # keys are family names (the registry's): a typo would otherwise apply to nothing, silently
    with pytest.raises(ValueError, match="unknown family 'ssat'; families: asit, mae_ast, ssast"):
        load_config(DownstreamConfig, None, ["family_overrides.ssat.target_length=64"])


# ------------------------------------------------------------------------------------------ the library call
def test_the_library_call_returns_the_records_it_writes(tmp_path):
    """``downstream.run(DownstreamJob(...))`` is what ``run_downstream.py`` runs: it returns the records it
    appends; ``resolve`` and ``identity_hash`` name a job's run without running it."""
    import dataclasses

    import downstream

    root = BUILDERS["folder"](tmp_path / "data")["root"]
    tiny = ("runner.total_steps=2", "runner.eval_step=1", "runner.batch_size=4", "runner.eval_batch_size=8")
    job = downstream.DownstreamJob(upstream="ssast_patch_mini", task="folder", data_root=str(root),
                                   expdir=str(tmp_path / "exp"), results=str(tmp_path / "r.jsonl"),
                                   name="lib", device="cpu", overrides=tiny)
    cfg, expdir = downstream.resolve(job)
    assert expdir == tmp_path / "exp" / "lib" and cfg.runner.total_steps == 2 and cfg.run.expname == "lib"
    assert not expdir.exists()  # resolving reads no data and writes nothing
    recs = downstream.run(job)
    best = torch.load(expdir / "dev-best.ckpt", weights_only=False)["step"]
    assert [r.split for r in recs] == ["test", "dev"] and all(r.step == best for r in recs)
    assert [dataclasses.asdict(r) for r in results.load(tmp_path / "r.jsonl")] == \
        [dataclasses.asdict(r) for r in recs]
    assert recs[0].config_hash == results.config_hash(recs[0].config)
    # the identity ignores the run's name and machine paths, not what it trains with
    same = dataclasses.replace(job, name="other", data_root=str(tmp_path / "elsewhere"))
    lr = dataclasses.replace(job, overrides=job.overrides + ("optimizer.lr=1e-3",))
    assert downstream.identity_hash(downstream.resolve(same)[0]) == downstream.identity_hash(cfg)
    assert downstream.identity_hash(downstream.resolve(lr)[0]) != downstream.identity_hash(cfg)
    # re-scoring the saved run gives the same values at the same step
    again = downstream.run(downstream.DownstreamJob(evaluate=str(expdir), results=str(tmp_path / "r2.jsonl"),
                                                    device="cpu"))
    assert [(r.split, r.value, r.step) for r in again] == [(r.split, r.value, r.step) for r in recs]


def test_a_diverging_run_stops_with_exit_code_4(tmp_path, capsys):
    root = BUILDERS["folder"](tmp_path / "data")["root"]
    rc = run_downstream.main(["-u", "ssast_patch_mini", "-d", "folder", "--data-root", str(root),
                              "--expdir", str(tmp_path / "exp"), "--results", str(tmp_path / "r.jsonl"),
                              "--device", "cpu", "-o", "optimizer.lr=1e30", "-o", "runner.total_steps=3",
                              "-o", "runner.eval_step=3", "-o", "runner.batch_size=4"])
    err = capsys.readouterr().err
    assert rc == 4 and "error: non-finite training loss" in err and "Lower optimizer.lr" in err
    assert not (tmp_path / "r.jsonl").exists()  # nothing recorded
