"""Pretraining objectives: hand-computed losses, ablation knobs, and learning on a fixed batch."""
from __future__ import annotations

import math

import pytest
import torch

from upstream import asit
from upstream.corruption import asit_corrupt
from upstream.objective import info_nce
from upstream.registry import get_family


def build_objective(cfg: dict):
    """The objective of ``cfg['family']``, as pretraining builds it (``FamilySpec.build_objective``)."""
    return get_family(cfg["family"]).build_objective(cfg)


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
    # SSAST: logits = target @ pred^T = [[2, 0], [0, 1]]; loss = -mean of the log-softmax diagonal (rows)
    expected = ((math.log(math.e**2 + 1) - 2) + (math.log(1 + math.e) - 1)) / 2
    loss, acc = info_nce(pred, target, over="predictions")
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert acc.item() == 1.0
    # each prediction now matches the other patch
    loss, acc = info_nce(pred.flip(1), target, over="predictions")
    assert acc.item() == 0.0
    with pytest.raises(ValueError, match="over must be"):
        info_nce(pred, target, over="rows")


def test_info_nce_directions_differ_as_the_two_papers_write_them():
    """SSAST normalises each target's row over the predictions, MAE-AST each prediction's row over the
    targets: the same scores, transposed."""
    target = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    pred = torch.tensor([[[3.0, 0.0], [0.0, 1.0]]])
    s = target[0] @ pred[0].T  # s[r, c] = target_r . pred_c = [[3, 0], [3, 1]]
    ssast_loss = -(torch.log_softmax(s, 1).diagonal()).mean()  # rows = targets
    mae_loss = -(torch.log_softmax(s.T, 1).diagonal()).mean()  # rows = predictions
    assert info_nce(pred, target, over="predictions")[0].item() == pytest.approx(ssast_loss.item(), abs=1e-6)
    assert info_nce(pred, target, over="targets")[0].item() == pytest.approx(mae_loss.item(), abs=1e-6)
    assert abs(ssast_loss - mae_loss) > 0.5


def test_ssast_accuracy_takes_the_argmax_of_the_row_softmaxed_matrix():
    """``argmax(softmax(total), dim=0)`` in ``mpc``: each row is normalised first, then columns compared."""
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    pred = torch.tensor([[[1.0, 0.0], [3.0, 0.5]]])  # logits = target @ pred^T = [[1, 3], [0, 0.5]]
    # raw columns: column 0 -> row 0 (right), column 1 -> row 0 (wrong): 0.5. Row-softmaxed: [[0.12, 0.88],
    # [0.38, 0.62]]: column 0 -> row 1, column 1 -> row 0, both wrong: 0.
    _, acc = info_nce(pred, target, over="predictions")
    assert acc.item() == 0.0


@pytest.mark.parametrize("objective,keys", [("joint", {"nce", "masked_acc", "mse"}),
                                            ("discriminative", {"nce", "masked_acc"}),
                                            ("generative", {"mse"})])
def test_ssast_objective_terms(objective, keys):
    o = build_objective(dict(family="ssast", token="patch", size="mini", mask_patch=30, target_length=128,
                                   objective=objective))
    loss, logs = o(torch.randn(2, 128, 128), None, torch.Generator().manual_seed(0))
    assert set(logs) == keys and torch.isfinite(loss)


@pytest.mark.parametrize("mask_patch", [10, 40, 63])
def test_ssast_masks_exactly_mask_patch_tokens(mask_patch):
    o = build_objective(dict(family="ssast", token="patch", size="mini", mask_patch=mask_patch,
                             target_length=128))
    x = torch.randn(3, 128, 128)
    tokens = o.encoder.tokenize(x)
    mask = o.draw_mask(3, torch.Generator().manual_seed(1), x.device)
    assert (mask.sum(1) == mask_patch).all()
    hidden, tgt = o._masked_pass(tokens, torch.zeros(3, tokens.shape[1], 256), mask)
    assert hidden.shape == (3, mask_patch, 64) and tgt.shape == (3, mask_patch, 256)


def test_ssast_rejects_bad_knobs():
    with pytest.raises(ValueError, match="mask_patch=999"):
        build_objective(dict(family="ssast", size="mini", mask_patch=999, target_length=128))
    with pytest.raises(ValueError, match="unknown ssast objective key 'mask_patches'.*mask_patch"):
        build_objective(dict(family="ssast", size="mini", mask_patches=10))


def test_ssast_frame_tokens_shape():
    o = build_objective(dict(family="ssast", token="frame", size="mini", mask_patch=20, target_length=128))
    assert o.encoder.cfg.grid == (1, 64) and o.encoder.patch_embed.proj.weight.shape[2:] == (2, 128)


def test_mae_ast_encoder_sees_only_visible_tokens():
    o = build_objective(dict(family="mae_ast", token="patch", size="mini", mask_ratio=0.75))
    seen = []
    o.encoder.blocks[0].register_forward_hook(lambda m, i, out: seen.append(i[0].shape[1]))
    dec = []
    o.decoder.blocks[0].register_forward_hook(lambda m, i, out: dec.append(i[0].shape[1]))
    loss, logs = o(torch.randn(2, 128, 128), None, torch.Generator().manual_seed(0))
    assert seen == [64 - 48] and dec == [64]  # 8x8 patches, 75 % masked: encoder 16, decoder all 64
    assert set(logs) == {"recon", "nce", "masked_acc"}
    gen = build_objective(dict(family="mae_ast", token="frame", size="mini", mask_type="random",
                                       objective="generative"))
    assert set(gen(torch.randn(2, 128, 128), None)[1]) == {"recon"}
    assert gen.final_proj_classification is None


@pytest.mark.parametrize("flags,keys",
                         [({}, {"cls", "data", "recon"}), ({"use_cls": False}, {"data", "recon"}),
                                        ({"use_data": False, "use_recon": False}, {"cls"})])
def test_asit_components_switch_losses(flags, keys):
    o = build_objective(dict(family="asit", size="mini", target_length=96, out_dim_cls=32, out_dim_data=16,
                             **flags))
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
    o = build_objective(dict(family="asit", size="mini", target_length=96, out_dim_cls=32, out_dim_data=16,
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
    o = build_objective(dict(family="asit", size="mini", target_length=96, out_dim_cls=32, out_dim_data=16,
                                  aligned_blocks=aligned))
    x = torch.randn(4, 2, 96, 128) + 5.0  # no bin is 0, so a zero-filled bin is a changed bin
    loss, _, student_in = _asit_student_input(o, x)
    assert torch.isfinite(loss)
    changed = (student_in != x.flatten(0, 1)).view(8, 6, 16, 8, 16).float().mean((2, 4))  # (BV, n_t, n_f)
    assert (changed > 0).any()
    whole = ((changed == 0) | (changed == 1)).all()
    # aligned: each 16 x 16 patch all changed or untouched; free blocks cut patches
    assert bool(whole) == aligned


def test_asit_teacher_is_an_ema_of_the_student_and_gets_no_gradient():
    o = build_objective(dict(family="asit", size="mini", target_length=96, out_dim_cls=32, out_dim_data=16,
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
    o = build_objective(dict(family="asit", size="mini", target_length=96, out_dim_cls=32, out_dim_data=16,
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


def _train(o, x, steps=30, lr=2e-3, **given):
    opt = torch.optim.AdamW(o.param_groups(0.0), lr=lr)
    g = torch.Generator().manual_seed(0)
    hist = []
    for step in range(steps):
        loss, logs = o(x, None, g, **given)
        opt.zero_grad()
        loss.backward()
        opt.step()
        o.after_step(step, steps)
        hist.append((loss.item(), {k: float(v) for k, v in logs.items()}))
    return hist


@pytest.mark.slow
def test_objectives_learn_on_a_fixed_batch():
    torch.manual_seed(0)
    x = _structured_fbank(4, 128)
    h = _train(build_objective(dict(family="ssast", size="mini", mask_patch=40, target_length=128)), x)
    assert sum(v for v, _ in h[-5:]) < 0.9 * sum(v for v, _ in h[:5])
    h = _train(build_objective(dict(family="mae_ast", size="mini")), x * 3 - 6)
    assert sum(v for v, _ in h[-5:]) < 0.9 * sum(v for v, _ in h[:5])
    # DINO terms rise towards their entropy while the centre settles; the reconstruction alone must fall. The
    # official heads start small (trunc-normal 0.02), so a fresh corruption each step would hide the trend in
    # 40 steps: the views are corrupted once, through the objective's seam.
    o = build_objective(dict(family="asit", size="mini", target_length=96, out_dim_cls=32, out_dim_data=16,
                                  use_cls=False, use_data=False))
    views = torch.stack([x[:, :96], x[:, 16:112]], 1)  # (B, 2, T, F)
    corrupted, mask = asit_corrupt(views.flatten(0, 1), generator=torch.Generator().manual_seed(0))
    h = _train(o, views, steps=40, lr=5e-3, corruption=(corrupted.view_as(views), mask.view_as(views)))
    assert sum(lg["recon"] for _, lg in h[-5:]) < 0.85 * sum(lg["recon"] for _, lg in h[:5])


# --------------------------------------------------------------------------------------- given masks / views
def test_ssast_given_masks_are_the_masks_used():
    o = build_objective(dict(family="ssast", size="mini", mask_patch=20, target_length=128))
    x = torch.randn(2, 128, 128)
    g = torch.Generator().manual_seed(0)
    drawn = [o.draw_mask(2, g, x.device) for _ in range(2)]  # what forward draws from the same generator
    loss_given, _ = o(x, None, masks=drawn)
    assert loss_given.item() == pytest.approx(o(x, None, torch.Generator().manual_seed(0))[0].item(),
                                              abs=1e-6)
    # the official joint step: the first mask feeds mpc, the second mpg, in that order
    assert loss_given.item() != pytest.approx(o(x, None, masks=drawn[::-1])[0].item(), abs=1e-3)
    with pytest.raises(ValueError, match="takes 2 mask"):
        o(x, None, masks=drawn[:1])
    with pytest.raises(ValueError, match=r"bool \(2, 64\)"):
        o(x, None, masks=[m.float() for m in drawn])
    with pytest.raises(ValueError, match="exactly mask_patch=20"):
        o(x, None, masks=[drawn[0], torch.zeros_like(drawn[1])])


def test_mae_ast_given_mask_replaces_the_drawn_one():
    o = build_objective(dict(family="mae_ast", size="mini", encoder={"dropout": 0.0, "attn_dropout": 0.0,
                                                                              "dropout_input": 0.0,
                                                                     "layerdrop": 0.0}))
    x = torch.randn(2, 128, 128)
    mask = o.draw_mask(2, (8, 8), torch.Generator().manual_seed(3), x.device)
    a, _ = o(x, None, mask=mask)
    b, _ = o(x, None, torch.Generator().manual_seed(3))
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    with pytest.raises(ValueError, match=r"bool \(2, 64\) with 48 True per row"):
        o(x, None, mask=mask[:, :10])


def test_asit_given_corruption_is_what_the_student_sees():
    o = build_objective(dict(family="asit", size="mini", target_length=96, out_dim_cls=32, out_dim_data=16,
                                  drop_path=0.0))
    x = torch.randn(2, 2, 96, 128)
    mask = torch.zeros(2, 2, 96, 128, dtype=torch.bool)
    mask[:, :, :40] = True
    corrupted = x.masked_fill(mask, 0.0)
    seen = []
    forward_features = o.encoder.forward_features
    o.encoder.forward_features = lambda t, *a, **k: seen.append(t) or forward_features(t, *a, **k)
    _, logs = o(x, None, corruption=(corrupted, mask))
    assert torch.equal(seen[0], corrupted.flatten(0, 1))
    with torch.no_grad():  # L1 on exactly the given corrupted bins
        rec = o.rec_head(forward_features(corrupted.flatten(0, 1))[:, 1:], 6, 8)  # (BV, 96, 128)
    expected = (rec - x.flatten(0, 1)).abs()[mask.flatten(0, 1)].mean()
    torch.testing.assert_close(logs["recon"], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="ASiT corruption must be"):
        o(x, None, corruption=(corrupted, mask.float()))


# ------------------------------------------------------------------------------------------ official details
def test_asit_heads_follow_main_asit_for_every_backbone():
    """main_ASiT.py builds RECHead(hidden_dim=768, bottleneck_dim=128) and CLSHead(2048, 256) whatever the
    backbone, and RECHead ends its MLP with a GELU; sizes can be set (the fixtures use smaller heads)."""
    for size in ("small", "base"):
        h = asit.ASiTPretrainConfig(size=size).head_sizes()
        assert h == dict(head_hidden=2048, head_bottleneck=256, rec_hidden=768, rec_bottleneck=128)
    head = asit.RECHead(32, 96, 16)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear", "GELU"]
    o = build_objective(dict(family="asit", size="mini", target_length=96, out_dim_cls=32, out_dim_data=16,
                                  rec_hidden=96, head_bottleneck=8, encoder={"depth": 3}))
    assert o.rec_head.mlp[0].out_features == 96 and o.head.mlp[4].out_features == 8
    assert len(o.encoder.blocks) == len(o.teacher.blocks) == 3
    with pytest.raises(ValueError, match="unknown asit objective encoder key 'dpeth'.*'depth'"):
        build_objective(dict(family="asit", size="mini", encoder={"dpeth": 3}))


def test_asit_teacher_temperature_is_dinos_linspace():
    """np.linspace(0.04, 0.07, W)[s]: the fixture's epoch 12 of 30 gives 0.0524138, the last warm-up step
    0.07."""
    o = build_objective(dict(family="asit", size="mini", target_length=96, out_dim_cls=32, out_dim_data=16,
                                  warmup_teacher_temp_steps=30))
    for step, expected in ((0, 0.04), (12, 0.04 + 0.03 * 12 / 29), (29, 0.07), (50, 0.07)):
        o.step.fill_(step)
        assert o.teacher_temp().item() == pytest.approx(expected, abs=1e-7)


def test_mae_ast_decoder_drops_out_after_its_input_layernorm():
    """fairseq TransformerEncoder (layer_norm_first=False): x = dropout(layer_norm(x)), then the layers."""
    o = build_objective(dict(family="mae_ast", size="mini", encoder={"dropout": 0.5}))
    seen = []
    o.decoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(2, 96, 64)
    o.decoder.train()
    o.decoder(x)
    normed = o.decoder.input_norm(x)
    kept = seen[0] != 0
    assert 0.3 < kept.float().mean() < 0.7  # half of the normalised input dropped ...
    torch.testing.assert_close(seen[0][kept], 2 * normed[kept])  # ... the rest scaled by 1 / (1 - p)
    o.decoder.eval()
    o.decoder(x)
    torch.testing.assert_close(seen[1], normed)
    assert build_objective(dict(family="mae_ast", size="mini")).decoder.input_drop.p == 0.1


@pytest.mark.parametrize("family", ["ssast", "mae_ast", "asit"])
def test_weight_decay_groups_follow_each_official_optimiser(family):
    """SSAST (torch Adam) and MAE-AST (fairseq Adam) decay every parameter; ASiT uses DINO's groups: no decay
    for biases and 1-D parameters, decay for weights, the cls token and the position table."""
    from pretrain import OptimConfig, build_optimizer

    cfg = {"ssast": dict(target_length=128, mask_patch=20), "mae_ast": {},
           "asit": dict(target_length=96, out_dim_cls=32,
                                                                                     out_dim_data=16)}[family]
    o = build_objective(dict(family=family, size="mini",
                                                                                         **cfg))
    opt = build_optimizer(o, OptimConfig(name="adamw", weight_decay=0.04), torch.device("cpu"))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.04 for p in g["params"]}
    names = {n: id(p) in decayed for n, p in o.named_parameters() if p.requires_grad}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names)  # every trainable parameter, once
    if family != "asit":
        assert all(names.values())
    else:
        assert names["encoder.prefix_tokens"] and names["encoder.pos_embed"] and names["head.cls_v"]
        assert names["encoder.blocks.0.attn.qkv.weight"] and names["rec_head.conv_trans.weight"]
        assert not names["encoder.norm.weight"] and not names["encoder.blocks.0.attn.qkv.bias"]
        assert not names["rec_head.conv_trans.bias"] and not any(n.startswith("teacher") for n in names)


# -------------------------------------------------------------------------------------- front-end round trip
@pytest.mark.parametrize("family,name", [("ssast", "ssast_patch_mini"), ("mae_ast", "mae_ast_patch_mini"),
                                         ("asit", "asit_mini")])
def test_a_pretrained_model_keeps_its_front_end(family, name, tmp_path):
    """What the objective saves (upstream.pt) loads with the statistics and input length it was trained with:
    SSAST / ASiT fbank statistics and target length, MAE-AST's in-model BatchNorm statistics."""
    import upstream
    from upstream.checkpoint import save_upstream

    cfg = {"ssast": dict(target_length=128, mask_patch=20, norm_mean=-6.5, norm_std=3.25),
           "mae_ast": {}, "asit": dict(target_length=96, out_dim_cls=32, out_dim_data=16, norm_mean=-6.5,
                                       norm_std=3.25)}[family]
    o = build_objective(dict(family=family, size="mini",
                                                                                         **cfg))
    if family == "mae_ast":  # a training step moves the BatchNorm statistics off their defaults
        o(_structured_fbank(2, 128) * 3 - 6, None, torch.Generator().manual_seed(0))
        assert o.encoder.input_bn.running_mean.item() != 0.0
    save_upstream(o.to_upstream(), tmp_path / "upstream.pt")
    loaded = upstream.load(name, ckpt=tmp_path / "upstream.pt")
    fe = loaded.cfg.frontend
    if family == "mae_ast":
        assert fe == o.frontend
        for k in ("running_mean", "running_var"):
            torch.testing.assert_close(getattr(loaded.encoder.input_bn, k), getattr(o.encoder.input_bn, k))
        return
    assert (fe.norm_mean, fe.norm_std) == (-6.5, 3.25)
    length = cfg["target_length"]
    assert fe.target_length == loaded.cfg.window_frames == length
    if family == "ssast":  # an explicit length still wins; the statistics stay the model's
        other = upstream.load(name, ckpt=tmp_path / "upstream.pt", target_length=100).cfg
        assert other.frontend.target_length == 100 and other.frontend.norm_mean == -6.5
        official_like = upstream.load(name).cfg.frontend  # a random init gets s3prl's AudioSet defaults
        assert official_like.norm_mean != -6.5 and official_like.target_length == 100
