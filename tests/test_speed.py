"""The speed benchmark: it runs on a CPU at mini size (pretraining steps, and the all-at-once GPU check), and
its FLOP formulas are right.

Only that the benchmark works is tested here; its numbers are measurements, never asserted.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmark import speed, speed_measure
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
    cfg, objective = speed_measure.build_recipe(method, "mini", torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    wavs, lengths = speed_measure.random_crops(objective, 2, torch.device("cpu"), gen)
    feats, frames = speed_measure.batch_fbank(Fbank(objective.frontend), wavs, lengths, objective.num_views)
    objective.encoder.cfg.layerdrop = 0.0  # MAE-AST skips random layers while training
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss, _ = objective(feats, frames, gen)
        loss.backward()
    analytic = 2 * objective.step_flops(feats.shape[-2])
    assert 0.95 < analytic / counter.get_total_flops() < 1.12


def test_batch_size_option():
    assert speed._parse_batch_sizes([], "base") == {"ssast": 24, "mae_ast": 32, "asit": 32}
    assert speed._parse_batch_sizes(["64", "asit=16"], "base") == {"ssast": 64, "mae_ast": 64, "asit": 16}
    with pytest.raises(SystemExit, match="unknown method 'byol'"):
        speed._parse_batch_sizes(["byol=3"], "mini")


def _strict_json(path):
    def no_nan(token):
        raise AssertionError(f"{path} holds {token}, which strict JSON readers refuse")
    return json.loads(path.read_text(), parse_constant=no_nan)


@pytest.mark.slow
def test_all_mode_writes_json_and_markdown_at_mini_size(tmp_path, capsys):
    out = tmp_path / "speed"
    argv = ["all", "--device", "cpu", "--size", "mini", "--out", str(out), "--compile", "off", "--steps", "1",
            "--warmup", "0", "--methods", "ssast", "--upstreams", "ssast_frame_mini", "mae_ast_patch_mini",
            "--min-secs", "0.01", "--fbank-batch", "2"]
    assert speed.main(argv) == 0
    report = _strict_json(out / "speed.json")
    assert report["command"].startswith("python -m benchmark.speed all --device cpu --size mini")
    assert report["errors"] == [] and report["size"] == "mini" and report["peak_tflops"] is None
    # the recipe batch (4) and the largest batch searched up to 2x it on a CPU (8), each on both paths
    assert [(r["batch kind"], r["batch"], r["path"]) for r in report["pretrain"]] == [
        (kind, batch, path) for kind, batch in (("recipe", 4), ("largest", 8))
        for path in ("model step", "with data path")]
    for r in report["pretrain"]:
        assert r["method"] == "ssast" and r["compile"] is False and r["clips/s"] > 0 and r["TFLOP/step"] > 0
        assert r["MFU %"] is None and r["peak mem GiB"] is None  # no peak given on CPU; CUDA memory only
    assert [(r["upstream"], r["batch"], r["clip s"]) for r in report["features"]] == [
        ("ssast_frame_mini", 2, 1.0), ("mae_ast_patch_mini", 2, 1.0)]
    assert all(r["clips/s"] > 0 and r["TFLOP/s"] > 0 for r in report["features"])
    core, batched = report["fbank"]
    assert core["device"] == "cpu (1 core)" and core["x one CPU core"] == 1.0 and batched["batch"] == 2
    assert batched["x one CPU core"] == pytest.approx(batched["clips/s"] / core["clips/s"])
    md = (out / "speed.md").read_text()
    for title in ("## Pretraining step", "## Frozen feature extraction", "## Fbank"):
        assert title in md
    assert "| ssast_frame_mini " in md and report["command"] in md
    assert md in capsys.readouterr().out  # the same table printed at the end
    assert not [p.name for p in out.iterdir() if p.name not in ("speed.json", "speed.md")]  # no temp files


def test_all_mode_records_a_failed_figure_and_goes_on(tmp_path, monkeypatch):
    def broken(name, *args, **kwargs):
        if name == "asit_mini":
            raise RuntimeError("no kernel for this\nsecond line")
        return {"upstream": name, "compile": False, "clip s": 1.0, "batch": 2, "clips/s": 5.0, "TFLOP/s": 1.0,
                "MFU %": math.nan}

    monkeypatch.setattr(speed, "feature_rows", broken)
    argv = ["all", "--device", "cpu", "--size", "mini", "--out", str(tmp_path), "--compile", "off",
            "--methods", "ssast", "--steps", "1", "--warmup", "0", "--max-batch", "4", "--upstreams",
            "asit_mini", "ssast_patch_mini", "--min-secs", "0.01", "--fbank-batch", "2"]
    assert speed.main(argv) == 1  # a figure is missing
    report = _strict_json(tmp_path / "speed.json")
    assert report["errors"] == [{"part": "features asit_mini, compile False",
                                 "error": "RuntimeError: no kernel for this"}]
    assert [r["upstream"] for r in report["features"]] == ["ssast_patch_mini"] and len(report["fbank"]) == 2
    md = (tmp_path / "speed.md").read_text()
    assert "- features asit_mini, compile False: RuntimeError: no kernel for this" in md


def test_largest_batch_search(monkeypatch):
    tried = []

    def fits(method, size, device, batch, amp):
        tried.append(batch)
        return batch <= 37

    monkeypatch.setattr(speed_measure, "_fits", fits)
    # doubling 8, 16, 32, 64 (too big), then bisection 48 (no), 40 (no), 36 (yes): within 1/8 of the limit
    assert speed_measure.largest_batch("ssast", "mini", torch.device("cpu"), 4, 1024, "fp32") == 36
    assert tried == [8, 16, 32, 64, 48, 40, 36]
    cpu = torch.device("cpu")
    assert speed_measure.largest_batch("ssast", "mini", cpu, 4, 20, "fp32") == 20  # the cap, which fits
    assert speed_measure.largest_batch("ssast", "mini", cpu, 40, 1024, "fp32") == 40  # recipe batch only


@pytest.mark.slow
def test_gpu_check_script_runs_on_a_cpu_at_mini_size(tmp_path):
    """The one-call GPU script, as shipped, with its device and size overridden (the options pass through)."""
    script = Path(speed.__file__).with_name("gpu_check.sh")
    out = tmp_path / "out"
    cmd = [str(script), str(out), "--device", "cpu", "--size", "mini", "--compile", "off", "--steps", "1",
           "--warmup", "0", "--methods", "mae_ast", "--max-batch", "4", "--upstreams", "mae_ast_frame_mini",
           "--min-secs", "0.01", "--fbank-batch", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable},
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = _strict_json(out / "speed.json")
    assert report["command"] == "python -m benchmark.speed all " + " ".join(
        ["--device", "cuda", "--size", "base", "--out", str(out)] + cmd[2:])
    assert [(r["method"], r["batch kind"], r["batch"]) for r in report["pretrain"]] == [
        ("mae_ast", "recipe (largest)", 4)] * 2  # --max-batch 4 = the recipe's: one batch, two paths
    assert len(report["features"]) == 1 and len(report["fbank"]) == 2 and report["errors"] == []
    assert "## Fbank" in done.stdout and (out / "speed.md").read_text() in done.stdout


def test_gpu_check_script_refuses_to_run_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    script = Path(speed.__file__).with_name("gpu_check.sh")
    done = subprocess.run([str(script), str(tmp_path / "out")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert done.returncode == 1 and done.stderr.strip().endswith("no CUDA device: this check needs a GPU")
    assert not (tmp_path / "out").exists()


def test_optimizers_take_the_fused_kernels_on_cpu_and_agree_with_the_loop():
    """Fused Adam/AdamW is ~4x faster per step on CPU; it must be used there, and match the foreach update."""
    import pretrain
    from common.optim import fused_adam_supported
    from downstream.config import OptimizerConfig
    from downstream.engine import build_optimizer

    cpu = torch.device("cpu")
    assert fused_adam_supported(cpu) and fused_adam_supported(torch.device("cuda"))
    cfg, objective = speed_measure.build_recipe("mae_ast", "mini", cpu)
    optimizer = pretrain.build_optimizer(objective, cfg.optim, cpu)
    assert optimizer.defaults["fused"] is True
    head = torch.nn.Linear(3, 2)
    head_optimizer = build_optimizer(SimpleNamespace(parameters=head.parameters), OptimizerConfig(), cpu)
    assert head_optimizer.defaults["fused"]

    torch.manual_seed(0)
    weights = [torch.randn(257, requires_grad=True) for _ in range(2)]
    copies = [w.detach().clone().requires_grad_() for w in weights]
    start = [w.detach().clone() for w in weights]
    fused = torch.optim.AdamW(weights, lr=1e-3, weight_decay=0.05, fused=True)
    loop = torch.optim.AdamW(copies, lr=1e-3, weight_decay=0.05, foreach=False)
    for _ in range(20):
        for w, c in zip(weights, copies):
            w.grad = torch.randn_like(w)
            c.grad = w.grad.clone()
        fused.step()
        loop.step()
    for w, c, w0 in zip(weights, copies, start):
        assert (w - w0).abs().mean() > 1e-3  # 20 steps of lr 1e-3 moved the weights
        torch.testing.assert_close(w, c, rtol=0, atol=1e-6)  # float rounding only (~1e-7 seen)


def test_long_clip_mode_measures_each_request_in_its_own_process(capsys):
    assert speed.main(["long", "ssast_patch_mini", "--secs", "3", "--layers", "all", "none", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ssast_patch_mini")]
    assert len(lines) == 3
    returned = [float(line.split("|")[6]) for line in lines]  # MB returned: 2 layers + last, last, 1 + last
    assert returned[1] < returned[2] < returned[0]
    assert returned[0] == pytest.approx(3 * returned[1])
    with pytest.raises(SystemExit):
        speed.main(["long", "ssast_patch_mini", "--layers", "x"])


def test_official_column_says_why_it_has_no_figure(monkeypatch):
    assert speed_measure.official_clips_per_sec("asit_base", "cpu", 1, 1.0) == "no s3prl expert"
    rows = speed_measure.bench_features(["ssast_patch_mini"], "cpu", 1, 1.0, None, official=True,
                                        min_secs=0.01)
    assert rows[0][0].startswith("ssast_patch_mini features") and float(rows[0][2]) > 0
    assert rows[1][2] == "n/a" and rows[1][3] == "no s3prl expert"
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "s3prl" else object())
    assert speed_measure.official_clips_per_sec("ssast_patch_400", "cpu", 1, 1.0) == speed_measure.NEEDS_S3PRL
