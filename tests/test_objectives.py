"""Pretraining objectives: hand-computed losses, ablation knobs, and learning on a fixed batch."""
from __future__ import annotations

import math

import pytest
import torch

from upstream import asit, mae_ast, ssast
from upstream.objective import info_nce


def _structured_fbank(B: int, T: int, seed: int = 0) -> torch.Tensor:
    """Harmonic stripes with random pitch per clip: structure a masked model can learn."""
    g = torch.Generator().manual_seed(seed)
    f = torch.arange(128).float()
    t = torch.arange(T).float()[:, None]
    pitch = 8 + 8 * torch.rand(B, generator=g)
    x = torch.stack([torch.cos(2 * math.pi * f / p) * torch.cos(2 * math.pi * t / 40) for p in pitch])
    return x  # (B, T, 128)


def test_info_nce_matches_hand_computation():
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    pred = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    # logits = target @ pred^T = [[2, 0], [0, 1]]; loss = -mean of the log-softmax diagonal (rows)
    expected = ((math.log(math.e**2 + 1) - 2) + (math.log(1 + math.e) - 1)) / 2
    loss, acc = info_nce(pred, target)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert acc.item() == 1.0
    loss, acc = info_nce(pred.flip(1), target)  # each prediction now matches the other patch
    assert acc.item() == 0.0


@pytest.mark.parametrize("objective,keys", [("joint", {"nce", "masked_acc", "mse"}),
                                            ("discriminative", {"nce", "masked_acc"}), ("generative", {"mse"})])
def test_ssast_objective_terms(objective, keys):
    o = ssast.build_objective(dict(family="ssast", token="patch", size="mini", mask_patch=30, input_tdim=128,
                                   objective=objective))
    loss, logs = o(torch.randn(2, 128, 128), None, torch.Generator().manual_seed(0))
    assert set(logs) == keys and torch.isfinite(loss)


@pytest.mark.parametrize("mask_patch", [10, 40, 63])
def test_ssast_masks_exactly_mask_patch_tokens(mask_patch):
    o = ssast.build_objective(dict(family="ssast", token="patch", size="mini", mask_patch=mask_patch, input_tdim=128))
    x = torch.randn(3, 128, 128)
    tokens = o.encoder.tokenize(x)
    mask = o.draw_mask(3, torch.Generator().manual_seed(1), x.device)
    assert (mask.sum(1) == mask_patch).all()
    hidden, tgt = o._masked_pass(tokens, torch.zeros(3, tokens.shape[1], 256), mask)
    assert hidden.shape == (3, mask_patch, 64) and tgt.shape == (3, mask_patch, 256)


def test_ssast_rejects_bad_knobs():
    with pytest.raises(ValueError, match="mask_patch=999"):
        ssast.build_objective(dict(family="ssast", size="mini", mask_patch=999, input_tdim=128))
    with pytest.raises(ValueError, match="unknown ssast objective key 'mask_patches'.*mask_patch"):
        ssast.build_objective(dict(family="ssast", size="mini", mask_patches=10))


def test_ssast_frame_tokens_shape():
    o = ssast.build_objective(dict(family="ssast", token="frame", size="mini", mask_patch=20, input_tdim=128))
    assert o.encoder.cfg.grid == (1, 64) and o.encoder.patch_embed.proj.weight.shape[2:] == (2, 128)


def test_mae_ast_encoder_sees_only_visible_tokens():
    o = mae_ast.build_objective(dict(family="mae_ast", token="patch", size="mini", mask_ratio=0.75))
    seen = []
    o.encoder.blocks[0].register_forward_hook(lambda m, i, out: seen.append(i[0].shape[1]))
    dec = []
    o.decoder.blocks[0].register_forward_hook(lambda m, i, out: dec.append(i[0].shape[1]))
    loss, logs = o(torch.randn(2, 128, 128), None, torch.Generator().manual_seed(0))
    assert seen == [64 - 48] and dec == [64]  # 8x8 patches, 75 % masked: encoder 16, decoder all 64
    assert set(logs) == {"recon", "nce", "masked_acc"}
    gen = mae_ast.build_objective(dict(family="mae_ast", token="frame", size="mini", mask_type="random",
                                       objective="generative"))
    assert set(gen(torch.randn(2, 128, 128), None)[1]) == {"recon"}
    assert gen.final_proj_classification is None


@pytest.mark.parametrize("flags,keys", [({}, {"cls", "data", "recon"}), ({"use_cls": False}, {"data", "recon"}),
                                        ({"use_data": False, "use_recon": False}, {"cls"})])
def test_asit_components_switch_losses(flags, keys):
    o = asit.build_objective(dict(family="asit", size="mini", num_frames=96, out_dim_cls=32, out_dim_data=16, **flags))
    loss, logs = o(torch.randn(2, 2, 96, 128), None, torch.Generator().manual_seed(0))
    assert set(logs) - {"teacher_temp"} == keys and torch.isfinite(loss)


def _asit_student_input(o, x: torch.Tensor, seed: int = 0):
    """Run the objective once, returning (loss, logs, what the student encoder was given (BV, T, F))."""
    seen = []
    forward_features = o.encoder.forward_features

    def recording(tokens, *args, **kwargs):
        seen.append(tokens.detach().clone())
        return forward_features(tokens, *args, **kwargs)

    o.encoder.forward_features = recording
    loss, logs = o(x, None, torch.Generator().manual_seed(seed))
    return loss, logs, seen[0]


@pytest.mark.parametrize("flags,keys", [({"use_data": False, "use_cls": False}, {"recon"}),
                                        ({"use_data": False, "use_recon": False}, {"cls"}),
                                        ({}, {"cls", "data", "recon"})])
def test_asit_without_corruption_student_sees_the_clean_views(flags, keys):
    o = asit.build_objective(dict(family="asit", size="mini", num_frames=96, out_dim_cls=32, out_dim_data=16,
                                  corrupt=False, drop_path=0.0, **flags))  # recon is recomputed below
    x = torch.randn(2, 2, 96, 128)
    loss, logs, student_in = _asit_student_input(o, x)
    assert torch.equal(student_in, x.flatten(0, 1))
    assert set(logs) - {"teacher_temp"} == keys and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in o.encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if "recon" in keys:  # nothing corrupted: L1 over every bin (the official masked mean would be NaN)
        with torch.no_grad():
            s = o.encoder.forward_features(x.flatten(0, 1))
            rec = o.rec_head(s[:, 1:], 6, 8)
        torch.testing.assert_close(logs["recon"], (rec - x.flatten(0, 1)).abs().mean(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="aligned_blocks=true needs corrupt=true"):
        asit.ASiTPretrainConfig(size="mini", corrupt=False, aligned_blocks=True)


@pytest.mark.parametrize("aligned", [False, True])
def test_asit_aligned_blocks_corrupt_whole_patches(aligned):
    o = asit.build_objective(dict(family="asit", size="mini", num_frames=96, out_dim_cls=32, out_dim_data=16,
                                  aligned_blocks=aligned))
    x = torch.randn(4, 2, 96, 128) + 5.0  # no bin is 0, so a zero-filled bin is a changed bin
    loss, _, student_in = _asit_student_input(o, x)
    assert torch.isfinite(loss)
    changed = (student_in != x.flatten(0, 1)).view(8, 6, 16, 8, 16).float().mean((2, 4))  # (BV, n_t, n_f)
    assert (changed > 0).any()
    whole = ((changed == 0) | (changed == 1)).all()
    assert bool(whole) == aligned  # aligned: each 16 x 16 patch all changed or untouched; free blocks cut patches


def test_asit_teacher_is_an_ema_of_the_student_and_gets_no_gradient():
    o = asit.build_objective(dict(family="asit", size="mini", num_frames=96, out_dim_cls=32, out_dim_data=16,
                                  momentum_teacher=0.9))
    loss, _ = o(torch.randn(2, 2, 96, 128), None, torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is None for p in o.teacher.parameters())
    with torch.no_grad():
        for p in o.encoder.parameters():
            p.add_(1.0)
    before = o.teacher.norm.bias.clone()
    o.after_step(0, 10)  # cosine schedule at step 0: m = 0.9
    assert torch.allclose(o.teacher.norm.bias, 0.9 * before + 0.1 * o.encoder.norm.bias, atol=1e-6)
    up = o.to_upstream()
    assert torch.equal(up.encoder.norm.bias, o.teacher.norm.bias)


def test_asit_centres_update_once_per_step_from_all_micro_batches():
    """DINO ``update_center``: the mean teacher output of the whole step, one EMA per optimizer step."""
    o = asit.build_objective(dict(family="asit", size="mini", num_frames=96, out_dim_cls=32, out_dim_data=16,
                                  center_momentum=0.5))
    x = torch.randn(4, 2, 96, 128)
    with torch.no_grad():
        o(x[:2], None, torch.Generator().manual_seed(0))
        assert o.center_cls.abs().sum() == 0  # forward alone never moves the centres
        o(x[2:], None, torch.Generator().manual_seed(1))
        t = o.teacher.forward_features(x.flatten(0, 1))  # (B*V, 1+N, D)
        t_cls, t_data = o.teacher_head(t[:, 0], t[:, 1:])
    o.after_step(0, 10)
    torch.testing.assert_close(o.center_cls, 0.5 * t_cls.mean(0, keepdim=True), rtol=0, atol=1e-6)
    torch.testing.assert_close(o.center_data, 0.5 * t_data.mean((0, 1), keepdim=True), rtol=0, atol=1e-6)
    before = o.center_cls.clone()
    o.after_step(1, 10)  # no forward since the last step: the centres stay
    assert torch.equal(o.center_cls, before)
    o.eval()
    with torch.no_grad():
        o(x, None, torch.Generator().manual_seed(0))  # evaluation forwards do not feed the centres
    assert o._center_sums is None


def test_asit_reconstruction_head_equals_the_official_transposed_conv():
    head = asit.RECHead(32, 16, 8)
    x = torch.randn(2, 6 * 8, 32)  # (B, n_t * n_f, D), time-major
    ref = head.conv_trans(head.mlp(x).reshape(2, 6, 8, -1).permute(0, 3, 1, 2)).squeeze(1)  # (B, 96, 128)
    torch.testing.assert_close(head(x, 6, 8), ref, rtol=1e-5, atol=1e-6)


def _train(o, x, steps=30, lr=2e-3):
    opt = torch.optim.AdamW(o.param_groups(0.0), lr=lr)
    g = torch.Generator().manual_seed(0)
    hist = []
    for step in range(steps):
        loss, logs = o(x, None, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        o.after_step(step, steps)
        hist.append((loss.item(), {k: float(v) for k, v in logs.items()}))
    return hist


def test_objectives_learn_on_a_fixed_batch():
    torch.manual_seed(0)
    x = _structured_fbank(4, 128)
    h = _train(ssast.build_objective(dict(family="ssast", size="mini", mask_patch=40, input_tdim=128)), x)
    assert sum(v for v, _ in h[-5:]) < 0.9 * sum(v for v, _ in h[:5])
    h = _train(mae_ast.build_objective(dict(family="mae_ast", size="mini")), x * 3 - 6)
    assert sum(v for v, _ in h[-5:]) < 0.9 * sum(v for v, _ in h[:5])
    # DINO terms rise towards their entropy while the centre settles; the reconstruction alone must fall
    o = asit.build_objective(dict(family="asit", size="mini", num_frames=96, out_dim_cls=32, out_dim_data=16,
                                  use_cls=False, use_data=False))
    h = _train(o, torch.stack([x[:, :96], x[:, 16:112]], 1), steps=40, lr=5e-3)
    assert sum(lg["recon"] for _, lg in h[-5:]) < 0.93 * sum(lg["recon"] for _, lg in h[:5])
