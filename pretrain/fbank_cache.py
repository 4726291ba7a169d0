"""Optional precomputed-fbank cache for pretraining: decode and transform every file once, then train on
random crops read from memory-mapped shards (``-o data.fbank_cache=DIR``, ``run_pretrain.py --fbank-cache``).

Layout of ``DIR``::

    index.json           {"format", "version", "frontend": FbankConfig as a dict, "next_shard": int,
                          "shards": {name: {"checksum", "bytes"}}, "files": {path: entry}}
    index.lock           held (``flock``) by the process updating the cache
    shard-00000.npy ...  float32 (frames, num_mel_bins): the normalised fbank of many files, end to end

An entry is ``{"size", "mtime_ns", "shard", "offset", "frames"}`` (rows ``offset:offset+frames`` of the
shard) or ``{"size", "mtime_ns", "bad": reason}`` for a file that cannot be used. A file whose size or
mtime changed, or that is new, is computed again into a new shard. A cache built with another front end is
refused (``DataError``), never mixed.

Several runs may share the cache (see ``common.files``): an update holds ``index.lock``, re-reads
the index under it and adds its files to what is there (no writer loses another's entries; a second run
needing the same files waits and finds them computed); shards and the index are written to temporary names
unique to the writer and renamed, the index last, so an interrupted build leaves the previous cache intact and
its temporary files are removed by the next update. Each shard's sha256, computed while it is written, is in
the index; the shards a run uses are verified when it opens the cache (~0.3 s per 512 MiB shard), and a shard
that does not match (or has no checksum: written by an older version) is deleted and its files recomputed,
with a warning naming it, or refused (``DataError``) where the cache cannot be written.

What differs from the waveform path (``UnlabeledAudio`` + ``Fbank`` on the device): the fbank is that of
the whole file (mean removal over the whole file, not per crop), crops are cut in frames, ASiT's circular
roll shifts frames, and clips shorter than the crop are padded as the front end pads its target length
(``data.pad_to_crop`` zero-pads waveforms, which is not reproduced). When no crop is needed (every clip no
longer than the crop) and nothing is rolled, both paths give the same features.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from common.distributed import DistContext
from common.files import (
    HashingWriter,
    cannot_write,
    file_checksum,
    locked,
    remove_stale_tmps,
    tmp_path,
    write_atomic,
)
from upstream.frontend import AudioError, Fbank, FbankConfig, load_audio
from upstream.kaldi import num_frames

from .config import PretrainConfig
from .data import DataError

log = logging.getLogger(__name__)
FORMAT, VERSION = "astbench-fbank-cache", 2  # 2: shard checksums, "next_shard"
SHARD_FRAMES = 1 << 20  # 1M frames x 128 bins x 4 bytes = 512 MiB per shard at most


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def frontend_key(fe: FbankConfig) -> dict:
    """What the cached features depend on: the front end without its pad/cut length (crops are cut later)."""
    return {**dataclasses.asdict(fe), "target_length": None}


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}.npy"


def build_cache(root: str | os.PathLike, files: Sequence[str], fe: FbankConfig, resample: bool = True,
                min_samples: int = 1, log: logging.Logger | None = None) -> dict:
    """Create or update the cache in ``root`` for ``files``; returns the index.

    Nothing is written (and no lock taken) when every file is cached in intact shards, so a read-only cache
    that is complete can be used.

    Raises:
        DataError: the cache in ``root`` was built with another front end (or by a newer version), or it lacks
            files or has a damaged shard and cannot be written.
    """
    root, key = Path(root), frontend_key(fe)
    log = log or logging.getLogger(__name__)
    verified: dict[str, tuple] = {}  # shard name -> the file identity it was verified with, in this call
    index = _read_index(root, key)
    if index is not None and not _plan(root, index, files, verified)[0]:
        return index
    def waiting() -> None:
        log.info("fbank cache %s: waiting for another process updating it", root)

    try:
        root.mkdir(parents=True, exist_ok=True)
        with locked(root / "index.lock", waiting=waiting):
            # read again under the lock: another process may have added files (or computed ours) meanwhile
            index = _read_index(root, key) or {"format": FORMAT, "version": VERSION, "frontend": key,
                                               "next_shard": 0, "shards": {}, "files": {}}
            todo, damaged = _plan(root, index, files, verified)
            if todo:
                _drop_shards(root, index, damaged, log)
                remove_stale_tmps(root, lambda msg: log.info("fbank cache: %s", msg),
                                  ("*.tmp", "shard-*.tmp.npy"))
                log.info("fbank cache %s: computing %d of %d files", root, len(todo), len(files))
                _compute(root, index, todo, fe, key, resample, min_samples)
                write_atomic(root / "index.json", json.dumps(index))  # last: shards it names exist before
    except OSError as err:
        if cannot_write(err, root):
            raise DataError(_not_writable(root, err)) from None
        raise
    return index


def _not_writable(root: Path, err: OSError) -> str:
    return (f"fbank cache {root} needs an update (new or changed files, or a damaged shard) but cannot be "
            f"written ({err.strerror}: {err.filename}); use a writable directory for data.fbank_cache")


def _read_index(root: Path, key: dict) -> dict | None:
    """The index in ``root`` (upgraded to this version's fields), None if there is none yet."""
    path = root / "index.json"
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"fbank cache index {path} is unreadable ({err}); delete {root} to rebuild it"
                        ) from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{path} is not an astbench fbank cache index; use another directory")
    if int(index.get("version", 0)) > VERSION:
        raise DataError(f"fbank cache {root} was written by a newer version (format version "
                        f"{index['version']} > {VERSION}); use another directory")
    if index.get("frontend") != key:
        diff = sorted(k for k in key if index.get("frontend", {}).get(k) != key[k])
        raise DataError(f"fbank cache {root} was built with another front end (differs in {diff}: "
                        f"{ {k: index.get('frontend', {}).get(k) for k in diff} } there, "
                        f"{ {k: key[k] for k in diff} } for this recipe); use another directory")
    index["version"] = VERSION
    index.setdefault("shards", {})  # version 1 had no checksums: its shards are recomputed (see _plan)
    index.setdefault("next_shard", 0)
    return index


def _plan(root: Path, index: dict, files: Sequence[str], verified: dict[str, tuple]
          ) -> tuple[list[str], dict[str, str]]:
    """(files to compute, {damaged shard name: what is wrong}) for ``files``; verifies the shards they use."""
    entries = index["files"]
    used = sorted({_shard_name(entries[f]["shard"]) for f in files if "shard" in entries.get(f, {})})
    damaged = {}
    for name in used:
        problem = _check_shard(root / name, index["shards"].get(name), verified)
        if problem:
            damaged[name] = problem
    todo = [f for f in files if _needs(entries.get(f), f)
            or ("shard" in entries[f] and _shard_name(entries[f]["shard"]) in damaged)]
    return todo, damaged


def _check_shard(path: Path, record: dict | None, verified: dict[str, tuple]) -> str | None:
    """What is wrong with a shard (None: intact), hashing it once per :func:`build_cache` call."""
    if record is None:
        return "has no recorded checksum (written by an older version)"
    try:
        st = path.stat()
        ident = (st.st_ino, st.st_size, st.st_mtime_ns)
        if verified.get(path.name) == ident:
            return None
        if st.st_size != record["bytes"]:
            return f"holds {st.st_size} bytes, the index says {record['bytes']}"
        if file_checksum(path) != record["checksum"]:
            return "does not match its checksum (damaged or changed)"
    except OSError as err:
        return f"is unreadable ({err.strerror})"
    verified[path.name] = ident
    return None


def _drop_shards(root: Path, index: dict, damaged: dict[str, str], log: logging.Logger) -> None:
    """Forget damaged shards (their files are computed again into new shards) and delete them."""
    for name, problem in damaged.items():
        paths = [f for f, e in index["files"].items() if "shard" in e and _shard_name(e["shard"]) == name]
        log.warning("fbank cache shard %s %s: recomputing its %d files", root / name, problem, len(paths))
        for f in paths:
            del index["files"][f]
        index["shards"].pop(name, None)
        # never reuse its number: a run that read the older index may still open the shard of that name
        index["next_shard"] = max(index["next_shard"], int(re.fullmatch(r"shard-(\d+)\.npy", name)[1]) + 1)
        (root / name).unlink(missing_ok=True)


def _compute(root: Path, index: dict, todo: list[str], fe: FbankConfig, key: dict, resample: bool,
             min_samples: int) -> None:
    """Compute the fbank of ``todo`` into new shards of ``root`` and add them to ``index`` (not written)."""
    fbank = Fbank(FbankConfig(**key))
    on_disk = [int(m[1]) for p in root.glob("shard-*.npy")
               if (m := re.fullmatch(r"shard-(\d+)\.npy", p.name))]
    next_shard = max([index["next_shard"], *(k + 1 for k in on_disk),
                      *(e["shard"] + 1 for e in index["files"].values() if "shard" in e)])
    chunks, rows = [], 0

    def flush() -> None:
        nonlocal chunks, rows, next_shard
        if chunks:
            name = _shard_name(next_shard)
            tmp = tmp_path(root / name)
            try:
                with open(tmp, "wb") as f:
                    out = HashingWriter(f)  # the checksum costs no second read of the shard
                    np.save(out, np.concatenate(chunks))
                os.replace(tmp, root / name)
            finally:
                tmp.unlink(missing_ok=True)
            index["shards"][name] = {"checksum": out.checksum(), "bytes": out.size}
            next_shard, chunks, rows = next_shard + 1, [], 0
            index["next_shard"] = next_shard

    pending: dict[str, dict] = {}
    for path in todo:
        size, mtime = _stat(path)
        try:
            wav, sr = load_audio(path, target_sr=fe.sample_rate if resample else None, downmix=True)
            if sr != fe.sample_rate:
                raise AudioError(f"audio file {path} is at {sr} Hz, not {fe.sample_rate} Hz "
                                 f"(data.resample=false)")
            if wav.numel() < min_samples:
                raise AudioError(f"audio file {path} is too short ({wav.numel()} samples < {min_samples})")
        except (AudioError, OSError, RuntimeError, ValueError) as err:
            pending[path] = {"size": size, "mtime_ns": mtime, "bad": str(err)}
            continue
        with torch.no_grad():
            feats = fbank(wav[None])[0][0].numpy()  # (T, F) normalised, the whole file
        if rows + len(feats) > SHARD_FRAMES:
            flush()
        pending[path] = {"size": size, "mtime_ns": mtime, "shard": next_shard, "offset": rows,
                         "frames": len(feats)}
        chunks.append(feats.astype(np.float32))
        rows += len(feats)
    flush()
    index["files"].update(pending)


def _needs(entry: dict | None, path: str) -> bool:
    if entry is None:
        return True
    try:
        return (entry["size"], entry["mtime_ns"]) != _stat(path)
    except OSError:
        return "bad" not in entry


def pad_value(fe: FbankConfig) -> float:
    """What the front end puts in rows past a clip's end: normalised zeros when it pads then normalises."""
    if fe.norm_mean is not None and fe.pad_then_normalise and fe.target_length is not None:
        return -fe.norm_mean / (2.0 * fe.norm_std)
    return 0.0


class CachedFbank(Dataset):
    """Like :class:`~pretrain.data.UnlabeledAudio`, but views are fbank crops ``(T, F)`` from the cache.

    Keys, the replacement of unusable files and the per-position random draws follow ``UnlabeledAudio``.
    """

    def __init__(self, root: str | os.PathLike, index: dict, files: Sequence[str], fe: FbankConfig,
                 crop_secs: float | None, num_views: int, seed: int, roll_prob: float = 0.0):
        self.root, self.files, self.seed, self.num_views = Path(root), list(files), seed, num_views
        self.entries = [index["files"][f] for f in self.files]
        self.roll_prob = roll_prob
        crop = None if crop_secs is None else round(crop_secs * fe.sample_rate)
        self.crop = None if crop is None else int(num_frames(crop, fe.frame_length_ms, fe.frame_shift_ms,
                                                             fe.sample_rate))
        self._shards: dict[int, np.ndarray] = {}  # opened lazily, in each worker process

    def __len__(self) -> int:
        return len(self.files)

    def _frames(self, entry: dict) -> np.ndarray:
        k = entry["shard"]
        if k not in self._shards:
            self._shards[k] = np.load(self.root / f"shard-{k:05d}.npy", mmap_mode="r")
        return self._shards[k][entry["offset"]:entry["offset"] + entry["frames"]]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        position, index = key
        bad = []
        for attempt in range(len(self.files)):
            i = (index + attempt) % len(self.files)
            if "bad" not in self.entries[i]:
                break
            bad.append((self.files[i], self.entries[i]["bad"]))
        else:
            raise DataError(f"none of the {len(self.files)} audio files could be used, e.g. {bad[0][1]}")
        feats = self._frames(self.entries[i])  # (T, F), memory-mapped
        rng = np.random.default_rng([self.seed, 1, position])  # as UnlabeledAudio
        if self.roll_prob > 0 and rng.random() < self.roll_prob:
            feats = np.roll(feats, int(rng.integers(0, len(feats) + 1)), axis=0)
        views = []
        for _ in range(self.num_views):
            if self.crop is not None and len(feats) > self.crop:
                start = int(rng.integers(0, len(feats) - self.crop + 1))
                views.append(torch.from_numpy(np.array(feats[start:start + self.crop])))
            else:
                views.append(torch.from_numpy(np.array(feats)))
        return {"views": views, "bad": bad}


def collate_fbank(items: list[dict], pad: float = 0.0, target_length: int | None = None
                  ) -> tuple[Tensor, Tensor, list]:
    """-> fbank (B, V, T, F) padded with ``pad`` (to ``target_length`` when set, cut beyond it), frame
    counts (B, V), [(bad path, reason), ...]."""
    lengths = torch.tensor([[v.shape[0] for v in it["views"]] for it in items], dtype=torch.long)  # (B, V)
    if target_length is not None:
        lengths = lengths.clamp(max=target_length)
    T = target_length if target_length is not None else int(lengths.max())
    F = items[0]["views"][0].shape[1]
    feats = torch.full((*lengths.shape, T, F), pad, dtype=torch.float32)
    for b, it in enumerate(items):
        for v, view in enumerate(it["views"]):
            feats[b, v, : lengths[b, v]] = view[: lengths[b, v]]
    return feats, lengths, [x for it in items for x in it["bad"]]


def cached_dataset(cfg: PretrainConfig, files: list[str], fe: FbankConfig, raw: nn.Module, min_samples: int,
                   ctx: DistContext) -> tuple[Dataset, Callable]:
    """The dataset of a run with ``data.fbank_cache`` and its collate function; rank 0 builds or updates the
    cache first (the other ranks wait for it)."""
    root = Path(cfg.data.fbank_cache)
    if ctx.is_main:
        min_samples = max(min_samples, math.ceil(cfg.data.min_secs * fe.sample_rate))
        build_cache(root, files, fe, cfg.data.resample, min_samples, log)
    ctx.barrier()  # the other ranks read the index rank 0 wrote
    index = json.loads((root / "index.json").read_text(encoding="utf-8"))
    if cfg.data.pad_to_crop and ctx.is_main:
        log.warning("data.pad_to_crop is not reproduced by the fbank cache: short clips are padded as the "
                    "front end pads its target length")
    dataset = CachedFbank(root, index, files, fe, raw.crop_secs, raw.num_views, cfg.seed, cfg.data.roll_prob)
    return dataset, functools.partial(collate_fbank, pad=pad_value(fe), target_length=fe.target_length)
