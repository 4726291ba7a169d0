"""Frozen-feature cache: same training as without it, no upstream call on reuse, keys, corrupt shards."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import run_downstream
import upstream
from downstream import cache as cache_mod
from downstream.cache import FeatureCache, FeatureCacheError, cache_key, collate_features
from downstream.config import HeadConfig
from downstream.datasets import collate
from downstream.model import DownstreamModel
from downstream.tasks import get_task
from tests.layouts import BUILDERS
from upstream.interface import Upstream

TINY = ["-o", "runner.total_steps=3", "-o", "runner.eval_step=1", "-o", "runner.batch_size=4",
        "-o", "runner.eval_batch_size=8"]


@pytest.fixture
def calls(monkeypatch):
    """Counts clips sent through ``Upstream.forward``."""
    count = {"clips": 0}
    forward = Upstream.forward

    def counted(self, wavs):
        count["clips"] += len(wavs)
        return forward(self, wavs)

    monkeypatch.setattr(Upstream, "forward", counted)
    return count


def _main(tmp_path, name, *extra):
    root = tmp_path / "data" / "folder_ds"
    if not root.exists():  # written once: rewriting the clips would (rightly) change their cache entries
        root = BUILDERS["folder"](tmp_path / "data")["root"]
    return run_downstream.main(["-u", "ssast_patch_mini", "-d", "folder", "--data-root", str(root),
                                "--expdir",
                                str(tmp_path / "exp"), "--results", str(tmp_path / "r.jsonl"), "-n", name,
                                "--cache-dir", str(tmp_path / "cache"), *TINY, *extra])


def _evals(tmp_path, name):
    return [json.loads(line) for line in open(tmp_path / "exp" / name / "evals.jsonl")]


def test_cached_run_matches_uncached_and_reuses_the_cache(tmp_path, calls):
    assert _main(tmp_path, "plain", "--no-cache") == 0
    plain_calls, calls["clips"] = calls["clips"], 0
    assert not (tmp_path / "cache").exists()
    assert _main(tmp_path, "cached") == 0
    first_calls, calls["clips"] = calls["clips"], 0
    assert _main(tmp_path, "again") == 0
    assert calls["clips"] == 0  # every split read from disk: the upstream never ran
    assert 0 < first_calls < plain_calls  # built once (train + dev + test), not once per epoch
    plain, cached, again = (_evals(tmp_path, n) for n in ("plain", "cached", "again"))
    np.testing.assert_allclose([e["train_loss"] for e in cached], [e["train_loss"] for e in plain], rtol=2e-3)
    assert [e["train_loss"] for e in again] == [e["train_loss"] for e in cached]
    a = torch.load(tmp_path / "exp/plain/last.ckpt", weights_only=False)["model"]
    b = torch.load(tmp_path / "exp/cached/last.ckpt", weights_only=False)["model"]
    for k in a:  # after 3 steps the head weights agree to float16 feature precision
        torch.testing.assert_close(a[k], b[k], rtol=2e-3, atol=2e-4)
    (key_dir,) = (tmp_path / "cache").iterdir()
    assert json.loads((key_dir / "key.json").read_text())["selection"] == "hidden_states"
    assert _main(tmp_path, "layer", "-l", "1") == 0 and calls["clips"] == 0  # -l k shares the all-layer cache


def test_key_changes_with_weights_overrides_and_selection():
    up = upstream.load("ssast_patch_mini")
    base = cache_key(up, "ssast_patch_mini", {}, "hidden_states", 0)[0]
    assert cache_key(up, "ssast_patch_mini", {}, "hidden_states", 0)[0] == base
    assert cache_key(up, "ssast_patch_mini", {"pooling": "cls"}, "hidden_states", 0)[0] != base
    assert cache_key(up, "ssast_patch_mini", {}, "last_hidden_state", 0)[0] != base
    assert cache_key(up, "ssast_patch_mini", {}, "hidden_states", 1)[0] != base  # random init: seed counts
    with torch.no_grad():
        up.encoder.pos_embed.add_(1e-3)
    assert cache_key(up, "ssast_patch_mini", {}, "hidden_states", 0)[0] != base
    up.checkpoint_sha256 = "a" * 64
    with_ckpt = cache_key(up, "ssast_patch_mini", {}, "hidden_states", 0)[0]
    # weights named by the file
    assert cache_key(up, "ssast_patch_mini", {}, "hidden_states", 1)[0] == with_ckpt
    up.checkpoint_sha256 = "b" * 64
    assert cache_key(up, "ssast_patch_mini", {}, "hidden_states", 0)[0] != with_ckpt


def _cache(tmp_path):
    data = get_task("folder").read(BUILDERS["folder"](tmp_path / "data")["root"])
    up = upstream.load("ssast_patch_mini").eval()
    return data, up, FeatureCache(tmp_path / "cache", up, "ssast_patch_mini", {}, "hidden_states", 0, 4,
                                  torch.device("cpu"), log=lambda _: None)


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "no_meta"])
def test_corrupt_or_partial_shard_is_rebuilt(tmp_path, calls, damage):
    data, up, cache = _cache(tmp_path)
    ds = cache.dataset(data, "test", up.sample_rate, train=False, seed=0)
    built, calls["clips"] = calls["clips"], 0
    feats = ds.shard.with_suffix(".f16")
    good = feats.read_bytes()
    if damage == "truncate":
        feats.write_bytes(good[: len(good) // 2])
    elif damage == "overwrite":
        feats.write_bytes(bytes(8) + good[8:])
    else:  # interrupted before the metadata was renamed into place
        ds.shard.with_suffix(".json").unlink()
    assert FeatureCache.read_meta(ds.shard) is None
    again = cache.dataset(data, "test", up.sample_rate, train=False, seed=0)
    assert calls["clips"] == built and feats.read_bytes() == good
    assert torch.equal(again[0][0], ds[0][0])
    with pytest.raises(FeatureCacheError,
                       match=f"^feature cache: shard {ds.shard} is unreadable .*build=False\\)$"):
        feats.unlink() or cache.dataset(data, "test", up.sample_rate, train=False, seed=0, build=False)


def test_cached_and_live_clips_give_the_wav_path_logits(tmp_path):
    data, up, cache = _cache(tmp_path)
    ds = cache.dataset(data, "test", up.sample_rate, train=False, seed=0)
    ds.live = {1}  # clip 1 goes through the upstream, as a random training crop would
    model = DownstreamModel(up, data.num_classes, HeadConfig()).eval()
    items = [ds[i] for i in range(3)]
    batch, labels, _ = collate_features(items)
    assert len(batch.live) == 1 and batch.feats.dtype == torch.float16
    wavs, wav_labels, _ = collate([ds.ds[i] for i in range(3)])
    with torch.no_grad():
        torch.testing.assert_close(model(batch), model(wavs), rtol=1e-2, atol=1e-3)
        all_live, _, _ = collate_features([ds.ds[i] for i in range(2)])
        torch.testing.assert_close(model(all_live), model(wavs[:2]), rtol=1e-5, atol=1e-5)
    assert torch.equal(labels, wav_labels)


def test_a_damaged_shard_in_a_cache_that_cannot_be_written_is_one_cli_error(tmp_path, capsys, monkeypatch):
    assert _main(tmp_path, "first") == 0
    (shard,) = (tmp_path / "cache").glob("*/all-*.f16")  # the task's one shard (whole clips)
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))

    def read_only(lock, waiting=None):
        raise PermissionError(13, "Permission denied", str(lock))

    monkeypatch.setattr(cache_mod, "locked", read_only)  # as in a folder this user cannot write
    capsys.readouterr()
    assert _main(tmp_path, "second") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: feature cache: {shard} does not match its checksum (damaged or changed), and "
                       f"it cannot be rebuilt there (Permission denied: {shard.with_suffix('.lock')}); use a "
                       f"writable --cache-dir (or $ASTBENCH_CACHE)")


def test_folds_of_a_task_share_one_shard_and_a_clip_has_one_feature(tmp_path, calls):
    """ESC-50's five folds are one set of clips split five ways: the clips run through the upstream once for
    all folds, and a clip reads the same features whichever fold scores it."""
    BUILDERS["esc50"](tmp_path / "data")
    root = tmp_path / "data"
    up = upstream.load("ssast_patch_mini").eval()
    cache = FeatureCache(tmp_path / "cache", up, "ssast_patch_mini", {}, "hidden_states", 0, 4,
                         torch.device("cpu"), log=lambda _: None)
    task = get_task("esc50")
    folds = {k: task.read(root, fold=k, log=lambda _: None) for k in (1, 2)}
    n_clips = len({c.path for c in folds[1].splits["train"] + folds[1].splits["test"]})
    by_fold = {k: {split: cache.dataset(data, split, up.sample_rate, train=split == "train", seed=0)
                   for split in data.splits} for k, data in folds.items()}
    assert calls["clips"] == n_clips  # built once, for every clip of the task; fold 2 computed nothing
    (shard,) = {ds.shard for splits in by_fold.values() for ds in splits.values()}
    assert shard.name.startswith("all-")
    # a clip of fold 1's test split is in fold 2's train split: the same rows of the same shard
    test1 = by_fold[1]["test"]
    train2 = by_fold[2]["train"]
    where = {c.path: i for i, c in enumerate(train2.ds.clips)}
    for i, clip in enumerate(test1.ds.clips):
        assert torch.equal(test1[i][0], train2[where[clip.path]][0])
        assert test1[i][1] == train2[where[clip.path]][1] == clip.label
    # and those rows are the clip's own features (float16 storage aside)
    wav = test1.ds[0][0]
    with torch.no_grad():
        want = torch.stack(up([wav])["hidden_states"], dim=2)[0]  # (T, L, H)
    torch.testing.assert_close(test1[0][0].float(), want[: test1[0][0].shape[0]], rtol=2e-3, atol=2e-3)


def test_cropped_clips_keep_a_shard_per_split(tmp_path):
    """A task with cropped clips (here: every clip cut to 0.5 s) does not pool: a crop may depend on the split
    and the seed, so each split keeps its own shard."""
    data, up, cache = _cache(tmp_path)
    for clips in data.splits.values():
        for clip in clips:
            clip.crop_secs = 0.5
    shards = {cache.dataset(data, split, up.sample_rate, train=False, seed=0).shard.name.split("-")[0]
              for split in data.splits}
    assert shards == set(data.splits)
