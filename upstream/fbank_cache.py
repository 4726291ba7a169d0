"""Optional precomputed-fbank cache for pretraining: decode and transform every file once, then train on
random crops read from memory-mapped shards (``-o data.fbank_cache=DIR``, ``run_pretrain.py --fbank-cache``).

Layout of ``DIR``::

    index.json           {"format", "version", "frontend": FbankConfig as a dict, "files": {path: entry}}
    shard-00000.npy ...  float32 (frames, num_mel_bins): the normalised fbank of many files, end to end

An entry is ``{"size", "mtime_ns", "shard", "offset", "frames"}`` (rows ``offset:offset+frames`` of the
shard) or ``{"size", "mtime_ns", "bad": reason}`` for a file that cannot be used. A file whose size or
mtime changed, or that is new, is computed again into a new shard; shards and the index are written to a
temporary name and renamed, so an interrupted build leaves the previous cache intact. A cache built with
another front end is refused (``DataError``), never mixed.

What differs from the waveform path (``UnlabeledAudio`` + ``Fbank`` on the device): the fbank is that of
the whole file (mean removal over the whole file, not per crop), crops are cut in frames, ASiT's circular
roll shifts frames, and clips shorter than the crop are padded as the front end pads its target length
(``data.pad_to_crop`` zero-pads waveforms, which is not reproduced). When no crop is needed (every clip no
longer than the crop) and nothing is rolled, both paths give the same features.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .frontend import AudioError, Fbank, FbankConfig, load_audio, num_frames

FORMAT, VERSION = "astbench-fbank-cache", 1
SHARD_FRAMES = 1 << 20  # 1M frames x 128 bins x 4 bytes = 512 MiB per shard at most


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def frontend_key(fe: FbankConfig) -> dict:
    """What the cached features depend on: the front end without its pad/cut length (crops are cut later)."""
    return {**dataclasses.asdict(fe), "target_length": None}


def build_cache(root: str | os.PathLike, files: Sequence[str], fe: FbankConfig, resample: bool = True,
                min_samples: int = 1, log=None) -> dict:
    """Create or update the cache in ``root`` for ``files``; returns the index.

    Raises:
        DataError: the cache in ``root`` was built with another front end.
    """
    from .pretrain import DataError

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    key = frontend_key(fe)
    index = {"format": FORMAT, "version": VERSION, "frontend": key, "files": {}}
    if (root / "index.json").is_file():
        old = json.loads((root / "index.json").read_text(encoding="utf-8"))
        if old.get("format") != FORMAT or old.get("frontend") != key:
            diff = sorted(k for k in key if old.get("frontend", {}).get(k) != key[k])
            raise DataError(f"fbank cache {root} was built with another front end (differs in {diff}: "
                            f"{ {k: old.get('frontend', {}).get(k) for k in diff} } there, "
                            f"{ {k: key[k] for k in diff} } for this recipe); use another directory")
        index = old
    todo = [f for f in files if _needs(index["files"].get(f), f)]
    if not todo:
        return index
    if log:
        log.info("fbank cache %s: computing %d of %d files", root, len(todo), len(files))
    fbank = Fbank(FbankConfig(**key))
    next_shard = 1 + max((e["shard"] for e in index["files"].values() if "shard" in e), default=-1)
    chunks, rows = [], 0

    def flush() -> None:
        nonlocal chunks, rows, next_shard
        if chunks:
            tmp = root / f"shard-{next_shard:05d}.tmp.npy"
            np.save(tmp, np.concatenate(chunks))
            os.replace(tmp, root / f"shard-{next_shard:05d}.npy")
            next_shard, chunks, rows = next_shard + 1, [], 0

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
    tmp = root / "index.json.tmp"
    tmp.write_text(json.dumps(index), encoding="utf-8")
    os.replace(tmp, root / "index.json")  # last: shards it names exist before it names them
    return index


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
    """Like :class:`~upstream.pretrain.UnlabeledAudio`, but views are fbank crops ``(T, F)`` from the cache.

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
        from .pretrain import DataError

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
