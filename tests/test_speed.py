"""The pretraining-step benchmark: it runs on a CPU at mini size, and its FLOP formulas are right.

Only that the benchmark works is tested here; its numbers are measurements, never asserted.
"""
from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmark import speed
from upstream.frontend import Fbank


def test_pretrain_benchmark_prints_a_table_of_positive_numbers(capsys):
    assert speed.main(["pretrain", "--size", "mini", "--steps", "1", "--warmup", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("command: python -m benchmark.speed pretrain --size mini")
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert tuple(header) == speed.PRETRAIN_COLUMNS
    rows = [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]
    assert [(r["method"], r["path"]) for r in rows] == [
        (m, p) for m in ("ssast", "mae_ast", "asit") for p in ("model step", "with data path")]
    for r in rows:
        assert all(float(r[c]) > 0 for c in ("step ms", "clips/s", "TFLOP/step", "TFLOP/s", "MFU %")), r
        assert r["peak mem GiB"] == "n/a"  # CUDA only


@pytest.mark.parametrize("method", list(speed.PRETRAIN_RECIPES))
def test_analytic_flops_match_a_flop_counter(method):
    """The documented formula against torch's FlopCounterMode (math attention, so attention is counted).

    The formula counts every trained module as 3x its forward; autograd skips the input gradient of the
    first layer, so the formula may be a few percent above the count.
    """
    cfg, objective = speed._build(method, "mini", torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    wavs, lengths = speed._waveforms(objective, 2, torch.device("cpu"), gen)
    feats, frames = speed._features(Fbank(objective.frontend), wavs, lengths, objective.num_views)
    objective.encoder.cfg.layerdrop = 0.0  # MAE-AST skips random layers while training
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss, _ = objective(feats, frames, gen)
        loss.backward()
    analytic = 2 * speed.pretrain_step_flops(objective, feats.shape[-2])
    assert 0.95 < analytic / counter.get_total_flops() < 1.12


def test_batch_size_option():
    assert speed._parse_batch_sizes([], "base") == {"ssast": 24, "mae_ast": 32, "asit": 32}
    assert speed._parse_batch_sizes(["64", "asit=16"], "base") == {"ssast": 64, "mae_ast": 64, "asit": 16}
    with pytest.raises(SystemExit, match="unknown method 'byol'"):
        speed._parse_batch_sizes(["byol=3"], "mini")
