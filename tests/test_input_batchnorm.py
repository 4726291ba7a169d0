"""MAE-AST's in-model input BatchNorm: an untrained model in eval mode normalises with AudioSet statistics."""
from __future__ import annotations

import math

import torch

import upstream
from upstream.checkpoint import save_upstream


def test_random_init_mae_ast_normalises_in_eval_mode():
    model = upstream.load("mae_ast_patch_mini", random_init=True).eval()
    bn = model.encoder.input_bn
    # hand-computed: (x - (-4.2677393)) / sqrt(4.5689974**2 + 1e-5) * 0.5
    x = torch.tensor([[[-4.2677393, 0.3012581, -13.4057341]]])  # mean, mean + 1 std, mean - 2 std
    want = torch.tensor([[[0.0, 0.5, -1.0]]]) * (4.5689974 / math.sqrt(4.5689974**2 + 1e-5))
    torch.testing.assert_close(model.encoder.normalize_input(x), want, atol=1e-6, rtol=0)
    assert bn.running_mean.item() == torch.tensor(-4.2677393).item()
    assert bn.running_var.item() == torch.tensor(4.5689974**2).item()


def test_a_checkpoint_keeps_its_own_statistics(tmp_path):
    model = upstream.load("mae_ast_patch_mini", random_init=True)
    model.encoder.input_bn.running_mean.fill_(-6.0)
    model.encoder.input_bn.running_var.fill_(9.0)
    save_upstream(model, tmp_path / "upstream.pt")
    loaded = upstream.load("mae_ast_patch_mini", ckpt=tmp_path / "upstream.pt")
    assert loaded.encoder.input_bn.running_mean.item() == -6.0
    assert loaded.encoder.input_bn.running_var.item() == 9.0
