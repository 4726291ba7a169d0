"""The pretraining loop: learning, skipped files, exact resume, signals, non-finite loss, DDP, outputs, CLI.

Most tests drive a tiny fake objective defined here (a masked autoencoder over 16x16 fbank patches with a
real :class:`~upstream.encoder.ASTEncoder`, so it saves as a loadable MAE-AST-layout upstream). Its mask comes
from the generator the trainer passes and its input BatchNorm uses batch statistics, so exact resume and
DDP equality are tested for the things that make them hard. Subprocess runs import it as
``test_pretrain:build_fake_objective`` (``tests/`` on PYTHONPATH). The real objectives run at the end.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from torch import nn

import pretrain as pt
import run_pretrain
import upstream
from common.config import ConfigError, load_config
from common.distributed import StepBatchSampler
from pretrain import NonFiniteLossError, PretrainConfig, PretrainStopped, Schedule, run
from upstream.config import UpstreamConfig
from upstream.encoder import ASTEncoder, EncoderConfig
from upstream.frontend import FbankConfig
from upstream.interface import Upstream
from upstream.tokenizer import patchify

REPO = Path(__file__).resolve().parents[1]
FAKE = f"{__name__}:build_fake_objective"
SR = 16000


# ============================================================================================ fake objective
class FakeObjective(nn.Module):
    """Masked patch autoencoder with the objective interface (see upstream.objective.Objective)."""

    family = "mae_ast"
    KEYS = frozenset({"family", "num_views", "mask_ratio", "crop_secs", "nan_after_calls", "sleep_secs",
                      "dropout", "sigterm_at_call"})

    def __init__(self, cfg: dict):
        super().__init__()
        unknown = set(cfg) - self.KEYS
        if unknown:
            raise ValueError(f"unknown fake objective keys {sorted(unknown)}")
        self.num_views = int(cfg.get("num_views", 1))
        self.crop_secs = cfg.get("crop_secs", 1.0)
        self.mask_ratio = cfg.get("mask_ratio", 0.5)
        self.nan_after_calls, self.sleep_secs = cfg.get("nan_after_calls"), cfg.get("sleep_secs", 0.0)
        self.sigterm_at_call = cfg.get("sigterm_at_call")  # this process sends itself SIGTERM then
        self.frontend = FbankConfig.mae_ast()
        self.enc_cfg = EncoderConfig(embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0, fshape=16, tshape=16,
                                     fstride=16, tstride=16, input_tdim=16, token_order="time_major",
                                     num_prefix_tokens=0, pos_embed="sincos", norm_first=False, norm_eps=1e-5,
                                     input_batchnorm=True, dropout=cfg.get("dropout", 0.0))
        self.encoder = ASTEncoder(self.enc_cfg)
        self.mask_token = nn.Parameter(torch.zeros(16))
        self.head = nn.Linear(16, 256)
        self.calls, self.steps_seen = 0, []

    def forward(self, fbank, num_frames, generator):
        self.calls += 1
        if self.sleep_secs:
            time.sleep(self.sleep_secs)
        if self.calls == self.sigterm_at_call:
            os.kill(os.getpid(), signal.SIGTERM)
        if self.num_views == 2:
            assert fbank.dim() == 4 and num_frames.dim() == 2
            fbank = fbank.flatten(0, 1)  # (B*V, T, F)
        normed = self.encoder.normalize_input(fbank)  # batch statistics in training
        tokens = self.encoder.patch_embed(normed)  # (B, N, D)
        mask = torch.rand(tokens.shape[:2], generator=generator, device=generator.device) < self.mask_ratio
        tokens = torch.where(mask[..., None].to(tokens.device), self.mask_token.to(tokens.dtype), tokens)
        _, x = self.encoder.forward_blocks(self.encoder.add_position(tokens))
        target = patchify(normed.detach(), 16, 16, "time_major")  # (B, N, 256)
        err = (self.head(x).float() - target.float()).pow(2).mean(-1)  # (B, N)
        loss = err[mask].mean()
        if self.nan_after_calls is not None and self.calls > self.nan_after_calls:
            loss = loss * float("nan")
        return loss, {"masked_frac": mask.float().mean(), "mse_visible": err[~mask].mean().detach()}

    def after_step(self, step: int, total_steps: int) -> None:
        self.steps_seen.append((step, total_steps))

    def param_groups(self, weight_decay: float) -> list[dict]:
        decay = [p for n, p in self.named_parameters() if p.ndim >= 2 and "mask_token" not in n]
        other = [p for n, p in self.named_parameters() if not (p.ndim >= 2 and "mask_token" not in n)]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]

    def to_upstream(self) -> Upstream:
        cfg = UpstreamConfig("mae_ast", EncoderConfig.from_dict({**self.enc_cfg.to_dict(), "dropout": 0.0}),
                             self.frontend)
        up = Upstream(cfg, "fake")
        up.encoder.load_state_dict(self.encoder.state_dict())
        return up


def build_fake_objective(cfg: dict) -> FakeObjective:
    return FakeObjective(cfg)


# ============================================================================================ helpers
@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    """5 usable clips (0.5-2 s, one in a sub-folder), one garbage .wav, one empty .wav, one .txt."""
    root = tmp_path_factory.mktemp("audio")
    (root / "sub").mkdir()
    rng = np.random.default_rng(0)
    for i, secs in enumerate([0.5, 0.8, 1.2, 1.5, 2.0]):
        t = np.arange(int(secs * SR)) / SR
        wav = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(root / ("sub" if i == 2 else "") / f"clip{i}.wav", wav.astype(np.float32), SR)
    (root / "garbage.wav").write_bytes(b"this is not audio" * 50)
    sf.write(root / "empty.wav", np.zeros(0, dtype=np.float32), SR)
    (root / "notes.txt").write_text("not audio")
    return root


def make_cfg(out_dir: Path, data: Path, *overrides: str, objective: dict | None = None) -> PretrainConfig:
    base = {"objective": {"family": FAKE, **(objective or {})}}
    defaults = ["batch_size=4", "max_steps=30", "optim.lr=3e-3", "optim.weight_decay=0.01",
                "optim.schedule=constant", "data.num_workers=0", "tensorboard=false", "ckpt_every=10",
                "log_every=5", "device=cpu", f"out_dir={out_dir}", f"data.path={data}"]
    return load_config(PretrainConfig, None, [*defaults, *overrides], base=base)


def losses(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "losses.jsonl").read_text().splitlines()]


def write_recipe(path: Path, objective: dict, **settings) -> Path:
    """A recipe YAML for the fake objective (CPU, no workers, no tensorboard unless told)."""
    data = {"objective": {"family": FAKE, **objective}, "data": {"num_workers": 0}, "tensorboard": False,
            "batch_size": 4, "optim": {"lr": 3e-3}}
    for key, value in settings.items():
        section, _, leaf = key.partition("__")
        if leaf:
            data.setdefault(section, {})[leaf] = value
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data))
    return path


def cli(*args: str, expdir: Path) -> int:
    return run_pretrain.main([*args, "--expdir", str(expdir), "--device", "cpu"])


def subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def straight_run(audio_dir, tmp_path_factory) -> tuple[Path, Path]:
    """30 uninterrupted steps of the fake objective, tensorboard on: (run folder, what run() returned)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    return out, run(make_cfg(out, audio_dir, "tensorboard=true"))


# ======================================================================================= learning, outputs
def test_loss_falls_and_outputs_are_written(straight_run):
    out, returned = straight_run
    rows = losses(out)
    assert [r["step"] for r in rows] == list(range(1, 31)) and returned == out / "upstream.pt"
    first, last = np.mean([r["loss"] for r in rows[:5]]), np.mean([r["loss"] for r in rows[-5:]])
    assert last < 0.5 * first, (first, last)
    assert set(rows[0]["logs"]) == {"masked_frac", "mse_visible"} and rows[0]["lr"] == pytest.approx(3e-3)
    assert (out / "config.yaml").is_file() and (out / "upstream.pt").is_file()
    assert list((out / "tb").glob("events.out.tfevents.*"))
    cfg = load_config(PretrainConfig, out / "config.yaml")  # the resolved config rebuilds the run
    assert cfg.batch_size == 4 and cfg.objective["family"] == FAKE
    ckpt = torch.load(out / "last.ckpt", weights_only=False)
    assert ckpt["step"] == 30 and ckpt["sampler"] == (*divmod(30 * 4, 7), 120)
    assert {"objective", "optimizer", "schedule", "rng", "config"} <= set(ckpt)


def test_unusable_files_are_skipped_and_counted(straight_run, audio_dir):
    out, _ = straight_run
    assert torch.load(out / "upstream.pt", weights_only=False)["extra"]["skipped_files"] == 2
    skipped = torch.load(out / "last.ckpt", weights_only=False)["skipped_files"]
    assert sorted(Path(p).name for p in skipped) == ["empty.wav", "garbage.wav"]
    assert "empty" in skipped[str(audio_dir / "empty.wav")]


def test_skipped_files_are_logged(audio_dir, tmp_path, caplog):
    caplog.set_level("WARNING", logger="pretrain.engine")
    run(make_cfg(tmp_path / "r", audio_dir, "max_steps=4", "batch_size=7"))  # one full epoch
    warnings = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
    assert any("garbage.wav" in w for w in warnings) and any("empty.wav" in w for w in warnings)
    assert any("2 unusable audio files were skipped" in w for w in warnings)


def test_upstream_pt_loads_with_upstream_load(straight_run):
    out, _ = straight_run
    model = upstream.load("mae_ast_patch_mini", ckpt=out / "upstream.pt").eval()
    ckpt = torch.load(out / "last.ckpt", weights_only=False)
    trained = {k[len("encoder."):]: v for k, v in ckpt["objective"].items() if k.startswith("encoder.")}
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, trained[k]), k
    feats = model([torch.randn(SR)])
    assert feats["last_hidden_state"].shape[0] == 1 and torch.isfinite(feats["last_hidden_state"]).all()


def test_after_step_and_param_groups(audio_dir, tmp_path):
    obj = FakeObjective({"family": FAKE})
    run(make_cfg(tmp_path / "r", audio_dir, "max_steps=3", "optim.weight_decay=0.2",
                      "optim.weight_decay_end=0.4"), objective=obj)
    assert obj.steps_seen == [(0, 3), (1, 3), (2, 3)]
    groups = torch.load(tmp_path / "r" / "last.ckpt", weights_only=False)["optimizer"]["param_groups"]
    assert groups[0]["weight_decay"] == pytest.approx(0.4) and groups[1]["weight_decay"] == 0.0


# ============================================================================================ exact resume
def test_resume_is_exact(straight_run, audio_dir, tmp_path):
    ref = losses(straight_run[0])
    out = tmp_path / "run"
    assert run(make_cfg(out, audio_dir), stop_at_step=13) == out / "upstream.pt"  # not a ckpt_every multiple
    assert torch.load(out / "last.ckpt", weights_only=False)["step"] == 13
    with (out / "losses.jsonl").open("a") as f:  # a crash after the checkpoint logged steps it will redo
        f.write(json.dumps({"step": 14, "loss": 123.0, "lr": 0.0, "logs": {}}) + "\n")
    with pytest.raises(ConfigError, match="--resume"):
        run(make_cfg(out, audio_dir))
    run(make_cfg(out, audio_dir), resume=True)
    got = losses(out)
    assert [r["step"] for r in got] == list(range(1, 31))
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in ref], rtol=0, atol=1e-6)


def test_stop_at_step_zero_saves_the_initial_weights(straight_run, audio_dir, tmp_path):
    """Step 0 is a checkpoint like any other (the demo's from-scratch baselines are built this way): resuming
    it replays the uninterrupted run exactly."""
    out = tmp_path / "run"
    assert run(make_cfg(out, audio_dir), stop_at_step=0) == out / "upstream.pt"
    assert (out / "upstream.pt").is_file() and torch.load(out / "last.ckpt", weights_only=False)["step"] == 0
    with pytest.raises(ConfigError, match=">= 0"):
        run(make_cfg(tmp_path / "other", audio_dir), stop_at_step=-1)
    run(make_cfg(out, audio_dir), resume=True)
    np.testing.assert_allclose([r["loss"] for r in losses(out)], [r["loss"] for r in losses(straight_run[0])],
                               rtol=0, atol=1e-6)


def test_two_views_accumulation_and_workers_resume_exactly(audio_dir, tmp_path):
    """2 views, grad_accum 2, dropout, worker processes: same losses straight, resumed and with no workers."""
    opts = ("batch_size=4", "grad_accum=2", "max_steps=6", "ckpt_every=2", "optim.schedule=cosine",
            "optim.warmup_steps=2")
    obj = {"num_views": 2, "dropout": 0.1}
    run(make_cfg(tmp_path / "a", audio_dir, *opts, "data.num_workers=2", objective=obj))
    run(make_cfg(tmp_path / "b", audio_dir, *opts, objective=obj), stop_at_step=3)
    run(make_cfg(tmp_path / "b", audio_dir, *opts, objective=obj), resume=True)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(a) == len(b) == 6
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=0, atol=1e-6)


def test_resume_refuses_a_different_recipe(audio_dir, tmp_path):
    out = tmp_path / "run"
    run(make_cfg(out, audio_dir, "max_steps=2"))
    with pytest.raises(ConfigError, match="batch_size was 4"):
        run(make_cfg(out, audio_dir, "max_steps=4", "batch_size=8"), resume=True)


# ============================================================================================ stop conditions
@pytest.mark.slow
def test_sigterm_stops_at_the_next_step_exits_143_and_resumes_exactly(audio_dir, tmp_path):
    """SIGTERM: the step under way finishes, last.ckpt is saved, no upstream.pt (the run did not finish), exit
    code 128 + 15 and a line saying where it stopped; --resume then continues as if never stopped."""
    recipe = write_recipe(tmp_path / "fake.yaml", {"sleep_secs": 0.05}, max_steps=100000, optim__lr=3e-3,
                          optim__schedule="constant", log_every=1000, ckpt_every=3)
    args = [sys.executable, str(REPO / "run_pretrain.py"), "-u", FAKE, "-c", str(recipe), "--data",
            str(audio_dir), "-n", "sig", "--expdir", str(tmp_path), "--device", "cpu"]
    proc = subprocess.Popen(args, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out = tmp_path / "sig"
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "last.ckpt").exists():  # the loop (and its handler) runs
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    ckpt = torch.load(out / "last.ckpt", weights_only=False)
    k = ckpt["step"]
    # stopped after the step under way, not at the next log_every (1000) step; every step done is logged
    assert 3 <= k < 1000 and len(losses(out)) == k
    assert f"stopped by SIGTERM at step {k} of 100000" in stderr and "--resume" in stderr
    assert not (out / "upstream.pt").exists()
    # resumed in this process for 3 more steps == one uninterrupted run of k + 3 steps
    stop = ["--stop-at-step", str(k + 3)]
    assert cli("--resume", "-n", "sig", *stop, "-o", "objective.sleep_secs=0", expdir=tmp_path) == 2
    assert cli("--resume", "-n", "sig", *stop, expdir=tmp_path) == 0  # config.yaml of the run is reused
    assert cli("-c", str(recipe), "--data", str(audio_dir), "-n", "ref", *stop, expdir=tmp_path) == 0
    ref = [r["loss"] for r in losses(tmp_path / "ref")]
    np.testing.assert_allclose([r["loss"] for r in losses(out)], ref, rtol=0, atol=1e-6)
    assert torch.load(out / "upstream.pt", weights_only=False)["extra"]["pretrain_step"] == k + 3


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(audio_dir, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "nan.yaml", {"nan_after_calls": 5}, max_steps=20, ckpt_every=2)
    assert cli("-c", str(recipe), "--data", str(audio_dir), "-n", "nan", expdir=tmp_path) == 1
    assert "non-finite loss nan at step 6" in capsys.readouterr().err
    out = tmp_path / "nan"
    assert torch.load(out / "last.ckpt", weights_only=False)["step"] == 4
    assert [r["step"] for r in losses(out)] == [1, 2, 3, 4, 5]
    with pytest.raises(NonFiniteLossError, match="step 6"):
        run(make_cfg(tmp_path / "again", audio_dir, objective={"nan_after_calls": 5}))


def test_a_signal_stops_the_library_run_with_pretrain_stopped(audio_dir, tmp_path):
    """In the library, SIGTERM is an exception naming the step reached; last.ckpt is saved there, no
    upstream.pt, and the handler that was installed before the run is back afterwards."""
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(PretrainStopped, match="stopped by SIGTERM at step 7 of 30") as stopped:
        run(make_cfg(out, audio_dir, objective={"sigterm_at_call": 7}))  # during step 7: it finishes first
    assert (stopped.value.step, stopped.value.signum, stopped.value.out_dir) == (7, 15, str(out))
    assert torch.load(out / "last.ckpt", weights_only=False)["step"] == 7
    assert not (out / "upstream.pt").exists()
    assert [r["step"] for r in losses(out)] == list(range(1, 8))
    assert signal.getsignal(signal.SIGTERM) is before


# ============================================================================================ DDP
@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["fake", "mae_ast_patch_mini", "asit_mini"])
def test_two_process_ddp_matches_one_process(recipe, audio_dir, tmp_path):
    """2 gloo ranks x 1 micro-batch == 1 process x 2 accumulated micro-batches, same global batch of 4.

    MAE-AST adds what makes this hard: an input BatchNorm on batch statistics, a chunk mask shared by the
    micro-batch, variable-length clips (per-micro-batch padding), dropout and layerdrop. ASiT adds state the
    objective updates from the batch: the DINO centres must move once per step from the global batch mean
    (moved per micro-batch, the 1-process run's centres and losses drift from the 2-rank run's).
    """
    if recipe == "fake":
        path = write_recipe(tmp_path / "ddp.yaml", {"dropout": 0.1}, max_steps=5, optim__clip_grad=1.0)
    else:
        path = REPO / "configs/pretrain" / f"{recipe}.yaml"
    steps = 3 if recipe == "asit_mini" else 5
    opts = ["-c", str(path), "--data", str(audio_dir), "-o", f"max_steps={steps}", "-o", "tensorboard=false"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "run_pretrain.py"), *opts, "-n", "ddp", "--expdir", str(tmp_path), "--device", "cpu"]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "grad strides do not match" not in proc.stderr.lower()  # DDP warns of a non-contiguous weight
    assert cli(*opts, "-n", "single", "-o", "grad_accum=2", expdir=tmp_path) == 0
    ddp, single = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert len(ddp) == len(single) == steps
    np.testing.assert_allclose([r["loss"] for r in ddp], [r["loss"] for r in single], rtol=0, atol=1e-5)
    ckpt = torch.load(tmp_path / "ddp" / "last.ckpt", weights_only=False)
    assert ckpt["world_size"] == 2
    if recipe == "asit_mini":
        ref = torch.load(tmp_path / "single" / "last.ckpt", weights_only=False)["objective"]
        for key in ("center_cls", "center_data", "teacher.norm.weight"):
            assert ckpt["objective"][key].abs().sum() > 0, key
            torch.testing.assert_close(ckpt["objective"][key], ref[key], rtol=0, atol=1e-6)


def test_asit_centres_move_once_per_step_from_the_global_batch(audio_dir, tmp_path):
    """1 x 4 clips and 2 accumulated micro-batches x 2 clips give the same centres after the first step.

    The teacher sees the clean views and does not change within a step, so the step's mean teacher output
    is the same however the batch is cut (later steps differ: the masks, hence the students, differ).
    """
    for accum in (1, 2):
        run(_mini("asit_mini", tmp_path / str(accum), audio_dir, "max_steps=1", f"grad_accum={accum}"))
    one, two = (torch.load(tmp_path / a / "last.ckpt", weights_only=False)["objective"] for a in ("1", "2"))
    for key in ("center_cls", "center_data"):
        assert one[key].abs().sum() > 0
        torch.testing.assert_close(one[key], two[key], rtol=0, atol=1e-6)


# ============================================================================================ CLI
def test_cli_errors(audio_dir, tmp_path, capsys):
    base = ["-u", "mae_ast_patch", "-c", str(REPO / "configs/pretrain/mae_ast_patch_mini.yaml"), "-n", "x",
            "--expdir", str(tmp_path), "--device", "cpu"]
    assert run_pretrain.main([*base, "--data", str(tmp_path / "nope")]) == 2
    assert f"pretraining data path {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no audio here")
    assert run_pretrain.main([*base, "--data", str(empty)]) == 2
    assert "no audio files" in (err := capsys.readouterr().err) and str(empty) in err
    assert run_pretrain.main([*base, "--data", str(audio_dir), "-o", "optim.lrr=1"]) == 2
    assert "unknown config key 'optim.lrr'" in (err := capsys.readouterr().err) and "'lr'" in err
    assert run_pretrain.main([*base, "--data", str(audio_dir), "-o", "max_steps=ten"]) == 2
    assert "'max_steps'" in (err := capsys.readouterr().err) and "int" in err
    assert run_pretrain.main([*base, "--data", str(audio_dir), "-o", "objective.mask_ration=0.5"]) == 2
    assert "unknown mae_ast objective key 'mask_ration'" in capsys.readouterr().err  # the family names it
    assert run_pretrain.main([*base[:1], "ssast_patch", *base[2:], "--data", str(audio_dir)]) == 2
    assert "objective.family" in capsys.readouterr().err  # -u disagrees with the recipe
    rc = run_pretrain.main([*base, "--data", str(audio_dir), "-o", "batch_size=6", "-o", "grad_accum=4"])
    assert rc == 2
    assert "divisible" in capsys.readouterr().err
    assert run_pretrain.main([*base, "--data", str(audio_dir), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_cli_prints_the_upstream_and_refuses_knobs_it_would_drop(audio_dir, tmp_path, capsys):
    """-o out_dir= and a recipe naming another out_dir are refused (the run folder is --expdir/-n), as is
    -o run.* (pretraining has no run section); a run that finishes prints its upstream.pt on stdout."""
    recipe = write_recipe(tmp_path / "fake.yaml", {}, max_steps=2)
    args = ["-u", FAKE, "-c", str(recipe), "--data", str(audio_dir)]
    assert cli(*args, "-n", "a", "-o", f"out_dir={tmp_path / 'elsewhere'}", expdir=tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("run_pretrain.py: error: -o out_dir=") and str(tmp_path / "a") in err
    assert err.count("\n") == 1 and not (tmp_path / "elsewhere").exists()
    assert cli(*args, "-n", "a", "-o", "run.seed=3", expdir=tmp_path) == 2
    assert "unknown config key 'run'" in capsys.readouterr().err
    moved = write_recipe(tmp_path / "moved.yaml", {}, max_steps=2, out_dir=str(tmp_path / "elsewhere"))
    assert cli("-u", FAKE, "-c", str(moved), "--data", str(audio_dir), "-n", "a", expdir=tmp_path) == 2
    assert "sets out_dir" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert cli(*args, "-n", "a", expdir=tmp_path) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'a' / 'upstream.pt'}\n"
    assert (tmp_path / "a" / "upstream.pt").is_file()
    # the run's own config.yaml names its folder: accepted on --resume even after the folder moved
    (tmp_path / "a").rename(tmp_path / "b")
    assert cli("--resume", "-n", "b", "-o", "max_steps=3", "--allow-config-change", expdir=tmp_path) == 0
    assert [r["step"] for r in losses(tmp_path / "b")] == [1, 2, 3]


# ============================================================================================ units
def test_sampler_is_a_function_of_seed_and_step():
    """Pretraining's keyed stream: (position, file) pairs, epoch orders drawn from (seed, 0, epoch)."""
    def sampler(start: int, stop: int, **kw) -> StepBatchSampler:
        return StepBatchSampler(7, 4, 3, start, stop, stream=0, keyed=True, **kw)

    full = [k for batch in sampler(0, 5) for k in batch]
    assert [p for p, _ in full] == list(range(20))
    assert [f for _, f in full[:7]] == np.random.default_rng([3, 0, 0]).permutation(7).tolist()
    assert [f for _, f in full[7:14]] == np.random.default_rng([3, 0, 1]).permutation(7).tolist()
    assert [f for _, f in full[:7]] != [f for _, f in full[7:14]]  # a new permutation per epoch
    resumed = [k for batch in sampler(2, 5) for k in batch]
    assert resumed == full[8:]
    ranks = [list(sampler(0, 5, rank=r, world_size=2)) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == list(sampler(0, 5))
    assert sampler(0, 5).position(5) == (2, 6)  # step 5 starts at sample 20: epoch 2, index 6


def test_schedules():
    def cfg(**kw):
        return load_config(PretrainConfig, None, [f"optim.{k}={v}" for k, v in kw.items()]).optim

    s = Schedule(cfg(lr=1.0, warmup_steps=4, schedule="cosine", min_lr=0.1), max_steps=14)
    assert [s.lr(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s.lr(4) == 1.0 and s.lr(9) == pytest.approx(0.55) and s.lr(14) == pytest.approx(0.1)
    p = Schedule(cfg(lr=1.0, warmup_steps=0, schedule="polynomial", min_lr=0.0), max_steps=10)
    assert p.lr(5) == pytest.approx(0.5) and p.lr(10) == 0.0
    w = Schedule(cfg(weight_decay=0.04, weight_decay_end=0.4), max_steps=11)
    assert w.weight_decay(0) == pytest.approx(0.04) and w.weight_decay(10) == pytest.approx(0.4)
    h = Schedule(cfg(lr=1.0, schedule="plateau_halving", plateau_every=2, plateau_patience=1), max_steps=100)
    for step, loss in enumerate([5, 5, 4, 4, 4, 4, 4, 4]):
        h.observe(step, loss)
    assert h.lr(50) == 0.5  # windows 5, 4, 4 (bad), 4 (bad > patience) -> halved
    state = h.state_dict()
    h2 = Schedule(h.cfg, 100)
    h2.load_state_dict(state)
    assert h2.lr(50) == 0.5


def test_manifests(audio_dir, tmp_path):
    rows = [{"path": str(audio_dir / "clip0.wav"), "duration": 0.5}, {"path": str(audio_dir / "clip4.wav")}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert pt.list_audio_files(tmp_path / "m.jsonl", min_secs=1.0) == [str(audio_dir / "clip4.wav")]
    rel = tmp_path / "audio"
    rel.mkdir()
    (rel / "a.flac").write_bytes(b"")
    (tmp_path / "m.csv").write_text("path,duration\naudio/a.flac,3\n")
    assert pt.list_audio_files(tmp_path / "m.csv") == [str(tmp_path / "audio/a.flac")]
    (tmp_path / "m.json").write_text(json.dumps({"data": [{"wav": "audio/a.flac", "labels": "/m/09x0r"}]}))
    assert pt.list_audio_files(tmp_path / "m.json") == [str(tmp_path / "audio/a.flac")]
    (tmp_path / "train.tsv").write_text(f"{rel}\na.flac\t48000\n")
    assert pt.list_audio_files(tmp_path / "train.tsv") == [str(rel / "a.flac")]
    files = pt.list_audio_files(audio_dir)
    assert len(files) == 7 and str(audio_dir / "sub" / "clip2.wav") in files


def test_crops_pads_and_rolls_are_seeded(audio_dir):
    files = pt.list_audio_files(audio_dir)
    data = pt.DataConfig(pad_to_crop=True, roll_prob=1.0)
    ds = pt.UnlabeledAudio(files, SR, crop_secs=1.0, num_views=2, seed=0, data=data)
    good = files.index(str(audio_dir / "clip4.wav"))  # 2 s: two different 1 s crops
    a, b = ds[(11, good)], ds[(11, good)]
    assert all(torch.equal(x, y) for x, y in zip(a["views"], b["views"]))
    assert [v.numel() for v in a["views"]] == [SR, SR] and not torch.equal(*a["views"])
    short = ds[(3, files.index(str(audio_dir / "clip0.wav")))]["views"][0]  # 0.5 s zero-padded to 1 s
    assert short.numel() == SR and (short[SR // 2:] == 0).all()
    bad = ds[(0, files.index(str(audio_dir / "empty.wav")))]
    assert [Path(p).name for p, _ in bad["bad"]] == ["empty.wav", "garbage.wav"]  # replaced by the next file
    wavs, lengths, reported = pt.collate_views([a, short_item := ds[(4, 0)]])
    assert wavs.shape[:2] == (2, 2) and lengths.shape == (2, 2) and reported == short_item["bad"]
    strict = pt.UnlabeledAudio(files, 32000, None, 1, 0, pt.DataConfig(resample=False))
    with pytest.raises(pt.DataError, match="none of the 7 audio files could be used.*not 32000 Hz"):
        strict[(0, good)]  # every file is at 16 kHz: unusable without resampling
    long_only = pt.UnlabeledAudio(files, SR, None, 1, 0, pt.DataConfig(min_secs=1.0))
    item = long_only[(0, files.index(str(audio_dir / "clip0.wav")))]
    assert "too short" in item["bad"][0][1] and item["views"][0].numel() >= SR


# ============================================================================================ real objectives
REAL_MINI = ["ssast_patch_mini", "ssast_frame_mini", "mae_ast_patch_mini", "mae_ast_frame_mini", "asit_mini"]


def _mini(name: str, out: Path, data: Path, *overrides: str) -> PretrainConfig:
    return load_config(PretrainConfig, REPO / "configs/pretrain" / f"{name}.yaml",
                       [f"out_dir={out}", f"data.path={data}", "device=cpu", "tensorboard=false",
                        "data.num_workers=0", *overrides])


@pytest.mark.parametrize("name", REAL_MINI)
def test_real_objective_steps_resumes_and_saves_a_loadable_upstream(name, audio_dir, tmp_path):
    cfg = _mini(name, tmp_path / "a", audio_dir, "max_steps=4", "ckpt_every=2")
    run(cfg)
    run(_mini(name, tmp_path / "b", audio_dir, "max_steps=4", "ckpt_every=2"), stop_at_step=2)
    run(_mini(name, tmp_path / "b", audio_dir, "max_steps=4", "ckpt_every=2"), resume=True)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert all(np.isfinite(r["loss"]) for r in a)
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=0, atol=1e-6)
    model = upstream.load(name, ckpt=tmp_path / "a" / "upstream.pt").eval()
    with torch.no_grad():
        out = model([torch.randn(model.sample_rate * 2)])
    assert torch.isfinite(out["last_hidden_state"]).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_MINI)
def test_real_objective_loss_falls(name, audio_dir, tmp_path):
    """30 steps (ASiT: 60). ASiT's DINO terms rise at first while the teacher temperature warms up and the
    centre settles, as in DINO, so its reconstruction term is the one that must fall."""
    steps = 60 if name == "asit_mini" else 30
    cfg = _mini(name, tmp_path / "a", audio_dir, f"max_steps={steps}")
    run(cfg)
    rows = [r["logs"]["recon"] if name == "asit_mini" else r["loss"] for r in losses(tmp_path / "a")]
    assert np.mean(rows[-5:]) < 0.9 * np.mean(rows[:5]), rows


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (REPO / "configs/pretrain").glob("*.yaml")))
def test_every_recipe_resolves_and_builds(recipe):
    """Every recipe's keys are accepted by its family's build_objective (built at mini size to stay fast)."""
    cfg = load_config(PretrainConfig, REPO / "configs/pretrain" / f"{recipe}.yaml", ["objective.size=mini"])
    objective = pt.build_objective(cfg.objective)
    assert objective.family == cfg.objective["family"] and objective.num_views in (1, 2)
    assert cfg.batch_size % cfg.grad_accum == 0 and cfg.max_steps > cfg.optim.warmup_steps
    assert cfg.data.path == ""  # data roots come from --data, never from a committed recipe


def test_probe_records_go_to_losses_jsonl_and_one_tensorboard_curve_per_task(tmp_path):
    """Two probed tasks at one step: two losses.jsonl lines, and tensorboard keeps them apart by task."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pretrain.report import Reporter

    out = tmp_path / "run"
    cfg = make_cfg(out, tmp_path / "audio", "tensorboard=true")
    reporter = Reporter(cfg, out, start=0, stop=10, resume=False, enabled=True)
    reporter.probe(0, {"task": "esc50", "knn_accuracy": 0.25, "n_clips": 40})
    reporter.probe(0, {"task": "speech_commands_v2", "knn_accuracy": 0.75, "n_clips": 80})
    reporter.close()
    assert [r["probe"]["task"] for r in losses(out)] == ["esc50", "speech_commands_v2"]
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"probe/esc50/knn_accuracy", "probe/speech_commands_v2/knn_accuracy"} <= tags
    assert [e.value for e in events.Scalars("probe/speech_commands_v2/knn_accuracy")] == [0.75]
