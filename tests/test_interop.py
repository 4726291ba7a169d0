"""The ecosystem's APIs: HEAR 2021, X-ARES, s3prl both ways (with a stand-in s3prl), s3prl's CLI habits,
progress bars and ``runner.log_step``. No tensorflow, xares or s3prl is needed: each API's contract is checked
here as its own checker checks it (see the README for running hear-validator and X-ARES's checker)."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import run_downstream
import upstream
from astbench import hear
from astbench.framing import frame_grid
from astbench.xares import ASTBenchEncoder
from downstream import progress as progress_mod
from downstream import results
from downstream.job import s3prl_overrides
from downstream.validate import errors, validate_upstream
from tests.layouts import BUILDERS

REPO = Path(__file__).resolve().parents[1]

# one model of each token layout: (name, model rate, frame hop ms, first centre ms) computed by hand from the
# patch geometry: centre = ((tshape - 1) * shift + win) / 2, hop = tstride * shift (10 ms shift, 25 ms window)
FAMILIES = [
    ("ssast_patch_mini", 16000, 100.0, 87.5),  # 16x16 patches, tstride 10
    ("ssast_frame_mini", 16000, 10.0, 17.5),  # 128x2 frames, tstride 1
    ("mae_ast_patch_mini", 16000, 160.0, 87.5),  # 16x16 patches, tstride 16
    ("mae_ast_frame_mini", 16000, 20.0, 17.5),  # 128x2 frames, tstride 2
    ("asit_mini", 32000, 160.0, 87.5),  # 16x16 patches at 32 kHz, tstride 16
]


def _noise(n: int, samples: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, samples, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------------------------------ HEAR
@pytest.mark.parametrize("name,rate,hop_ms,first_ms", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_hear_api_contract(name, rate, hop_ms, first_ms):
    torch.manual_seed(0)
    model = hear.load_model(name)
    assert isinstance(model, nn.Module)
    assert model.sample_rate == (48000 if rate == 32000 else rate)  # HEAR has no 32 kHz: ASiT takes 48 kHz
    assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)
    up = model.upstream
    assert hop_ms == 1000 * up.get_downsample_rates("hidden_states") / up.sample_rate
    for secs in (1.07, 1.98, 4.0):  # hear-validator's lengths
        audio = _noise(2, int(secs * model.sample_rate))
        emb, ts = hear.get_timestamp_embeddings(audio, model)
        assert emb.dtype == torch.float32 and ts.dtype == torch.float32
        assert emb.shape[:2] == ts.shape and emb.shape[0] == 2
        assert emb.shape[2] == model.timestamp_embedding_size
        assert torch.equal(ts[0], ts[1])
        steps = ts[0].diff()
        assert torch.allclose(steps, torch.full_like(steps, hop_ms))  # one grid: the validator allows 1 ms
        assert ts[0, 0].item() == pytest.approx(first_ms)
        end = ts[0, -1].item()
        assert 1000 * secs - 2 * hop_ms <= end <= 1000 * secs  # hear-validator's end-of-audio checks
        assert torch.isfinite(emb).all()
    scene = hear.get_scene_embeddings(_noise(3, int(2.74 * model.sample_rate)), model)
    assert scene.shape == (3, model.scene_embedding_size) and scene.dtype == torch.float32


@pytest.mark.parametrize("name", [f[0] for f in FAMILIES])
def test_hear_batch_gives_what_each_clip_gives_alone(name):
    torch.manual_seed(0)
    model = hear.load_model(name)
    audio = _noise(3, int(1.5 * model.sample_rate), seed=1)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    scene = hear.get_scene_embeddings(audio, model)
    for i in range(3):
        alone, ts1 = hear.get_timestamp_embeddings(audio[i:i + 1], model)
        torch.testing.assert_close(alone[0], emb[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ts1[0], ts[i])
        torch.testing.assert_close(hear.get_scene_embeddings(audio[i:i + 1], model)[0], scene[i], atol=1e-5,
                                   rtol=1e-5)


def test_hear_frame_counts_by_hand():
    torch.manual_seed(0)
    # 1.07 s = 17120 samples. SSAST patch frame m exists from its first fbank frame (m*1600 + 400 <= 17120)
    # and is kept while its centre m*1600 + 1400 <= 17120: m <= 9, 10 frames. MAE-AST has no zero-padded
    # windows, so a patch needs all 16 fbank frames: m*2560 + 2800 <= 17120, m <= 5, 6 frames.
    for name, want in (("ssast_patch_mini", 10), ("mae_ast_patch_mini", 6)):
        emb, _ = hear.get_timestamp_embeddings(_noise(1, 17120), hear.load_model(name))
        assert emb.shape[1] == want, name


def test_hear_ssast_windows_advance_by_the_columns_they_hold():
    """s3prl's SSAST windows give 9 patch columns per 1 s window while reporting 10 frames/s, so frame m of
    ``upstream(wavs)`` is not at m x 100 ms. The HEAR frames are: windows start every 0.9 s, so frame 9 is
    column 0 of the window starting at 900 ms, centred at 900 + 87.5 ms, as its timestamp says."""
    torch.manual_seed(0)
    model = hear.load_model("ssast_patch_mini")
    audio = _noise(1, 32000, seed=2)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    first = model.upstream([audio[0, :16000]])["last_hidden_state"][0]
    second = model.upstream([audio[0, 14400:30400]])["last_hidden_state"][0]
    torch.testing.assert_close(emb[0, :9], first[:9])
    torch.testing.assert_close(emb[0, 9:18], second[:9])
    assert ts[0, 9].item() == pytest.approx(987.5)
    # s3prl's layout: row 9 is window 2's column 0
    drifting = model.upstream([audio[0]])["last_hidden_state"][0]
    torch.testing.assert_close(drifting[9], model.upstream([audio[0, 16000:]])["last_hidden_state"][0, 0])


def test_hear_asit_resamples_16_or_48_khz_input():
    torch.manual_seed(0)
    m48 = hear.load_model("asit_mini")
    torch.manual_seed(0)
    m16 = hear.load_model("asit_mini", sample_rate=16000)
    assert (m48.sample_rate, m16.sample_rate) == (48000, 16000)
    t = torch.arange(48000) / 48000
    tone48 = (0.5 * torch.sin(2 * torch.pi * 440 * t))[None]
    tone16 = tone48[:, ::3]  # the same 440 Hz tone at 16 kHz
    e48, ts48 = hear.get_timestamp_embeddings(tone48, m48)
    e16, ts16 = hear.get_timestamp_embeddings(tone16, m16)
    assert torch.equal(ts48, ts16)  # both resampled to 32 kHz: one grid
    assert torch.nn.functional.cosine_similarity(e48.flatten(), e16.flatten(), dim=0) > 0.99
    with pytest.raises(ValueError, match="HEAR feeds audio at"):
        hear.load_model("asit_mini", sample_rate=32000)


def test_hear_load_model_names_upstream_and_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(0)
    saved = upstream.load("ssast_frame_mini")
    ckpt = tmp_path / "frame.pt"
    saved.save(ckpt)
    by_pair = hear.load_model(f"ssast_frame_mini={ckpt}")
    monkeypatch.setenv(hear.UPSTREAM_ENV, "ssast_frame_mini")
    by_env = hear.load_model(str(ckpt))
    for model in (by_pair, by_env):
        for a, b in zip(model.upstream.state_dict().values(), saved.state_dict().values()):
            assert torch.equal(a, b)
    monkeypatch.delenv(hear.UPSTREAM_ENV)
    with pytest.raises(ValueError, match="no model_file_path given"):
        hear.load_model()
    with pytest.raises(ValueError, match="not a registered upstream"):
        hear.load_model(str(ckpt))
    with pytest.raises(ValueError, match="'nope' .* is not registered"):
        hear.load_model(str(ckpt), upstream="nope")
    with pytest.raises(ValueError, match="must be 2D"):
        hear.get_timestamp_embeddings(torch.zeros(16000), by_pair)
    layer0 = hear.load_model(f"ssast_frame_mini={ckpt}", layer=0)
    audio = _noise(1, 16000)
    assert not torch.allclose(hear.get_timestamp_embeddings(audio, layer0)[0],
                              hear.get_timestamp_embeddings(audio, by_pair)[0])


# ------------------------------------------------------------------------------------------ X-ARES
@pytest.mark.parametrize("name", [f[0] for f in FAMILIES])
def test_xares_encoder_contract(name):
    torch.manual_seed(0)
    enc = ASTBenchEncoder(name)
    # what xares.audio_encoder_checker.check_audio_encoder checks
    assert type(enc).__name__.endswith("Encoder") and isinstance(enc, nn.Module)
    assert enc.sampling_rate == enc.upstream.sample_rate and enc.device == torch.device("cpu")
    out = enc(torch.randn(2, 50000))
    assert out.ndim == 3 and out.shape[0] == 2 and out.shape[2] == enc.output_dim
    assert enc.hop_size_in_ms == 1000 * enc.upstream.get_downsample_rates() / enc.upstream.sample_rate
    assert abs(out.shape[1] * enc.hop_size_in_ms - 1000 * 50000 / enc.sampling_rate) <= 2 * enc.hop_size_in_ms
    # the later API: forward(audio, attention_mask) -> (frames, frame mask)
    frames, mask = enc(torch.randn(3, 50000), None)
    assert frames.shape[:2] == mask.shape and mask.all()


def test_xares_attention_mask_encodes_each_clip_at_its_length():
    torch.manual_seed(0)
    enc = ASTBenchEncoder("mae_ast_patch_mini")
    audio = _noise(2, 40000)
    mask = torch.ones(2, 40000)
    mask[1, 20000:] = 0
    frames, frame_mask = enc(audio, mask)
    n_short = enc.grid.num_frames(20000)  # floor((20000 - 2800) / 2560) + 1 = 7
    assert n_short == 7 and frame_mask.sum(1).tolist() == [enc.grid.num_frames(40000), 7]
    torch.testing.assert_close(frames[1, :7], enc(audio[1:2, :20000])[0])
    assert torch.equal(frames[1, 7:], torch.zeros_like(frames[1, 7:]))


def test_xares_ten_minutes_in_pieces():
    torch.manual_seed(0)
    enc = ASTBenchEncoder("mae_ast_patch_mini")
    out = enc(0.1 * torch.randn(600 * 16000))  # 10 minutes, (S,) accepted as one clip
    assert out.shape == (1, (600 * 16000 - 2800) // 2560 + 1, enc.output_dim) and torch.isfinite(out).all()


def test_pieces_read_just_the_audio_their_last_frame_needs():
    torch.manual_seed(0)
    up = upstream.load("mae_ast_patch_mini").eval()
    grid = frame_grid(up, chunk_secs=1.0)
    assert grid.piece == 6 * 2560  # 6 frames of 160 ms fit in 1 s
    audio = _noise(1, grid.piece + grid.context)[0]
    assert int(up([audio])["lengths"][0]) == grid.frames_per_piece  # context enough for the last frame ...
    assert int(up([audio[:-1]])["lengths"][0]) == grid.frames_per_piece - 1  # ... and not one sample more
    long = ASTBenchEncoder(up, chunk_secs=1.0)(_noise(1, 3 * 16000))
    assert long.shape[1] == grid.num_frames(3 * 16000)


# ------------------------------------------------------------------------------------------ s3prl
class _FakeExpert(nn.Module):
    """A stand-in for an s3prl legacy expert: 3 hidden states (embedding + 2 layers) at 320 samples/frame."""

    def __init__(self, ckpt=None):
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 400, stride=320)
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
        self.ckpt = ckpt

    def get_downsample_rates(self, key: str) -> int:
        return 320

    def forward(self, wavs):
        x = nn.utils.rnn.pad_sequence(wavs, batch_first=True)[:, None]
        h = [self.conv(nn.functional.pad(x, (0, 80))).transpose(1, 2)]
        for layer in self.layers:
            h.append(torch.tanh(layer(h[-1])))
        return {"hidden_states": h}


@pytest.fixture
def fake_s3prl(monkeypatch):
    """``s3prl.hub`` with one upstream, ``fake`` (what ``-u s3prl:fake`` finds); no skip when s3prl is
    absent."""
    calls = []

    def fake(ckpt=None, model_config=None, refresh=False):
        calls.append({"ckpt": ckpt, "model_config": model_config, "refresh": refresh})
        torch.manual_seed(0)
        return _FakeExpert(ckpt)

    hub = types.ModuleType("s3prl.hub")
    hub.fake = fake
    pkg = types.ModuleType("s3prl")
    pkg.hub = hub
    monkeypatch.setitem(sys.modules, "s3prl", pkg)
    monkeypatch.setitem(sys.modules, "s3prl.hub", hub)
    return calls


def test_s3prl_upstream_gets_clip_lengths_and_sample_rate(fake_s3prl):
    up = upstream.load("s3prl:fake", model_config=None, refresh=False)
    assert fake_s3prl == [{"refresh": False, "ckpt": None, "model_config": None}]
    assert (up.sample_rate, up.num_layers, up.hidden_size, up.get_downsample_rates()) == (16000, 3, 8, 320)
    assert not errors(validate_upstream(up))
    out = up([torch.randn(16000), torch.randn(8000)])
    assert out["lengths"].tolist() == [50, 25]  # round(len / 320), s3prl Featurizer's rule
    torch.testing.assert_close(out["clip"][1], out["last_hidden_state"][1, :25].mean(0))
    assert out["last_hidden_state"] is out["hidden_states"][-1]


def test_s3prl_upstream_runs_in_the_harness(fake_s3prl, tmp_path):
    root = BUILDERS["folder"](tmp_path / "data")["root"]
    args = ["-u", "s3prl:fake", "-d", "folder", "--data-root", str(root), "--expdir", str(tmp_path / "exp"),
            "--results", str(tmp_path / "r.jsonl"), "-n", "s3", "--device", "cpu", "--no-cache",
            "-o", "runner.total_steps=2", "-o", "runner.eval_step=2", "-o", "runner.batch_size=4"]
    assert run_downstream.main(args) == 0
    assert {r.upstream for r in results.load(tmp_path / "r.jsonl")} == {"s3prl:fake"}
    assert (tmp_path / "exp" / "s3" / "predictions.test.jsonl").is_file()


def test_s3prl_missing_or_unknown_is_one_error_line(monkeypatch, tmp_path, capsys, fake_s3prl):
    base = ["-d", "folder", "--data-root", str(tmp_path), "--results", str(tmp_path / "r.jsonl")]
    assert run_downstream.main(["-u", "s3prl:hubret", *base]) == 2
    assert "s3prl has no upstream 'hubret'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "s3prl", None)  # not installed
    assert run_downstream.main(["-u", "s3prl:hubert", *base]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs s3prl: pip install s3prl" in err


def test_our_upstreams_inside_s3prl(tmp_path):
    from astbench import s3prl as shim

    namespace: dict = {}
    exec("from astbench.s3prl import *", namespace)  # how s3prl's hub.py collects hubconf entries
    entry = namespace["astbench_ssast_patch_mini"]
    # s3prl's runner: Upstream(ckpt=-k, model_config=-g, refresh=-r), then its Featurizer's probe
    torch.manual_seed(0)
    model = entry(ckpt=None, model_config=None, refresh=False)
    out = model([torch.randn(16000)])
    assert isinstance(out["hidden_states"], list) and model.get_downsample_rates("hidden_states") == 1600
    torch.manual_seed(0)
    direct = upstream.load("ssast_patch_mini")
    wav = torch.randn(20000)
    torch.testing.assert_close(model([wav])["last_hidden_state"], direct([wav])["last_hidden_state"])
    # s3prl's custom-upstream slot: UpstreamExpert(ckpt, model_config) with -g naming the upstream
    assert shim.UpstreamExpert(None, "ssast_patch_mini").name == "ssast_patch_mini"
    config = tmp_path / "model.yaml"
    config.write_text("upstream: ssast_patch_mini\npooling: cls\n")
    assert shim.UpstreamExpert(None, str(config)).model.cfg.pooling == "cls"
    with pytest.raises(ValueError, match="which upstream"):
        shim.UpstreamExpert(None, None)
    hub = torch.hub.load(str(REPO), "asit_mini", source="local", trust_repo=True)
    assert type(hub).__name__ == "UpstreamExpert" and hub.model.sample_rate == 32000


def test_load_takes_s3prl_arguments(tmp_path):
    assert upstream.load("mae_ast_frame_mini", model_config=None, refresh=False).name == "mae_ast_frame_mini"
    config = tmp_path / "c.yaml"
    config.write_text("pooling: mean\n")
    assert upstream.load("ssast_patch_mini", model_config=str(config), refresh=True).cfg.pooling == "mean"
    config.write_text("- a list\n")
    with pytest.raises(ValueError, match="must hold a mapping of overrides"):
        upstream.load("ssast_patch_mini", model_config=str(config))
    with pytest.raises(ValueError, match="is not a YAML file"):
        upstream.load("ssast_patch_mini", model_config=str(tmp_path / "missing.yaml"))


# ------------------------------------------------------------------------------------------ s3prl habits
def test_s3prl_override_form():
    assert s3prl_overrides(["config.optimizer.lr=1e-4,,config.runner.total_steps=10",
                            "runner.log_step=5", "a=b,,"]) == [
        "optimizer.lr=1e-4", "runner.total_steps=10", "runner.log_step=5", "a=b"]


def _run_args(tmp_path, root, name, *extra):
    return ["-u", "ssast_patch_mini", "-d", "folder", "--data-root", str(root), "--expdir",
            str(tmp_path / "exp"),
            "--results", str(tmp_path / "r.jsonl"), "-n", name, "--device", "cpu", "--no-cache", *extra]


def test_s3prl_habits_train_log_and_evaluate_a_checkpoint_file(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = BUILDERS["folder"](tmp_path / "data")["root"]
    run = tmp_path / "exp" / "habits"
    assert run_downstream.main(_run_args(tmp_path, root, "habits", "-o", "config.runner.total_steps=4,,"
                                         "config.runner.eval_step=2,,config.runner.log_step=1,,"
                                         "config.runner.batch_size=4")) == 0
    out = capsys.readouterr().out
    assert [json.loads(x)["step"] for x in (run / "evals.jsonl").read_text().splitlines()] == [2, 4]
    logged = [line for line in out.splitlines() if ": train loss" in line and ", lr " in line]
    assert [line.split(":")[0] for line in logged] == ["step 1", "step 2", "step 3", "step 4"]  # log_step=1
    assert all(", grad norm " in line for line in logged)
    events = EventAccumulator(str(run))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/grad_norm", "dev/accuracy"} <= set(tags)
    assert [e.step for e in events.Scalars("train/lr")] == [1, 2, 3, 4]
    assert events.Scalars("train/lr")[0].value == pytest.approx(1e-4)
    assert all(e.value > 0 for e in events.Scalars("train/grad_norm"))
    # -e names the checkpoint itself (s3prl): its folder is the run
    results_file = str(tmp_path / "r2.jsonl")
    assert run_downstream.main(["-m", "evaluate", "-e", str(run / "last.ckpt"), "--results",
                                results_file]) == 0
    assert "(step 4, last.ckpt)" in capsys.readouterr().out
    assert run_downstream.main(["-m", "evaluate", "-e", str(run / "dev-best.ckpt"), "--results",
                                results_file]) == 0
    assert run_downstream.main(["-m", "evaluate", "-e", str(run / "config.yaml"), "--results",
                                results_file]) == 2
    assert "give a run folder or one of its checkpoints (.ckpt), not a .yaml file" in capsys.readouterr().err
    assert run_downstream.main(["-m", "evaluate", "-e", str(run / "nope.ckpt"), "--results",
                                results_file]) == 2
    assert "has no nope.ckpt" in capsys.readouterr().err


def test_progress_bars_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert progress_mod.progress(range(3)).disable
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress_mod.progress(range(3), desc="x")
    assert not bar.disable and list(bar) == [0, 1, 2]
    assert progress_mod.progress(range(3), enabled=False).disable  # ranks other than 0
    live = progress_mod.progress(total=3)  # lines go above a live bar, not through it
    assert progress_mod.printer(live) == live.write
    assert progress_mod.printer(live, log=list.append) == list.append
    live.close()
    assert progress_mod.printer(live) is print
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_mod.progress(range(3)).disable
