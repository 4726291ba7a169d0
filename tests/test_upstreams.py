"""Every test-size upstream under the contract: shapes, gradients, batch consistency, edge lengths."""
from __future__ import annotations

import pytest
import torch

import upstream
from upstream.frontend import AudioError

MINI = [n for n in upstream.list_upstreams() if n.endswith("_mini")]
# MAE-AST's official padding counts a partly padded patch as valid, so a padded batch differs from one
# clip alone in the last patch (s3prl does the same). partial_patch_valid=False makes it batch-exact.
BATCH_EXACT = {"mae_ast_patch_mini": {"partial_patch_valid": False},
               "mae_ast_frame_mini": {"partial_patch_valid": False}}


def _waves(sr: int, secs: list[float], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(int(sr * s), generator=g) for s in secs]


def test_registry_lists_the_paper_models():
    names = set(upstream.list_upstreams())
    for n in ["ssast_patch_100", "ssast_patch_250", "ssast_patch_400", "ssast_frame_100", "ssast_frame_250",
              "ssast_frame_400", "mae_ast_patch", "mae_ast_frame", "asit_base"]:
        assert n in names
    assert len(MINI) == 5


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        upstream.register_upstream("ssast_patch_400")(lambda **kw: None)


def test_unknown_name_and_override_are_named():
    with pytest.raises(ValueError, match="unknown upstream 'ssast_patch_999'"):
        upstream.load("ssast_patch_999")
    with pytest.raises(ValueError, match=r"does not take override\(s\) \['fstrid'\]"):
        upstream.load("ssast_patch_mini", fstrid=10)


def test_missing_official_checkpoint_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTBENCH_CHECKPOINTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="SSAST-Base-Patch-400.pth"):
        upstream.load("ssast_patch_400")
    with pytest.raises(FileNotFoundError, match="no released checkpoint"):
        upstream.load("asit_base")
    assert upstream.load("ssast_patch_400", random_init=True, model_size="mini").encoder.cfg.embed_dim == 64


@pytest.mark.parametrize("name", MINI)
def test_forward_contract_and_backward(name):
    torch.manual_seed(0)
    model = upstream.load(name).train()
    sr = model.sample_rate
    waves = _waves(sr, [1.3, 0.7])
    out = model(waves)
    hs = out["hidden_states"]
    assert len(hs) == model.num_layers
    B, T, H = hs[0].shape
    assert B == 2 and H == model.hidden_size and all(h.shape == (B, T, H) for h in hs)
    assert out["last_hidden_state"].shape == (B, T, H) and out["clip"].shape == (B, model.clip_size)
    ds = model.get_downsample_rates("hidden_states")
    # s3prl convention ceil(samples / rate); ASiT counts token rows holding audio frames, at most one fewer
    expect = min(T, -(-len(waves[0]) // ds))
    assert expect - (name == "asit_mini") <= out["lengths"].tolist()[0] <= expect
    assert out["lengths"][1] < out["lengths"][0] <= T
    for h in hs + [out["clip"]]:
        assert torch.isfinite(h).all()
    loss = sum(h.pow(2).mean() for h in hs) + out["clip"].pow(2).mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not no_grad, f"parameters without gradient: {no_grad}"


@pytest.mark.parametrize("name", MINI)
def test_padded_batch_equals_one_clip_at_a_time(name):
    torch.manual_seed(0)
    model = upstream.load(name, **BATCH_EXACT.get(name, {})).eval()
    waves = _waves(model.sample_rate, [2.3, 0.9, 1.6], seed=1)
    with torch.no_grad():
        batch = model(waves)
        for i, w in enumerate(waves):
            one = model([w])
            n = int(one["lengths"][0])
            assert int(batch["lengths"][i]) == n
            for layer in (0, -1):
                torch.testing.assert_close(batch["hidden_states"][layer][i, :n],
                                           one["hidden_states"][layer][0, :n], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(batch["clip"][i], one["clip"][0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", MINI)
def test_shortest_and_long_inputs(name):
    model = upstream.load(name).eval()
    sr = model.sample_rate
    enc = model.encoder.cfg
    # shortest clip that yields one patch: tshape frames of 10 ms plus the 25 ms window
    shortest = int(sr * (0.025 + 0.010 * (enc.tshape - 1))) + 1
    with torch.no_grad():
        out = model([torch.randn(shortest) * 0.1])
        assert out["lengths"][0] >= 1 and torch.isfinite(out["clip"]).all()
        long = model(_waves(sr, [13.7]))  # several windows / a long sequence
        expect = min(long["hidden_states"][0].shape[1], -(-int(sr * 13.7) // model.get_downsample_rates()))
        assert expect - 1 <= long["lengths"][0] <= expect


def test_bad_waveforms_get_clear_errors():
    model = upstream.load("ssast_patch_mini")
    with pytest.raises(AudioError, match="waveform 1"):
        model([torch.zeros(16000), torch.full((16000,), float("nan"))])
    with pytest.raises((AudioError, ValueError), match="waveform 0"):
        model([torch.zeros(2, 16000)])
    with pytest.raises(ValueError, match="empty batch"):
        model([])


@pytest.mark.parametrize("partial_valid", [True, False])
def test_clip_shorter_than_one_patch_alone_equals_it_in_a_batch(partial_valid):
    """MAE-AST patch: a 0.05 s clip (3 frames < a 16-frame patch) alone gives what it gives beside a longer
    clip."""
    mae = upstream.load("mae_ast_patch_mini", partial_patch_valid=partial_valid).eval()
    g = torch.Generator().manual_seed(0)
    short, longer = torch.randn(800, generator=g) * 0.1, torch.randn(16000, generator=g) * 0.1
    with torch.no_grad():
        alone, mixed = mae([short]), mae([short, longer])
    assert alone["lengths"].tolist() == [1] and mixed["lengths"][0] == 1
    assert torch.isfinite(alone["clip"]).all()
    if partial_valid:  # the s3prl convention: the partial patch is valid in both cases
        torch.testing.assert_close(alone["hidden_states"][-1][0, :1], mixed["hidden_states"][-1][0, :1],
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["ssast_patch_mini", "mae_ast_frame_mini", "asit_mini"])
def test_bf16_autocast_is_close_to_fp32(name):
    model = upstream.load(name).eval()
    waves = _waves(model.sample_rate, [1.0, 0.6])
    with torch.no_grad():
        ref = model(waves)["clip"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(waves)["clip"].float()
    assert torch.isfinite(low).all()
    assert (low - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


@pytest.mark.parametrize("name", MINI)
def test_saved_checkpoint_round_trips(name, tmp_path):
    torch.manual_seed(3)
    model = upstream.load(name).eval()
    path = tmp_path / f"{name}.pt"
    model.save(path)
    again = upstream.load(name, ckpt=path).eval()
    waves = _waves(model.sample_rate, [1.1])
    with torch.no_grad():
        torch.testing.assert_close(again(waves)["hidden_states"][-1], model(waves)["hidden_states"][-1])
    assert len(again.checkpoint_sha256) == 64


def test_ssast_custom_strides_adapt_the_position_table(tmp_path):
    model = upstream.load("ssast_patch_mini").eval()  # s3prl geometry: 1 s windows, stride 10 -> 12 x 9
    path = tmp_path / "m.pt"
    model.save(path)
    other = upstream.load("ssast_patch_mini", ckpt=path, target_length=200)
    assert other.encoder.cfg.grid == (12, 19) and other.get_downsample_rates() == 1600
    assert other.encoder.pos_embed.shape[1] == 2 + 12 * 19
    # fewer frequency rows than stored hits the original's t_dim slice: refused with the reason
    with pytest.raises(ValueError, match="cannot map a 12x9 grid to 8x12"):
        upstream.load("ssast_patch_mini", ckpt=path, fstride=16, tstride=16, target_length=200)
