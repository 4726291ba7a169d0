"""The plug-in contract's validator, ``python -m benchmark validate``: it catches each way the issue's tinycnn
upstream failed (missing int attributes, no clip_size, no augmentation hook) before a run does, and what -f
needs."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from benchmark.__main__ import main
from downstream.augment import AugmentationSkipped, AugmentConfig, SpecAugment, attach
from downstream.validate import errors, validate_builder, validate_upstream

ME = "tests.test_validate_cli"


class TinyCNN(nn.Module):
    """A user's upstream: 160-sample frames -> Conv1d -> 2 layers. ``kind`` breaks it the ways users do."""

    sample_rate = 16000

    def __init__(self, kind: str = "ok"):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv1d(1, 8, 160, stride=160)
        self.layer = nn.Linear(8, 8)
        if kind != "no_attributes":
            self.hidden_size, self.num_layers = 8, 2
        if kind not in ("no_attributes", "no_clip_size"):
            self.clip_size = 8
        self.augment = None  # what set_input_augment was given (the 'hook' kinds have that method)

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        return 160

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        lengths = torch.tensor([math.ceil(w.numel() / 160) for w in wavs])
        x = nn.utils.rnn.pad_sequence(wavs, batch_first=True)
        x = nn.functional.pad(x, (0, int(lengths.max()) * 160 - x.shape[1]))
        hooked = self.kind in ("hook", "ignored_hook", "unused_hook")
        if hooked and self.training and self.augment is not None:
            frames = x.reshape(len(wavs), -1, 160)  # (B, T, 160): the input the hook augments
            augmented = self.augment(frames, 0.0)
            if self.kind == "hook":  # 'unused_hook' calls it but keeps its input; 'ignored_hook' never does
                x = augmented.reshape(len(wavs), -1)
        h1 = self.conv(x[:, None]).transpose(1, 2)  # (B, T, 8)
        if self.kind == "no_grad":
            h1 = h1.detach()
        h2 = self.layer(h1)
        if self.kind == "no_grad":
            h2 = h2.detach()
        valid = (torch.arange(h2.shape[1])[None] < lengths[:, None]).float()[..., None]
        clip = (h2 * valid).sum(1) / valid.sum(1)
        return {"hidden_states": [h1, h2], "last_hidden_state": h2, "clip": clip, "lengths": lengths}


class HookedCNN(TinyCNN):
    """TinyCNN with the contract's ``set_input_augment`` hook; ``kind`` says whether forward honours it."""

    def set_input_augment(self, augment) -> None:
        if self.kind == "ignored_hook":
            return
        self.augment = augment


def builder(ckpt=None, **overrides):
    return TinyCNN(overrides.get("kind", "ok"))


def no_attributes(ckpt=None):
    return TinyCNN("no_attributes")


def no_clip_size(ckpt=None):
    return TinyCNN("no_clip_size")


def no_ckpt_keyword():
    return TinyCNN()


def with_hook(ckpt=None):
    return HookedCNN("hook")


def ignored_hook(ckpt=None):
    return HookedCNN("ignored_hook")


def unused_hook(ckpt=None):
    return HookedCNN("unused_hook")


def no_grad(ckpt=None):
    return TinyCNN("no_grad")


def saves_nothing(ckpt=None):
    assert ckpt is not None and open(ckpt, "rb").read() == b"weights"
    return TinyCNN()


def _validate(capsys, *args):
    code = main(["validate", "-u", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_issues_three_failures_are_caught_up_front(capsys):
    code, _, err = _validate(capsys, f"{ME}:no_attributes")
    assert code == 3
    for attr in ("hidden_size", "num_layers", "clip_size"):
        assert f"error: {attr} must be a positive int attribute" in err
    assert "README 'Plug in your own upstream'" in err
    code, _, err = _validate(capsys, f"{ME}:no_clip_size")
    assert code == 3
    assert "clip_size must be a positive int attribute (read by the PSLA fine-tuning head" in err
    code, out, err = _validate(capsys, f"{ME}:builder")  # no augment hook: fine, with a warning
    assert code == 0 and "honours the upstream contract (frozen and -f checks, 1 warning(s)" in out
    assert "warning: (-f) no set_input_augment hook: the PSLA fine-tuning configs' SpecAugment" in err
    assert "augment hook none" in out


def test_fine_tuning_needs_gradients_and_an_augment_hook_that_forward_honours(capsys):
    code, _, err = _validate(capsys, f"{ME}:no_grad")
    assert code == 3 and "(-f) no gradient reaches the upstream's parameters" in err
    assert _validate(capsys, f"{ME}:no_grad", "--frozen-only")[0] == 0  # a frozen probe does not need them
    code, out, err = _validate(capsys, f"{ME}:with_hook")
    assert code == 0 and "augment hook yes" in out and "warning" not in err
    code, _, err = _validate(capsys, f"{ME}:ignored_hook")
    assert code == 3 and "never calls the augmentation given to set_input_augment" in err
    code, _, err = _validate(capsys, f"{ME}:unused_hook")
    assert code == 3 and "ignores what the augmentation given to set_input_augment returns" in err


def test_builder_signature_ckpt_and_overrides(capsys, tmp_path):
    code, _, err = _validate(capsys, f"{ME}:no_ckpt_keyword")
    assert code == 0 and "takes no 'ckpt' keyword: --ckpt will fail" in err
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"weights")
    # called as builder(ckpt=...)
    assert _validate(capsys, f"{ME}:saves_nothing", "--ckpt", str(ckpt))[0] == 0
    code, _, err = _validate(capsys, f"{ME}:saves_nothing")  # builder() without ckpt: its error, on one line
    assert code == 3 and "the builder raised AssertionError" in err
    code, _, err = _validate(capsys, f"{ME}:builder", "-o", "kind=no_grad")  # -o reaches the builder
    assert code == 3 and "no gradient reaches" in err
    code, _, err = _validate(capsys, "tests.nope:builder")
    assert code == 3 and "cannot import module 'tests.nope'" in err
    assert _validate(capsys, f"{ME}:builder", "-o", "kind")[0] == 2


def test_registered_upstreams_pass_and_missing_checkpoints_name_the_download(capsys, tmp_path, monkeypatch):
    assert _validate(capsys, "mae_ast_patch_mini")[0] == 0
    model, problems = validate_builder("ssast_patch_mini")
    assert not errors(problems)
    assert not any("set_input_augment" in p for p in problems)  # it has the hook, and forward honours it
    monkeypatch.setenv("ASTBENCH_CHECKPOINTS", str(tmp_path))
    code, _, err = _validate(capsys, "ssast_patch_400")
    assert code == 3 and "python -m benchmark download ssast_patch_400" in err


def test_existing_plugin_and_shape_errors_still_reported():
    from tests import plugin_upstream

    assert errors(validate_upstream(plugin_upstream.build(), finetune=True)) == []
    wide = TinyCNN()
    wide.clip_size = 5
    assert "clip width 8 != clip_size 5" in errors(validate_upstream(wide))


def test_augmentation_without_the_hook_is_skipped_with_a_warning():
    up = TinyCNN()
    with pytest.warns(AugmentationSkipped, match="freqm=24, timem=96, noise=True skipped: TinyCNN has no "
                                                 "set_input_augment hook"):
        assert attach(up, AugmentConfig(freqm=24, timem=96, noise=True), torch.Generator()) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # mixup only: nothing to skip, no warning
        assert attach(up, AugmentConfig(mixup=0.5), torch.Generator()) is False
    hooked = HookedCNN("hook")
    assert attach(hooked, AugmentConfig(freqm=2), torch.Generator()) is True
    assert isinstance(hooked.augment, SpecAugment) and hooked.augment.cfg.freqm == 2


def test_a_finetuned_psla_run_of_a_plugin_without_the_hook_trains(tmp_path):
    """The issue's third failure: -f on ESC-50 with the recipe's SpecAugment, for an upstream without the
    hook."""
    import run_downstream
    from downstream import results
    from tests.layouts import make_esc50

    make_esc50(tmp_path / "data")
    argv = ["-u", f"{ME}:builder", "-d", "esc50", "--fold", "1", "-f", "--data-root", str(tmp_path / "data"),
            "--expdir", str(tmp_path / "exp"), "--results", str(tmp_path / "r.jsonl"), "--device", "cpu",
            "-o", "runner.total_steps=2", "-o", "runner.eval_step=1", "-o", "runner.batch_size=4",
            "-o", "runner.eval_batch_size=8"]
    with pytest.warns(AugmentationSkipped):
        assert run_downstream.main(argv) == 0
    recs = results.load(tmp_path / "r.jsonl")
    assert {r.split for r in recs} == {"test"} and recs[0].mode == "finetune"
