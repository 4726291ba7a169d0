"""Official checkpoint formats against the golden fixtures made with the official code.

Tolerances are those of ``fixtures/official/README.md`` (fp32, CPU): positional tables 1e-6, token
outputs 1e-4, pooled features 1e-5, logits 1e-4, masks and shapes exact.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import fixture_path

import upstream
from upstream.checkpoint import CheckpointError, read_checkpoint
from upstream.tokenizer import patchify, token_padding_mask

TOK, POOL, POS = 1e-4, 1e-5, 1e-6


def _ref(name: str) -> dict:
    return torch.load(fixture_path("official", name), weights_only=False)


def assert_close(a: torch.Tensor, b: torch.Tensor, atol: float, what: str) -> None:
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    diff = (a.float() - b.float()).abs().max().item()
    assert diff <= atol, f"{what}: max abs diff {diff:.3g} > {atol}"


# ---------------------------------------------------------------------------------------------- SSAST
@pytest.fixture(scope="module")
def ssast_ref():
    return _ref("ssast_patch_reference.pt")


@pytest.fixture(scope="module")
def ssast_ckpt():
    return fixture_path("official", "ssast_tiny_patch_pretrain.pth")


def test_ssast_checkpoint_is_read_with_inferred_geometry(ssast_ckpt, ssast_ref):
    raw = read_checkpoint(ssast_ckpt)
    assert raw.family == "ssast" and raw.sha256 == ssast_ref["checkpoint_sha256"]
    e = raw.encoder
    assert (e.embed_dim, e.depth, e.num_heads, e.fshape, e.tshape) == (192, 12, 3, 16, 16)
    assert (raw.extra["p_input_fdim"], raw.extra["p_input_tdim"], e.num_prefix_tokens) == (128, 1024, 2)


@pytest.mark.parametrize("case", ["ft_main", "ft_nooverlap"])
def test_ssast_finetune_path_matches_official(ssast_ckpt, ssast_ref, case):
    ref = ssast_ref[case]
    model = upstream.load("ssast_patch_tiny", ckpt=ssast_ckpt, fstride=ref["fstride"], tstride=ref["tstride"],
                          target_length=ref["input_tdim"]).eval()
    enc = model.encoder
    assert enc.cfg.grid == (ref["f_dim"], ref["t_dim"])
    assert_close(enc.pos_embed, ref["pos_embed_adapted"], POS, "adapted pos_embed")
    # our conv runs over (B, 1, T, F): its weight is the official (F, T) kernel transposed
    assert_close(enc.patch_embed.proj.weight.transpose(2, 3), ref["patch_proj_weight"], 0, "patch weight")
    assert enc.patch_embed.proj.stride[::-1] == tuple(ref["patch_proj_stride"])
    with torch.no_grad():
        x = ref["input"]
        if "embed_out" in ref:
            assert_close(enc.add_position(enc.tokenize(x)), ref["embed_out"], TOK, "embed_out")
        out = model.forward_fbank(x)
    if "block_out" in ref:
        for i, (ours, theirs) in enumerate(zip(out["block_out"], ref["block_out"], strict=True)):
            assert_close(ours, theirs, TOK, f"block {i}")
    assert_close(out["norm_out"], ref["norm_out"], TOK, "norm_out")
    pooled = out["tokens"].mean(1)  # ft_avgtok: mean of patch tokens, both cls tokens excluded
    assert_close(pooled, ref["pooled_avgtok"], POOL, "pooled_avgtok")
    cls = out["norm_out"][:, :2].mean(1)  # ft_cls: (cls + dist) / 2
    assert_close(cls, ref["pooled_cls"], POOL, "pooled_cls")
    head = ref["mlp_head_state"]  # LayerNorm(D, eps 1e-5) -> Linear, the official mlp_head
    for feat, key in ((pooled, "logits_avgtok"), (cls, "logits_cls")):
        h = F.layer_norm(feat, (feat.shape[-1],), head["0.weight"], head["0.bias"], eps=1e-5)
        assert_close(F.linear(h, head["1.weight"], head["1.bias"]), ref[key], TOK, key)


def test_ssast_upstream_matches_s3prl_hidden_states(ssast_ckpt, ssast_ref):
    s3 = ssast_ref["s3prl"]
    frames = round(s3["window_secs"] * 100)  # s3prl's window_secs in fbank frames, 100 per second
    model = upstream.load("ssast_patch_tiny", ckpt=ssast_ckpt, target_length=frames).eval()
    with torch.no_grad():
        out = model(list(ssast_ref["wave_float32"]))
    assert len(out["hidden_states"]) == s3["num_hidden_states"] == 12
    assert [tuple(h.shape) for h in out["hidden_states"]] == [tuple(s) for s in s3["hidden_state_shapes"]]
    for layer, theirs in zip(s3["layers_saved"], s3["hidden_states"], strict=True):
        assert_close(out["hidden_states"][layer], theirs, TOK, f"s3prl hidden_states[{layer}]")
    assert model.get_downsample_rates("hidden_states") == 1600
    n = [len(w) for w in ssast_ref["wave_float32"]]
    assert out["lengths"].tolist() == [len(range(0, k, 1600)) for k in n]


# ---------------------------------------------------------------------------------------------- MAE-AST
@pytest.fixture(scope="module")
def mae_ref():
    return _ref("maeast_patch_reference.pt")


@pytest.fixture(scope="module")
def mae_model():
    return upstream.load("mae_ast_patch", ckpt=fixture_path("official", "maeast_tiny_patch.pt")).eval()


def test_mae_ast_config_read_from_file(mae_model, mae_ref):
    e = mae_model.encoder.cfg
    m = mae_ref["cfg_model"]
    assert (e.embed_dim, e.depth, e.num_heads) == (m["encoder_embed_dim"], m["encoder_layers"],
                                                   m["encoder_attention_heads"])
    assert e.mlp_ratio * e.embed_dim == m["encoder_ffn_embed_dim"] and not e.norm_first
    assert e.max_tokens == m["max_token_length"] == 1024
    bn = mae_model.encoder.input_bn
    assert torch.allclose(bn.running_mean, torch.tensor([-6.2]))
    assert torch.allclose(bn.running_var, torch.tensor([18.5]))


def test_mae_ast_forward_matches_official_stage_by_stage(mae_model, mae_ref):
    enc = mae_model.encoder
    fbank, frame_pad = mae_ref["fbank_padded"], mae_ref["frame_padding_mask"]
    num_frames = (~frame_pad).sum(1)
    with torch.no_grad():
        x = enc.normalize_input(fbank)
        assert_close(patchify(x, 16, 16, "time_major"), mae_ref["unfold_patches"], TOK, "unfold_patches")
        tokens = enc.tokenize(fbank)
        assert_close(tokens, mae_ref["tokens_after_proj"], TOK, "tokens_after_proj")
        tok_pad = token_padding_mask(num_frames, 8, 8, 16, 16, "time_major", partial_patch_valid=True)
        assert torch.equal(tok_pad, mae_ref["token_padding_mask"])
        assert tok_pad[1].sum() == 16  # the second clip's last 16 tokens are padding
        with_pos = enc.add_position(tokens, tok_pad)
        assert_close(with_pos, mae_ref["features_with_pos"], TOK, "features_with_pos")
        hidden, last = enc.forward_blocks(with_pos, tok_pad)
    for i, (ours, theirs) in enumerate(zip(hidden, mae_ref["hidden_states"], strict=True)):
        assert_close(ours, theirs, TOK, f"hidden_states[{i}]")
    assert_close(last, mae_ref["last_hidden_state"], TOK, "last_hidden_state")


def test_mae_ast_upstream_matches_s3prl(mae_model, mae_ref):
    with torch.no_grad():
        out = mae_model(list(mae_ref["wave_float32"]))
    assert len(out["hidden_states"]) == len(mae_ref["s3prl_hidden_states"])
    for i, (ours, theirs) in enumerate(zip(out["hidden_states"], mae_ref["s3prl_hidden_states"],
                                           strict=True)):
        assert_close(ours, theirs, TOK, f"s3prl hidden_states[{i}]")
    assert mae_model.get_downsample_rates() == mae_ref["s3prl_downsample_rate"] == 2560
    assert_close(out["last_hidden_state"], out["hidden_states"][-1], 0, "post-norm: last == last layer")


# ---------------------------------------------------------------------------------------------- ASiT
@pytest.fixture(scope="module")
def asit_ref():
    return _ref("asit_a_reference.pt")


@pytest.mark.parametrize("backbone", ["teacher", "student"])
def test_asit_backbones_match_official(asit_ref, backbone):
    ckpt = fixture_path("official", "asit_tiny_checkpoint.pth")
    # the fixture's arch (vit_tiny_fixture) is not an official factory: its head count must be given
    model = upstream.load("asit_base", ckpt=ckpt, backbone=backbone, num_heads=4).eval()
    e = model.encoder.cfg
    assert (e.embed_dim, e.depth, e.num_heads, e.input_tdim) == (64, 3, 4, 592)
    x = asit_ref["input"].squeeze(1)  # (B, 1, T, F) -> (B, T, F): time is the image height
    with torch.no_grad():
        out = model.forward_fbank(x)
    ref = asit_ref[backbone]
    if "block_out" in ref:
        for i, (ours, theirs) in enumerate(zip(out["block_out"], ref["block_out"], strict=True)):
            assert_close(ours, theirs, TOK, f"{backbone} block {i}")
    assert_close(out["norm_out"], ref["norm_out"], TOK, f"{backbone} norm_out")
    assert_close(out["norm_out"][:, 0], ref["cls"], POOL, f"{backbone} cls")
    assert_close(out["tokens"].mean(1), ref["mean_patch"], POOL, f"{backbone} mean_patch")


def test_asit_upstream_first_window_is_the_official_crop(asit_ref):
    """A clip of at most 592 frames is exactly the official input; a longer one's first window is its crop."""
    ckpt = fixture_path("official", "asit_tiny_checkpoint.pth")
    model = upstream.load("asit_base", ckpt=ckpt, num_heads=4).eval()
    waves = [w.float() / 32768 for w in asit_ref["wave_int16"]]
    with torch.no_grad():
        out = model(waves)
    ref = asit_ref["teacher"]["norm_out"][:, 1:]  # (B, 37*8, D), time-major
    rows = ref.reshape(2, 37, 8 * ref.shape[-1])
    n0 = int(out["lengths"][0])
    assert n0 == -(-(1 + (len(waves[0]) - 800) // 320) // 16)  # ceil(frames / 16)
    assert_close(out["last_hidden_state"][0, :n0], rows[0, :n0], TOK, "clip 0 (padded)")
    assert_close(out["last_hidden_state"][1, :37], rows[1], TOK, "clip 1 first window (cut)")
    assert model.sample_rate == 32000 and model.get_downsample_rates() == 16 * 320


# ---------------------------------------------------------------------------------------------- refusals
def test_foreign_and_mismatched_checkpoints_are_refused(tmp_path):
    ssast = fixture_path("official", "ssast_tiny_patch_pretrain.pth")
    mae = fixture_path("official", "maeast_tiny_patch.pt")
    with pytest.raises(CheckpointError, match="ssast checkpoint, but 'mae_ast_patch'"):
        upstream.load("mae_ast_patch", ckpt=ssast)
    with pytest.raises(CheckpointError, match="mae_ast checkpoint"):
        upstream.load("ssast_patch_400", ckpt=mae)
    with pytest.raises(CheckpointError,
                       match=r"16x16 \(fshape x tshape\) patches, but 'ssast_frame_400' expects 128x2"):
        upstream.load("ssast_frame_400", ckpt=ssast)
    with pytest.raises(CheckpointError, match="time x chan"):
        upstream.load("mae_ast_frame", ckpt=mae)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pt is not a recognised format"):
        upstream.load("ssast_patch_400", ckpt=foreign)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pth could not be read"):
        upstream.load("ssast_patch_400", ckpt=garbage)
    sd = torch.load(ssast, weights_only=True)
    del sd["module.v.blocks.3.attn.qkv.weight"]
    broken = tmp_path / "broken.pth"
    torch.save(sd, broken)
    with pytest.raises(CheckpointError, match="broken.pth"):
        upstream.load("ssast_patch_tiny", ckpt=broken)
    with pytest.raises(CheckpointError, match="does not exist"):
        upstream.load("ssast_patch_400", ckpt=tmp_path / "missing.pth")
