"""PSLA fine-tuning extras: mixup, SpecAugment, noise, the lr schedule, weight averaging, the recipe
configs."""
from __future__ import annotations

import math
import statistics

import pytest
import torch

import run_downstream
import upstream
from common.config import load_config
from downstream import results
from downstream.augment import (
    AugmentConfig,
    ScheduleConfig,
    WeightAverage,
    lr_factor,
    mask_along_axis,
    mixup,
    noise_and_roll,
    sample_beta,
)
from downstream.config import DownstreamConfig, HeadConfig
from downstream.model import DownstreamModel
from tests.layouts import BUILDERS


def test_mixup_targets_sum_to_one_and_lambda_is_beta_10_10():
    g = torch.Generator().manual_seed(0)
    lam = sample_beta(10, 10, 20000, g)
    assert abs(lam.mean().item() - 0.5) < 0.005 and abs(lam.std().item() - (1 / 84) ** 0.5) < 0.005
    wavs = [torch.randn(n) for n in (800, 500, 1200, 640)]
    out, target = mixup(wavs, torch.tensor([0, 1, 2, 3]), 5, 1.0, g)
    # each clip keeps its length (partner cut/padded)
    assert [w.numel() for w in out] == [800, 500, 1200, 640]
    torch.testing.assert_close(target.sum(1), torch.ones(4))
    assert all(abs(w.mean().item()) < 1e-5 for w, t in zip(out, target) if t.max() < 1)  # mix loses its mean
    same, target0 = mixup(wavs, torch.tensor([0, 1, 2, 3]), 5, 0.0, g)  # probability 0: nothing mixed
    assert all(torch.equal(a, b) for a, b in zip(same, wavs))
    assert torch.equal(target0, torch.eye(5)[:4])
    multi = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    _, t = mixup([torch.randn(100), torch.randn(100)], multi, 3, 1.0, g)
    assert (t >= 0).all() and (t <= 1).all()


def test_spec_augment_masks_one_band_of_allowed_width():
    x = torch.arange(2 * 6 * 8, dtype=torch.float32).reshape(2, 6, 8) + 1  # (B, T, F), no zeros
    g = torch.Generator().manual_seed(3)
    w = torch.rand(2, generator=g) * 5
    start = (torch.rand(2, generator=g) * (8 - w)).long()  # the draws the function makes, hand-replayed
    y = mask_along_axis(x, 5, 2, 0.0, torch.Generator().manual_seed(3))
    for b in range(2):
        band = list(range(int(start[b]), int(start[b]) + int(w[b])))
        assert (y[b][:, band] == 0).all() and torch.equal(y[b][:, [i for i in range(8) if i not in band]],
                                                          x[b][:, [i for i in range(8) if i not in band]])
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        # widths always in [0, max_width), one contiguous band, whole rows along the other axis
        z = mask_along_axis(torch.ones(3, 20, 16), 7, 1, -1.0, g)
        masked = (z == -1.0).all(2)  # (B, T): time rows masked over every frequency
        assert torch.equal(masked, (z == -1.0).any(2))
        for row in masked:
            idx = row.nonzero().flatten()
            assert len(idx) < 7 and (len(idx) == 0 or idx[-1] - idx[0] + 1 == len(idx))
    assert torch.equal(mask_along_axis(x, 0, 1, 0.0, g), x)


def test_noise_and_roll_are_bounded_and_rolled():
    x = torch.zeros(4, 30, 5)
    x[:, 0] = 100.0  # a marker row
    y = noise_and_roll(x, torch.Generator().manual_seed(0))
    for b in range(4):
        row = int(y[b, :, 0].argmax())
        assert (row - 0) % 30 in set(range(0, 10)) | set(range(20, 30))  # roll in [-10, 10)
        rest = torch.cat([y[b, :row], y[b, row + 1:]])
        assert (rest >= 0).all() and (rest < 0.1).all()  # U * U / 10 noise


def test_multistep_schedule_matches_torch_and_ssast_warmup():
    for start, step, decay in [(10, 5, 0.5), (6, 1, 0.85), (5, 1, 0.85)]:
        cfg = ScheduleConfig(lrscheduler_start=start, lrscheduler_step=step, lrscheduler_decay=decay)
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(range(start, 1000, step)), gamma=decay)
        for epoch in range(30):  # SSAST: scheduler.step() after each epoch
            for s in (epoch * 7, epoch * 7 + 6):
                assert lr_factor(s, 7, cfg) == pytest.approx(opt.param_groups[0]["lr"]), (start, epoch)
            opt.step()
            sched.step()
    # AS-20K by hand: epochs 1..10 full lr, 11..15 half, 16..20 a quarter (1-based epochs)
    cfg = ScheduleConfig(lrscheduler_start=10, lrscheduler_step=5, lrscheduler_decay=0.5)
    assert [lr_factor(e * 100, 100, cfg) for e in (0, 9, 10, 14, 15, 20)] == [1, 1, 0.5, 0.5, 0.25, 0.125]
    warm = ScheduleConfig(warmup_steps=1000)
    assert [lr_factor(s, 663, warm) for s in (0, 49, 50, 99, 500, 999, 1000, 1001)] == \
        [0.0, 0.0, 0.05, 0.05, 0.5, 0.95, 1.0, 1.0]


def test_weight_average():
    wa = WeightAverage()
    wa.add({"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)})
    wa.add({"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5)})
    avg = wa.average()
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0])) and avg["n"] == 5


# one upstream per input path of the hook: s3prl windows (SSAST), whole clip (MAE-AST), exact windows (ASiT)
@pytest.mark.parametrize("name", ["ssast_patch_mini", "mae_ast_patch_mini", "asit_mini"])
def test_augmentation_leaves_evaluation_unchanged(name):
    torch.manual_seed(0)
    up = upstream.load(name)
    model = DownstreamModel(up, 3, HeadConfig(kind="psla"), finetune=True)
    wavs = [torch.randn(16000) * 0.1, torch.randn(12000) * 0.1]
    model.eval()
    with torch.no_grad():
        before = model(wavs)
        model.augment_inputs(AugmentConfig(freqm=24, timem=20, noise=True), torch.Generator().manual_seed(0))
        assert torch.equal(model(wavs), before)  # eval: bit-identical with augmentation installed
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        for m in model.modules():  # MAE-AST's input BatchNorm would otherwise use batch statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        assert not torch.allclose(model(wavs), before)  # training: masked and noised
    frozen = DownstreamModel(upstream.load(name), 3, HeadConfig(kind="psla"))
    with pytest.raises(ValueError, match="-f"):
        frozen.augment_inputs(AugmentConfig(freqm=1), torch.Generator())


# SSAST / ASiT: (0 - mean) / (2 std) of their AudioSet statistics -4.2677393, 4.5689974, i.e.
# 4.2677393 / 9.1379948; MAE-AST does not normalise: a raw zero stays 0
AUDIOSET_FILL = 4.2677393 / 9.1379948


@pytest.mark.parametrize("name, shape, fill", [
    ("ssast_patch_mini", (2 * 3, 100, 128), AUDIOSET_FILL),  # 1 s windows: 2.5 s -> 3 (both padded to it)
    ("mae_ast_patch_mini", (2, 248, 128), 0.0),  # whole clips: 1 + (40000 - 400) // 160 frames
    ("asit_mini", (2, 592, 128), AUDIOSET_FILL),  # exact windows of 592 frames: one per clip here
])
def test_the_hook_sees_each_normalised_input_with_the_raw_zero_fill(name, shape, fill):
    """``set_input_augment``: called in train mode only, on the inputs the encoder sees (one per clip and
    window, or the batch of whole clips), with the value a raw zero has after normalisation."""
    up = upstream.load(name)
    seen = []

    def record(feats, fill):
        seen.append((tuple(feats.shape), fill))
        return feats

    up.set_input_augment(record)
    wavs = [torch.randn(40000) * 0.1, torch.randn(12000) * 0.1]  # 2.5 s and 0.75 s
    up.eval()
    with torch.no_grad():
        up(wavs)
    assert seen == []  # evaluation never augments
    up.train()
    with torch.no_grad():
        up(wavs)
    assert seen == [(shape, pytest.approx(fill))]
    up.set_input_augment(None)
    seen.clear()
    with torch.no_grad():
        up(wavs)
    assert seen == []  # removed


def test_recipe_configs_and_frozen_refusal(tmp_path, capsys):
    cfgs = {t: load_config(DownstreamConfig, f"configs/downstream/{t}_finetune.yaml")
            for t in ("as20k", "esc50", "speech_commands_v2")}
    assert (cfgs["as20k"].augment.mixup, cfgs["as20k"].augment.freqm,
            cfgs["as20k"].augment.timem) == (0.5, 48, 192)
    assert cfgs["as20k"].schedule.wa
    assert (cfgs["as20k"].schedule.wa_start, cfgs["as20k"].schedule.wa_end) == (6, 25)
    assert cfgs["esc50"].augment.noise and cfgs["esc50"].schedule.lrscheduler_decay == 0.85
    ks2 = cfgs["speech_commands_v2"]
    assert ks2.schedule.warmup_steps == 1000 and ks2.augment.mixup == 0.6
    root = BUILDERS["folder"](tmp_path / "data")["root"]
    rc = run_downstream.main(["-u", "ssast_patch_mini", "-d", "folder", "--data-root", str(root),
                              "-o", "augment.freqm=4", "--expdir", str(tmp_path / "exp")])
    assert rc == 2 and "frozen" in capsys.readouterr().err


def test_as20k_finetune_reports_the_weight_averaged_model(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTBENCH_CACHE", str(tmp_path / "cache"))
    BUILDERS["as20k"](tmp_path / "data")
    rc = run_downstream.main(["-u", "ssast_patch_mini", "-d", "as20k", "-f", "--data-root",
                              str(tmp_path / "data"),
                              "--expdir", str(tmp_path / "exp"), "--results", str(tmp_path / "r.jsonl"), "-n",
                              "as",
                              "-o", "runner.total_steps=3", "-o", "runner.eval_step=1", "-o",
                              "runner.batch_size=4", "-o", "schedule.wa_start=2", "-o", "schedule.wa_end=3"])
    assert rc == 0
    wa = torch.load(tmp_path / "exp/as/wa.ckpt", weights_only=False)
    assert wa["wa_epochs"] == [2, 3] and wa["step"] == 3
    # the records carry AS-20K's mAUC and d' beside the mAP (the metric's report), d' = sqrt(2) Phi^-1(mAUC)
    (test,) = [r for r in results.load(tmp_path / "r.jsonl") if r.split == "test"]
    assert test.metric == "mAP" and test.scores["mAP"] == test.value
    assert set(test.scores) == {"mAP", "mAUC", "d_prime", "num_classes", "num_classes_skipped_ap"}
    auc = test.scores["mAUC"]
    assert 0.0 <= auc <= 1.0
    want = math.copysign(math.inf, auc - 0.5) if auc in (0.0, 1.0) else \
        math.sqrt(2) * statistics.NormalDist().inv_cdf(auc)
    assert test.scores["d_prime"] == pytest.approx(want)
