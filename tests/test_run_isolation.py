"""Runs cannot overwrite each other: default folders follow the settings, a folder holding another
configuration (or a run, without --resume) is refused with the differing keys, --resume refuses changed
settings, two seeds launched at once record what each gives alone, the results path is checked up front."""
from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest
import torch
import yaml

import run_downstream
import run_pretrain
from common import files
from common.rundir import config_diff, run_dir_lock
from downstream import results
from tests.layouts import make_folder, write_tone

REPO = Path(__file__).resolve().parents[1]
TINY = ["-o", "runner.total_steps=2", "-o", "runner.eval_step=1", "-o", "runner.batch_size=4",
        "-o", "runner.eval_batch_size=8"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("data"))["root"]


def _args(tmp_path, folder, *extra) -> list[str]:
    return ["-u", "ssast_patch_mini", "-d", "folder", "--data-root", str(folder), "--expdir",
            str(tmp_path / "exp"),
            "--results", str(tmp_path / "r.jsonl"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
            *TINY, *extra]


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    return line


# ------------------------------------------------------------------------------------------ units
def test_config_diff_names_each_changed_key():
    old = {"run": {"seed": 1337, "data_root": "/a"}, "optimizer": {"lr": 1e-4, "betas": [0.9, 0.999]}}
    new = {"run": {"seed": 7, "data_root": "/b"}, "optimizer": {"lr": 5.0, "betas": (0.9, 0.999)}, "x": 1}
    assert config_diff(old, new, ignore=["run.data_root"]) == [
        "optimizer.lr was 0.0001, now 5.0", "run.seed was 1337, now 7", "x is new (now 1)"]
    assert config_diff(old, old) == []


def test_a_key_added_since_a_run_was_saved_is_no_difference_at_its_default():
    saved = {"optimizer": {"lr": 1e-4}}
    defaults = {"optimizer": {"lr": 1e-4, "layer_decay": 1.0}}
    assert config_diff(saved, {"optimizer": {"lr": 1e-4, "layer_decay": 1.0}}, defaults=defaults) == []
    assert config_diff(saved, {"optimizer": {"lr": 1e-4, "layer_decay": 0.75}}, defaults=defaults) == [
        "optimizer.layer_decay is new (now 0.75)"]
    assert config_diff(saved, {"optimizer": {"lr": 1e-4, "layer_decay": 1.0}}) == [
        "optimizer.layer_decay is new (now 1.0)"]  # without defaults every new key counts


def test_temporary_names_are_unique_per_writer(tmp_path):
    a, b = files.tmp_path(tmp_path / "dev-best.ckpt"), files.tmp_path(tmp_path / "dev-best.ckpt")
    assert a != b and a.parent == tmp_path and str(os.getpid()) in a.name and a.name.endswith(".tmp")


# ------------------------------------------------------------------------------------------ downstream
def test_seeds_get_their_own_folders_and_records(tmp_path, folder):
    for seed in (1, 2):
        assert run_downstream.main(_args(tmp_path, folder, "--seed", str(seed))) == 0
    runs = sorted(p.name for p in (tmp_path / "exp").iterdir())
    assert [r.rsplit("-", 1)[0] for r in runs] == ["ssast_patch_mini_folder_frozen_seed1",
                                                   "ssast_patch_mini_folder_frozen_seed2"]
    for run, seed in zip(runs, (1, 2)):
        saved = yaml.safe_load((tmp_path / "exp" / run / "config.yaml").read_text())
        assert saved["run"]["seed"] == seed and saved["run"]["expname"] == run
    recs = results.load(tmp_path / "r.jsonl")
    assert {(r.seed, r.expname) for r in recs} == {(1, runs[0]), (2, runs[1])}
    # the seed reached the run (head initialisation, batch order), not only its name
    evals = [(tmp_path / "exp" / run / "evals.jsonl").read_text().splitlines() for run in runs]
    losses = [[json.loads(line)["train_loss"] for line in lines] for lines in evals]
    assert len(losses[0]) == len(losses[1]) > 0 and losses[0] != losses[1]
    # an override is part of the name too: same seed, another lr -> a third folder
    assert run_downstream.main(_args(tmp_path, folder, "--seed", "1", "-o", "optimizer.lr=0.01")) == 0
    assert len(list((tmp_path / "exp").iterdir())) == 3


def test_a_folder_holding_another_configuration_is_refused(tmp_path, folder, capsys):
    assert run_downstream.main(_args(tmp_path, folder, "-n", "run")) == 0
    before = (tmp_path / "exp" / "run" / "last.ckpt").stat().st_mtime_ns
    capsys.readouterr()
    assert run_downstream.main(_args(tmp_path, folder, "-n", "run", "--seed", "2", "-o",
                                     "optimizer.lr=0.5")) == 2
    line = _error(capsys)
    assert "holds a run of another configuration" in line
    assert "optimizer.lr was 0.0001, now 0.5" in line and "run.seed was 1337, now 2" in line
    # the same configuration again, without --resume: refused too, and told how to go on
    assert run_downstream.main(_args(tmp_path, folder, "-n", "run")) == 2
    assert "already holds a run of this configuration" in (line := _error(capsys)) and "--resume" in line
    assert (tmp_path / "exp" / "run" / "last.ckpt").stat().st_mtime_ns == before  # untouched


def test_resume_refuses_changed_settings_but_may_train_further(tmp_path, folder, capsys):
    assert run_downstream.main(_args(tmp_path, folder, "-n", "run")) == 0
    capsys.readouterr()
    changed = _args(tmp_path, folder, "-n", "run", "--resume", "--seed", "7", "-o", "optimizer.lr=5.0")
    assert run_downstream.main(changed) == 2
    line = _error(capsys)
    assert line.startswith(f"error: cannot resume {tmp_path / 'exp' / 'run'}: the configuration changed")
    assert "optimizer.lr was 0.0001, now 5.0" in line and "run.seed was 1337, now 7" in line
    assert torch.load(tmp_path / "exp" / "run" / "last.ckpt", weights_only=False)["step"] == 2
    further = _args(tmp_path, folder, "-n", "run", "--resume")
    further[further.index("runner.total_steps=2")] = "runner.total_steps=3"
    assert run_downstream.main(further) == 0
    assert torch.load(tmp_path / "exp" / "run" / "last.ckpt", weights_only=False)["step"] == 3


def test_resume_without_a_name_points_at_the_run_it_differs_from(tmp_path, folder, capsys):
    assert run_downstream.main(_args(tmp_path, folder)) == 0
    (old,) = (tmp_path / "exp").iterdir()
    capsys.readouterr()
    assert run_downstream.main(_args(tmp_path, folder, "--resume", "-o", "optimizer.lr=0.5")) == 2
    line = _error(capsys)
    assert "--resume: no checkpoint" in line and old.name in line
    assert "optimizer.lr was 0.0001, now 0.5" in line


def test_results_path_is_checked_before_training(tmp_path, folder, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run_downstream.main(_args(tmp_path, folder, "-n", "run", "--results",
                                     str(blocker / "r.jsonl"))) == 2
    assert "cannot be written" in _error(capsys)
    assert not (tmp_path / "exp" / "run").exists()  # nothing trained, no folder claimed


def test_evaluate_does_not_record_the_same_evaluation_twice(tmp_path, folder, capsys):
    assert run_downstream.main(_args(tmp_path, folder, "-n", "run")) == 0
    first = results.load(tmp_path / "r.jsonl")
    assert sorted(r.split for r in first) == ["dev", "test"]
    evaluate = ["-m", "evaluate", "-e", str(tmp_path / "exp" / "run"), "--results", str(tmp_path / "r.jsonl"),
                "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    capsys.readouterr()
    assert run_downstream.main(evaluate) == 0
    assert "not appended again" in capsys.readouterr().out
    assert len(results.load(tmp_path / "r.jsonl")) == len(first)
    # another file: written
    assert run_downstream.main(evaluate + ["--results", str(tmp_path / "other.jsonl")]) == 0
    again = results.load(tmp_path / "other.jsonl")
    assert [(r.split, r.value, r.step) for r in again] == [(r.split, r.value, r.step) for r in first]


def test_a_folder_in_use_by_another_process_is_refused(tmp_path, folder, capsys):
    with run_dir_lock(tmp_path / "exp" / "run"):
        assert run_downstream.main(_args(tmp_path, folder, "-n", "run")) == 2
    assert f"in use by another run (process {os.getpid()})" in _error(capsys)
    assert not (tmp_path / "exp" / "run" / "last.ckpt").exists()


def _start(argv: list[str]) -> multiprocessing.Process:
    """``run_downstream.main(argv)`` in a forked process (torch already imported: starts at once), one
    thread."""

    def target():
        torch.set_num_threads(1)
        os._exit(run_downstream.main(argv))  # the exit code, without running the parent's atexit hooks

    proc = multiprocessing.get_context("fork").Process(target=target)
    proc.start()
    return proc


def test_two_seeds_at_once_record_what_each_gives_alone(tmp_path, folder):
    """Before: a shared folder, one run crashed on dev-best.ckpt.tmp and the other recorded the other seed's
    model. Now each seed has its own folder, and two processes started together record what each gives
    alone."""
    together = [_start(_args(tmp_path / "together", folder, "-f", "--seed", str(s))) for s in (1, 2)]
    for proc in together:
        proc.join(timeout=240)
    assert [p.exitcode for p in together] == [0, 0]
    for s in (1, 2):  # the same runs one at a time
        alone = _start(_args(tmp_path / "alone", folder, "-f", "--seed", str(s)))
        alone.join(timeout=240)
        assert alone.exitcode == 0

    def outcome(where: str) -> dict:
        recs = results.load(tmp_path / where / "r.jsonl")
        evals = {}
        for run in (tmp_path / where / "exp").iterdir():
            evals[run.name] = [json.loads(ln)["train_loss"]
                               for ln in (run / "evals.jsonl").read_text().splitlines()]
        return {"records": sorted((r.seed, r.split, r.value, r.step, r.expname) for r in recs),
                "evals": evals}

    at_once, one_by_one = outcome("together"), outcome("alone")
    assert len(at_once["records"]) == 4 and {r[0] for r in at_once["records"]} == {1, 2}
    assert len(at_once["evals"]) == 2
    assert at_once == one_by_one


# ------------------------------------------------------------------------------------------ pretraining
@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("unlabeled")
    for i in range(3):
        write_tone(root / f"{i}.wav", 1.0, seed=i)
    return root


def _pretrain(tmp_path, audio, *extra) -> list[str]:
    return ["-u", "mae_ast_patch", "-c", str(REPO / "configs/pretrain/mae_ast_patch_mini.yaml"), "--data",
            str(audio),
            "-n", "run", "--expdir", str(tmp_path / "exp"), "--device", "cpu", "-o", "max_steps=2",
            "-o", "batch_size=2", "-o", "data.num_workers=0", "-o", "tensorboard=false", *extra]


def test_pretraining_name_reuse_and_resume_compare_the_configuration(tmp_path, audio, capsys):
    assert run_pretrain.main(_pretrain(tmp_path, audio, "--stop-at-step", "1")) == 0
    capsys.readouterr()
    # the same -n with another configuration
    assert run_pretrain.main(_pretrain(tmp_path, audio, "-o", "seed=3")) == 2
    assert "holds a run of another configuration: seed was 1337, now 3" in capsys.readouterr().err
    # the same configuration without --resume
    assert run_pretrain.main(_pretrain(tmp_path, audio)) == 2
    assert "already holds a run of this configuration" in (err := capsys.readouterr().err)
    assert "--resume" in err
    # --resume with changed settings: every differing key is named
    assert run_pretrain.main(_pretrain(tmp_path, audio, "--resume", "-o", "optim.lr=0.5", "-o",
                                       "max_steps=4")) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "optim.lr was 0.001, now 0.5" in err and "max_steps was 2, now 4" in err
    # how a run logs is not part of its configuration
    assert run_pretrain.main(_pretrain(tmp_path, audio, "--resume", "-o", "log_every=1")) == 0
    assert torch.load(tmp_path / "exp" / "run" / "last.ckpt", weights_only=False)["step"] == 2


def test_a_folder_saved_before_new_keys_existed_still_resumes(tmp_path, folder, capsys):
    """A run's config.yaml written before optimizer.layer_decay existed resumes while the key stays at its
    default, and is refused, naming the key, when it does not."""
    import yaml

    assert run_downstream.main(_args(tmp_path, folder, "-n", "run")) == 0
    saved = tmp_path / "exp" / "run" / "config.yaml"
    data = yaml.safe_load(saved.read_text())
    del data["optimizer"]["layer_decay"], data["schedule"]["decay"]  # as an older version wrote it
    saved.write_text(yaml.safe_dump(data))
    further = _args(tmp_path, folder, "-n", "run", "--resume")
    further[further.index("runner.total_steps=2")] = "runner.total_steps=3"
    capsys.readouterr()
    assert run_downstream.main([*further, "-f", "-o", "optimizer.layer_decay=0.5"]) == 2
    assert "optimizer.layer_decay is new (now 0.5)" in _error(capsys)
    assert run_downstream.main(further) == 0
    assert torch.load(tmp_path / "exp" / "run" / "last.ckpt", weights_only=False)["step"] == 3
