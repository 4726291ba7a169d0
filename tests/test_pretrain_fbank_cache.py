"""The precomputed-fbank cache: same losses as decoding audio, reuse, updates, a wrong front end refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import run_pretrain
from common.config import load_config
from pretrain import DataError, PretrainConfig, run

REPO = Path(__file__).resolve().parents[1]
SR = 16000


@pytest.fixture(scope="module")
def short_clips(tmp_path_factory) -> Path:
    """Clips shorter than every mini recipe's crop (so no random crop is drawn) and one unreadable file."""
    root = tmp_path_factory.mktemp("short")
    rng = np.random.default_rng(1)
    for i, secs in enumerate([0.5, 0.9, 1.2, 1.5]):
        t = np.arange(int(secs * SR)) / SR
        wav = 0.3 * np.sin(2 * np.pi * (300 + 100 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(root / f"c{i}.wav", wav.astype(np.float32), SR)
    (root / "garbage.wav").write_bytes(b"not audio" * 40)
    return root


def _run(recipe: str, out: Path, data: Path, *overrides: str) -> list[float]:
    cfg = load_config(PretrainConfig, REPO / "configs/pretrain" / f"{recipe}.yaml",
                      [f"out_dir={out}", f"data.path={data}", "device=cpu", "tensorboard=false",
                       "data.num_workers=0", "max_steps=4", *overrides])
    run(cfg)
    skipped = torch.load(out / "last.ckpt", weights_only=False)["skipped_files"]
    assert list(skipped) == [str(data / "garbage.wav")]  # in both paths
    return [json.loads(line)["loss"] for line in (out / "losses.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("recipe", ["ssast_patch_mini", "mae_ast_patch_mini"])
def test_cache_gives_the_losses_of_the_waveform_path(recipe, short_clips, tmp_path):
    """SSAST: fixed length, padded with normalised zeros; MAE-AST: variable length, batch padding."""
    wave = _run(recipe, tmp_path / "wave", short_clips)
    cached = _run(recipe, tmp_path / "cached", short_clips, f"data.fbank_cache={tmp_path / 'cache'}")
    np.testing.assert_allclose(cached, wave, rtol=0, atol=2e-4)
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert len(index["files"]) == 5 and "bad" in index["files"][str(short_clips / "garbage.wav")]
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert files == ["index.json", "index.lock", "shard-00000.npy"]


def test_cache_is_reused_updated_and_refused_for_another_front_end(short_clips, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for f in short_clips.glob("c*.wav"):
        (data / f.name).write_bytes(f.read_bytes())
    cache = tmp_path / "cache"
    args = ["-c", str(REPO / "configs/pretrain/ssast_patch_mini.yaml"), "--data", str(data), "--expdir",
            str(tmp_path), "--device", "cpu", "-o", "max_steps=2", "-o", "tensorboard=false",
            "--fbank-cache", str(cache)]
    assert run_pretrain.main([*args, "-n", "a"]) == 0
    assert run_pretrain.main([*args, "-n", "b"]) == 0  # nothing new: no new shard
    assert sorted(p.name for p in cache.glob("shard-*")) == ["shard-00000.npy"]
    sf.write(data / "c0.wav", np.zeros(SR, dtype=np.float32) + 0.1, SR)  # changed size and mtime
    assert run_pretrain.main([*args, "-n", "c"]) == 0
    index = json.loads((cache / "index.json").read_text())
    entries = index["files"]
    assert entries[str(data / "c0.wav")]["shard"] == 1 and entries[str(data / "c1.wav")]["shard"] == 0
    assert entries[str(data / "c0.wav")]["frames"] == 98  # 1 s at 16 kHz
    mae = ["-c", str(REPO / "configs/pretrain/mae_ast_patch_mini.yaml"), *args[2:]]
    assert run_pretrain.main([*mae, "-n", "d"]) == 2
    err = capsys.readouterr().err
    assert f"fbank cache {cache} was built with another front end" in err and "window_type" in err


def test_a_cache_from_another_recipe_is_refused_in_the_api(short_clips, tmp_path):
    _run("ssast_patch_mini", tmp_path / "a", short_clips, f"data.fbank_cache={tmp_path / 'cache'}")
    with pytest.raises(DataError, match="norm_mean"):
        _run("ssast_patch_mini", tmp_path / "b", short_clips, f"data.fbank_cache={tmp_path / 'cache'}",
             "objective.norm_mean=-5.0")
