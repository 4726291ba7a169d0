"""Bad input to the two CLIs: each case exits with its documented code and one ``error:`` line naming the
problem, never a traceback (run_downstream.py: 2; run_pretrain.py: 2, or 1 for a non-finite loss)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import run_downstream
import run_pretrain
from tests.layouts import make_folder, write_tone

REPO = Path(__file__).resolve().parents[1]
TINY = ["-o", "runner.total_steps=2", "-o", "runner.eval_step=1", "-o", "runner.batch_size=4",
        "-o", "runner.eval_batch_size=8"]
PLUGINS = '''
import torch


def raises(**overrides):
    raise RuntimeError("weights server unreachable")


def returns_none(**overrides):
    return None


def returns_dict(**overrides):
    return {"hidden_states": []}
'''


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("data"))["root"]


@pytest.fixture
def blocker(tmp_path) -> Path:
    """A regular file: any path under it can be neither created nor written (also for root, unlike chmod)."""
    path = tmp_path / "a_file"
    path.write_text("not a folder\n")
    return path


def _one_error(capsys) -> str:
    """The single ``error:`` line of stderr (asserting there is exactly one and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    return lines[0]


def _downstream(tmp_path, folder, *extra) -> list[str]:
    return ["-u", "ssast_patch_mini", "-d", "folder", "--data-root", str(folder), "--expdir",
            str(tmp_path / "exp"),
            "--results", str(tmp_path / "r.jsonl"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
            *TINY, *extra]


# (id, extra arguments ({tmp}/{blocker} filled in), what the error line must say)
DOWNSTREAM_CASES = [
    ("negative lr", ["-o", "optimizer.lr=-1"], ["optimizer.lr must be > 0, got -1.0"]),
    ("nan lr", ["-o", "optimizer.lr=nan"], ["optimizer.lr must be > 0, got nan"]),
    ("negative batch", ["-o", "runner.batch_size=-1"], ["runner.batch_size must be >= 1, got -1"]),
    ("zero batch", ["-o", "runner.batch_size=0"], ["runner.batch_size must be >= 1, got 0"]),
    ("zero eval_step", ["-o", "runner.eval_step=0"], ["runner.eval_step must be >= 1, got 0"]),
    ("zero total_steps", ["-o", "runner.total_steps=0"], ["total_steps must be >= 1"]),
    ("zero eval batch", ["-o", "runner.eval_batch_size=0"], ["eval_batch_size must be >= 1"]),
    ("zero accumulation", ["-o", "runner.gradient_accumulate_steps=0"],
     ["gradient_accumulate_steps must be >= 1"]),
    ("zero clipping", ["-o", "runner.gradient_clipping=0"], ["gradient_clipping must be > 0"]),
    ("negative workers", ["-o", "runner.num_workers=-1"], ["num_workers must be >= 0"]),
    ("beta of 1", ["-o", "optimizer.betas=[0.9,1.0]"], ["betas must each lie in [0, 1)"]),
    ("negative decay", ["-o", "optimizer.weight_decay=-0.1"], ["weight_decay must be >= 0"]),
    ("zero head width", ["-o", "head.proj_dim=0"], ["proj_dim must be >= 1"]),
    ("negative seed", ["--seed", "-1"], ["seed must lie in 0..2**32-1, got -1"]),
    ("run section by -o", ["-o", "run.seed=3"],
     ["config key 'run.seed' (-o) is not a setting", "use --seed"]),
    ("run section by s3prl -o", ["-o", "config.run.fold=2"], ["'run.fold'", "use --fold"]),
    ("expdir not writable", ["--expdir", "{blocker}/exp"], ["experiment folder (--expdir)", "not writable"]),
    ("cache dir not writable", ["--cache-dir", "{blocker}/cache"], ["feature cache folder", "not writable"]),
    ("results not writable", ["--results", "{blocker}/r.jsonl"], ["results file", "cannot be written"]),
    ("results is a folder", ["--results", "{tmp}"], ["is a folder"]),
    ("resume without a run", ["--resume", "-n", "never_ran"],
     ["--resume: no checkpoint", "never_ran/last.ckpt"]),
    ("missing checkpoint", ["--ckpt", "{tmp}/nope.pt"], ["nope.pt does not exist"]),
    ("plug-in raises", ["-u", "bad_plugins:raises"],
     ["'bad_plugins:raises'", "RuntimeError: weights server unreachable"]),
    ("plug-in returns None", ["-u", "bad_plugins:returns_none"],
     ["returned NoneType, not a torch.nn.Module"]),
    ("plug-in returns a dict", ["-u", "bad_plugins:returns_dict"], ["returned dict, not a torch.nn.Module"]),
]


@pytest.mark.parametrize("extra,expect", [c[1:] for c in DOWNSTREAM_CASES],
                         ids=[c[0] for c in DOWNSTREAM_CASES])
def test_downstream_bad_input(tmp_path, folder, blocker, capsys, monkeypatch, extra, expect):
    (tmp_path / "bad_plugins.py").write_text(PLUGINS)
    monkeypatch.syspath_prepend(str(tmp_path))
    extra = [a.format(tmp=tmp_path, blocker=blocker) for a in extra]
    assert run_downstream.main(_downstream(tmp_path, folder, *extra)) == 2
    line = _one_error(capsys)
    assert line.startswith("error: ")
    for part in expect:
        assert part in line, line
    assert not list((tmp_path / "exp").rglob("*.ckpt"))  # refused before any training


def test_evaluate_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert run_downstream.main(["-m", "evaluate", "-e", str(tmp_path), "--results",
                                str(tmp_path / "r.jsonl")]) == 2
    assert "has no config.yaml: not the folder of a trained run" in _one_error(capsys)


def test_unwritable_results_fail_before_training(tmp_path, folder, blocker, capsys):
    """Before: the run trained and evaluated, then lost its records to an OSError. Now: nothing is trained."""
    args = _downstream(tmp_path, folder, "-n", "run", "--results", str(blocker / "r.jsonl"))
    assert run_downstream.main(args) == 2
    assert "cannot be written" in _one_error(capsys)
    assert not (tmp_path / "exp" / "run").exists()


def test_resume_with_another_head_names_the_key(tmp_path, folder, capsys):
    assert run_downstream.main(_downstream(tmp_path, folder, "-n", "run", "-o", "head.proj_dim=8")) == 0
    capsys.readouterr()
    assert run_downstream.main(_downstream(tmp_path, folder, "-n", "run", "-o", "head.proj_dim=16",
                                           "--resume")) == 2
    assert "head.proj_dim was 8, now 16" in _one_error(capsys)


def test_resume_with_another_number_of_classes_names_the_parameter(tmp_path, folder, capsys):
    """The config is the same but the data now has a fourth class: the head's shape no longer fits."""
    assert run_downstream.main(_downstream(tmp_path, folder, "-n", "run")) == 0
    more = tmp_path / "more"
    shutil.copytree(folder, more)
    for split in ("train", "dev", "test"):
        for k in range(2):
            write_tone(more / split / "zzz_new" / f"new_{split}_{k}.wav", 0.2, seed=90 + k)
    capsys.readouterr()
    args = _downstream(tmp_path, more, "-n", "run", "--resume")
    args[args.index("runner.total_steps=2")] = "runner.total_steps=3"
    assert run_downstream.main(args) == 2
    line = _one_error(capsys)
    assert "last.ckpt does not fit this model" in line and "classifier.weight" in line
    assert "(3, " in line and "(4, " in line


@pytest.mark.parametrize("workers", [0, 1])
def test_an_audio_error_while_training_is_one_error_line(tmp_path, folder, capsys, monkeypatch, workers):
    """An AudioError met while decoding in training (here forced on every clip), also from a worker
    process."""
    from downstream import datasets
    from upstream.frontend import AudioError

    def broken(self, index):
        raise AudioError("audio file clip.wav is empty (0 samples)")

    monkeypatch.setattr(datasets.ClipDataset, "__getitem__", broken)
    args = _downstream(tmp_path, folder, "-f", "-o", f"runner.num_workers={workers}")
    assert run_downstream.main(args) == 2
    assert _one_error(capsys) == "error: audio file clip.wav is empty (0 samples)"


# ------------------------------------------------------------------------------------------ pretraining
def _pretrain(tmp_path, audio: Path, *extra) -> list[str]:
    return ["-u", "mae_ast_patch", "-c", str(REPO / "configs/pretrain/mae_ast_patch_mini.yaml"), "--data",
            str(audio),
            "--expdir", str(tmp_path / "exp"), "--device", "cpu", "-o", "max_steps=2", "-o", "batch_size=2",
            "-o", "data.num_workers=0", "-o", "tensorboard=false", *extra]


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("unlabeled")
    for i in range(3):
        write_tone(root / f"{i}.wav", 1.0, seed=i)
    return root


PRETRAIN_CASES = [
    ("negative lr", ["-o", "optim.lr=-1"], 2, ["optim.lr must be > 0, got -1.0"]),
    ("zero batch", ["-o", "batch_size=0"], 2, ["batch_size must be positive, got 0"]),
    ("zero log_every", ["-o", "log_every=0"], 2, ["log_every must be positive"]),
    ("zero max_steps", ["-o", "max_steps=0"], 2, ["max_steps must be positive"]),
    ("negative workers", ["-o", "data.num_workers=-1"], 2, ["data.num_workers must be >= 0"]),
    ("negative weight decay", ["-o", "optim.weight_decay=-1"], 2, ["optim.weight_decay must be >= 0"]),
    ("beta of 1", ["-o", "optim.betas=[1.0,0.99]"], 2, ["betas must each lie in [0, 1)"]),
    ("roll probability", ["-o", "data.roll_prob=2"], 2, ["roll_prob is a probability"]),
    ("expdir not writable", ["--expdir", "{blocker}/exp"], 2,
     ["experiment folder (--expdir)", "not writable"]),
    ("fbank cache not writable", ["--fbank-cache", "{blocker}/fb"], 2,
     ["fbank cache folder", "not writable"]),
    ("resume without a run", ["--resume"], 2, ["--resume: no checkpoint"]),
    ("change without resume", ["--allow-config-change"], 2, ["only applies with --resume"]),
    ("diverges at once", ["-o", "optim.lr=1e30", "-o", "optim.warmup_steps=0", "-o", "ckpt_every=100"], 1,
     ["non-finite loss", "No checkpoint exists yet"]),
]


@pytest.mark.parametrize("extra,code,expect", [c[1:] for c in PRETRAIN_CASES],
                         ids=[c[0] for c in PRETRAIN_CASES])
def test_pretrain_bad_input(tmp_path, audio, blocker, capsys, extra, code, expect):
    extra = [a.format(blocker=blocker) for a in extra]
    try:
        rc = run_pretrain.main(_pretrain(tmp_path, audio, "-n", "run", *extra))
    except SystemExit as exited:  # argparse's own errors
        rc = exited.code
    assert rc == code
    line = _one_error(capsys)
    for part in expect:
        assert part in line, line
    assert not list((tmp_path / "exp").rglob("upstream.pt"))


def test_pretrain_divergence_after_a_checkpoint_names_its_step(tmp_path, audio, capsys):
    """Before: 'a last good checkpoint was kept' whether or not one existed. Now the step it holds is
    named."""
    three = ["-n", "run", "-o", "ckpt_every=1", "-o", "max_steps=3"]  # the loss after a 1e30 update is NaN
    ok = _pretrain(tmp_path, audio, *three, "--stop-at-step", "1")
    assert run_pretrain.main(ok) == 0
    capsys.readouterr()
    resumed = _pretrain(tmp_path, audio, *three, "--resume", "--allow-config-change", "-o", "optim.lr=1e30")
    assert run_pretrain.main(resumed) == 1
    line = _one_error(capsys)
    assert "non-finite loss" in line and "at step 3" in line
    assert "last.ckpt of step 2, the last one saved before the loss became non-finite, was kept" in line
    assert torch.load(tmp_path / "exp" / "run" / "last.ckpt", weights_only=False)["step"] == 2
    assert (tmp_path / "exp" / "run" / "config.to-step1.yaml").is_file()  # the settings step 1 ran with
