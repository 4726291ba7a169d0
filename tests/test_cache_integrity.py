"""Caches shared by several processes and damaged on disk: the frozen-feature cache (``downstream.cache``)
and the pretraining fbank cache (``pretrain.fbank_cache``), through ``common.files``.

Concurrent builders run in spawned processes started at one barrier; damage is a few bytes flipped in the
middle of a shard (the old check hashed only its first and last MiB, so the feature shard here is made larger
than 2 MiB).
"""
from __future__ import annotations

import errno
import json
import logging
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import upstream
from common import files as cache_files
from common.files import remove_stale_tmps
from common.files import tmp_path as writer_tmp  # (pytest's tmp_path is a fixture)
from downstream import cache as cache_mod
from downstream.cache import FeatureCache, FeatureCacheError
from downstream.tasks import get_task
from pretrain import DataError, fbank_cache
from pretrain.fbank_cache import build_cache
from tests.layouts import BUILDERS, write_tone
from upstream.frontend import FbankConfig

UP = "ssast_patch_mini"
FE = FbankConfig(window_type="hanning", norm_mean=-4.27, norm_std=4.57)
DEAD_PID = 4194305  # above Linux's largest pid_max (2**22): no process has it


def _upstream(threads: int) -> torch.nn.Module:
    torch.set_num_threads(threads)
    torch.manual_seed(0)  # random-init weights: the same in every process, so the same cache key
    return upstream.load(UP).eval()


def _cache(root: Path, up, log) -> FeatureCache:
    return FeatureCache(root, up, UP, {}, "hidden_states", 0, 4, torch.device("cpu"), log=log)


def _features(ds) -> list[np.ndarray]:
    return [ds[i][0].numpy() for i in range(len(ds))]


def _flip_middle(path: Path, count: int = 16) -> None:
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + count] = bytes(b ^ 0xFF for b in raw[mid:mid + count])
    path.write_bytes(bytes(raw))


# ------------------------------------------------------------------------------------------ feature cache
def _probe_child(data_root: str, cache_dir: str, threads: int, barrier, results) -> None:
    """One frozen probe's cache step: open the test split's shard, building it if needed."""
    up = _upstream(threads)
    data = get_task("folder").read(data_root)
    logs: list[str] = []
    cache = _cache(Path(cache_dir), up, logs.append)
    barrier.wait()
    ds = cache.dataset(data, "test", up.sample_rate, train=False, seed=0)
    results.put((os.getpid(), _features(ds), logs))


@pytest.mark.slow
def test_two_processes_building_one_shard_compute_it_once_and_agree(tmp_path):
    root = BUILDERS["folder"](tmp_path / "data")["root"]
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_probe_child,
                         args=(str(root), str(tmp_path / "cache"), torch.get_num_threads(),
                                                    barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    (_, feats_a, logs_a), (_, feats_b, logs_b) = got
    computed = [m for m in logs_a + logs_b if m.startswith("feature cache: computing")]
    assert len(computed) == 1, logs_a + logs_b  # the other process waited for it (or found it built)
    assert len(feats_a) == 6 and all(np.array_equal(a, b) for a, b in zip(feats_a, feats_b, strict=True))
    fresh = _cache(tmp_path / "fresh", _upstream(torch.get_num_threads()), lambda _: None)
    ds = fresh.dataset(get_task("folder").read(root), "test", 16000, train=False, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(feats_a, _features(ds), strict=True))
    (key_dir,) = (tmp_path / "cache").iterdir()
    assert not list(key_dir.glob("*.tmp"))


def _long_test_split(root: Path) -> Path:
    """Folder dataset whose test split holds 90 s of audio: a 2.5 MB ``hidden_states`` shard for the mini
    model."""
    base = root / "folder_ds"
    for split, secs in (("train", 0.2), ("dev", 0.2), ("test", 15.0)):
        for c, cls in enumerate(("bird", "cat", "dog")):
            for k in range(2):
                write_tone(base / split / cls / f"{cls}_{k}.wav", secs, seed=10 * c + k)
    return base


def test_bytes_flipped_in_the_middle_of_a_shard_are_found_and_rebuilt(tmp_path, monkeypatch):
    data = get_task("folder").read(_long_test_split(tmp_path / "data"))
    up = _upstream(torch.get_num_threads())
    logs: list[str] = []
    ds = _cache(tmp_path / "cache", up, logs.append).dataset(data, "test", up.sample_rate, train=False,
                                                             seed=0)
    shard = ds.shard.with_suffix(".f16")
    good = shard.read_bytes()
    assert len(good) > 2 * 2**20  # larger than the first + last MiB the old check read
    _flip_middle(shard)
    meta, problem = FeatureCache.check_shard(ds.shard)
    assert meta is None and problem == f"{shard} does not match its checksum (damaged or changed)"

    with pytest.raises(FeatureCacheError, match=f"^feature cache: {shard} does not match its checksum "
                                                r"\(damaged or changed\) \(not rebuilt: build=False\)$"):
        _cache(tmp_path / "cache", up, logs.append).dataset(data, "test", up.sample_rate, False, 0,
                                                            build=False)

    def read_only(lock, waiting=None):
        raise PermissionError(13, "Permission denied", str(lock))

    with monkeypatch.context() as m:  # a cache folder this user cannot write
        m.setattr(cache_mod, "locked", read_only)
        with pytest.raises(FeatureCacheError,
                           match=r"does not match its checksum .*, and it cannot be rebuilt "
                                                    r"there \(Permission denied: .*\.lock\); use a writable"):
            _cache(tmp_path / "cache", up, logs.append).dataset(data, "test", up.sample_rate, False, 0)

    logs.clear()
    again = _cache(tmp_path / "cache", up, logs.append).dataset(data, "test", up.sample_rate, False, 0)
    assert f"warning: feature cache: {shard} does not match its checksum (damaged or changed); " \
           f"rebuilding shard {ds.shard.name}" in logs
    assert shard.read_bytes() == good
    fresh = _cache(tmp_path / "fresh", up, lambda _: None).dataset(data, "test", up.sample_rate, False, 0)
    assert all(np.array_equal(a, b) for a, b in zip(_features(again), _features(fresh), strict=True))


def test_a_shard_is_hashed_once_per_process_unless_it_changes(tmp_path, monkeypatch):
    data = get_task("folder").read(BUILDERS["folder"](tmp_path / "data")["root"])
    up = _upstream(torch.get_num_threads())
    cache = _cache(tmp_path / "cache", up, lambda _: None)
    ds = cache.dataset(data, "test", up.sample_rate, train=False, seed=0)
    hashed = []
    monkeypatch.setattr(cache_mod, "file_checksum",
                        lambda p: hashed.append(p.name) or cache_files.file_checksum(p))
    # the runner reopens dev at each evaluation
    cache.dataset(data, "test", up.sample_rate, train=False, seed=0)
    assert hashed == []  # this process wrote it: its checksum is known
    _cache(tmp_path / "cache", up, lambda _: None).dataset(data, "test", up.sample_rate, False, 0)
    assert sorted(hashed) == sorted([ds.shard.with_suffix(s).name for s in (".f16", ".offsets.npy")])
    hashed.clear()
    os.utime(ds.shard.with_suffix(".f16"))  # written to since it was verified
    cache.dataset(data, "test", up.sample_rate, train=False, seed=0)
    assert ds.shard.with_suffix(".f16").name in hashed


def _killed_child(data_root: str, cache_dir: str, threads: int, started) -> None:
    """A build that stops after its first batch (to be killed there)."""
    up = _upstream(threads)
    forward = up.forward

    def first_batch_then_hang(wavs):
        if started.is_set():  # the first batch is written: hang in the second
            time.sleep(600)
        started.set()
        return forward(wavs)

    up.forward = first_batch_then_hang
    data = get_task("folder").read(data_root)
    _cache(Path(cache_dir), up, lambda _: None).dataset(data, "test", up.sample_rate, train=False, seed=0)


@pytest.mark.slow
def test_a_killed_build_leaves_nothing_that_blocks_the_next(tmp_path):
    root = BUILDERS["folder"](tmp_path / "data")["root"]
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    child = ctx.Process(target=_killed_child,
                        args=(str(root), str(tmp_path / "cache"), torch.get_num_threads(),
                                                    started))
    child.start()
    assert started.wait(120)
    time.sleep(1.0)  # into the second batch
    (key_dir,) = (tmp_path / "cache").iterdir()
    (orphan,) = key_dir.glob("*.f16.*.tmp")  # the dead writer's part-written features
    assert f".{child.pid}." in orphan.name
    os.kill(child.pid, signal.SIGKILL)  # killed while holding the shard's lock
    child.join(30)
    # older versions' names
    legacy_old, legacy_new = key_dir / "test-0-eval.f16.tmp", key_dir / "dev-0-eval.f16.tmp"
    legacy_old.write_bytes(b"x" * 1000)
    legacy_new.write_bytes(b"x")
    os.utime(legacy_old, (time.time() - 7200, time.time() - 7200))
    live = writer_tmp(key_dir / "train-0-eval.f16")  # a writer of this process, still writing
    live.write_bytes(b"x")

    logs: list[str] = []
    up = _upstream(torch.get_num_threads())
    ds = _cache(tmp_path / "cache", up, logs.append).dataset(get_task("folder").read(root), "test",
                                                             up.sample_rate, False, 0)
    assert not orphan.exists() and not legacy_old.exists() and legacy_new.exists() and live.exists()
    assert any(m.startswith(f"removed 2 temporary file(s) left by interrupted writers in {key_dir}")
               for m in logs)
    assert FeatureCache.read_meta(ds.shard) is not None and len(_features(ds)) == 6


def test_remove_stale_tmps_by_writer_and_age(tmp_path):
    mine = writer_tmp(tmp_path / "a.f16")
    dead = tmp_path / mine.name.replace(f".{os.getpid()}.", f".{DEAD_PID}.")
    elsewhere_fresh = tmp_path / dead.name.replace(f".{cache_files._HOST}.", ".elsewhere.")
    elsewhere_old = tmp_path / ("b" + elsewhere_fresh.name)
    for p in (mine, dead, elsewhere_fresh, elsewhere_old):
        p.write_bytes(b"x" * 10)
    old = time.time() - cache_files.STALE_AFTER_S - 60
    os.utime(elsewhere_old, (old, old))
    (tmp_path / "kept.npy").write_bytes(b"x")
    assert remove_stale_tmps(tmp_path) == 20  # bytes freed: the dead writer's and the long-idle one
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, elsewhere_fresh.name, "kept.npy"])


def test_only_errors_writing_the_cache_folder_count_as_a_read_only_cache(tmp_path):
    folder = tmp_path / "cache" / "key"
    assert cache_files.cannot_write(PermissionError(13, "Permission denied", str(folder / "x.lock")), folder)
    assert cache_files.cannot_write(PermissionError(13, "Permission denied", str(tmp_path)), folder)  # mkdir
    assert cache_files.cannot_write(OSError(errno.EROFS, "Read-only file system", str(folder / "a.tmp")),
                                    folder)
    assert not cache_files.cannot_write(PermissionError(13, "Permission denied", "/data/clip.wav"), folder)
    assert not cache_files.cannot_write(OSError(errno.ENOSPC, "No space left", str(folder / "a.tmp")), folder)


# ------------------------------------------------------------------------------------------ fbank cache
@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("clips")
    return [str(write_tone(root / f"c{i}.wav", 0.3 + 0.1 * i, seed=i)) for i in range(6)]


def _fbank_child(root: str, files: list[str], barrier) -> None:
    torch.set_num_threads(1)
    barrier.wait()
    build_cache(root, files, FE)


def _frames(root: Path, index: dict, path: str) -> np.ndarray:
    e = index["files"][path]
    return np.load(root / f"shard-{e['shard']:05d}.npy")[e["offset"]:e["offset"] + e["frames"]]


@pytest.mark.slow
def test_two_fbank_writers_at_once_keep_each_others_files(clips, tmp_path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    root = tmp_path / "cache"
    procs = [ctx.Process(target=_fbank_child,
                         args=(str(root), part, barrier)) for part in (clips[:3], clips[3:])]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    index = json.loads((root / "index.json").read_text())
    assert sorted(index["files"]) == sorted(clips)  # neither writer lost the other's entries
    assert sorted(index["shards"]) == ["shard-00000.npy", "shard-00001.npy"]  # one shard each, never shared
    assert sorted({e["shard"] for e in index["files"].values()}) == [0, 1]
    fresh = build_cache(tmp_path / "fresh", clips, FE)
    for f in clips:
        np.testing.assert_array_equal(_frames(root, index, f), _frames(tmp_path / "fresh", fresh, f))
    assert not list(root.glob("*.tmp"))


def test_a_damaged_fbank_shard_is_recomputed_and_a_complete_cache_is_only_read(clips, tmp_path, monkeypatch,
                                                                              caplog):
    root = tmp_path / "cache"
    index = build_cache(root, clips, FE)
    good = {f: _frames(root, index, f) for f in clips}
    shard = root / "shard-00000.npy"

    def read_only(lock, waiting=None):
        raise PermissionError(13, "Permission denied", str(lock))

    monkeypatch.setattr(fbank_cache, "locked", read_only)
    assert build_cache(root, clips, FE) == index  # complete and intact: no lock, nothing written
    _flip_middle(shard)
    with pytest.raises(DataError, match=f"fbank cache {root} needs an update .* cannot be written "
                                        r"\(Permission denied: .*index.lock\)"):
        build_cache(root, clips, FE)
    monkeypatch.undo()

    with caplog.at_level(logging.WARNING):
        index = build_cache(root, clips, FE)
    assert (f"fbank cache shard {shard} does not match its checksum (damaged or changed): "
            "recomputing its 6 files") in caplog.text
    assert not shard.exists() and sorted(index["shards"]) == ["shard-00001.npy"]  # a number is never reused
    for f in clips:
        np.testing.assert_array_equal(_frames(root, index, f), good[f])


def test_a_version_1_fbank_cache_is_upgraded(clips, tmp_path, caplog):
    root = tmp_path / "cache"
    build_cache(root, clips[:2], FE)
    index = json.loads((root / "index.json").read_text())
    # no checksums, no next_shard
    v1 = {k: index[k] for k in ("format", "frontend", "files")} | {"version": 1}
    (root / "index.json").write_text(json.dumps(v1))
    with caplog.at_level(logging.WARNING):
        index = build_cache(root, clips[:3], FE)
    assert "shard-00000.npy has no recorded checksum (written by an older version): recomputing its 2 files" \
        in caplog.text
    assert index["version"] == 2 and sorted(index["files"]) == sorted(clips[:3])
    assert {e["shard"] for e in index["files"].values()} == {1}
    newer = index | {"version": 3}
    (root / "index.json").write_text(json.dumps(newer))
    with pytest.raises(DataError, match=f"fbank cache {root} was written by a newer version"):
        build_cache(root, clips[:3], FE)
