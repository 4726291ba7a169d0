"""On-disk cache of frozen upstream features: a frozen probe runs the upstream once per clip, not per epoch.

A frozen probe (no ``-f``) sees the same features every epoch: the upstream is in ``.eval()`` with no grad and
the s3prl probes apply no augmentation (``AugmentConfig`` is refused without ``-f``). The only per-epoch input
change is a random training crop (``Clip.random_crop``: SID's 8 s crops, KS1's ``_silence_`` crops); those
clips are never cached and go through the upstream live, so a cached run trains on what an uncached one does.

Layout (``<cache_dir>`` = ``--cache-dir``, else ``$ASTBENCH_CACHE``, else ``~/.cache/astbench/features``)::

    <cache_dir>/<key>/key.json                     what the key hashes (upstream, weights, overrides, ...)
    <cache_dir>/<key>/<split>-<clips>.f16          (sum of frames, L, H) float16, raw, memory-mapped
    <cache_dir>/<key>/<split>-<clips>.offsets.npy  (N + 1,) int64 row offsets; clip i = rows [o[i], o[i+1])
    <cache_dir>/<key>/<split>-<clips>.json         shapes, live clips, a content checksum; written last

A task whose clips are all whole (no crop) keeps ONE shard of all its distinct clips, named ``all-<clips>``,
which every split and every fold reads (ESC-50's and IEMOCAP's five folds compute each clip once, not five
times); a task with cropped clips keeps a shard per split, named by the split.

``<key>`` hashes the upstream name, its weights (its checkpoint's sha256, or the sha256 of its state_dict
tensors plus the seed for a random-init or plug-in upstream), the upstream overrides, the feature selection
and what the upstream's public ``upstream.interface.feature_fingerprint`` says its features depend on (its
config and the source code that computes them); ``<clips>`` hashes each clip's path, size, mtime, crop and
gain (plus the seed when evaluation crops are drawn from it). Any change gives a new file name.

Stored features, float16 (half the space of float32; the probe's logits move by ~1e-3 relative):

* ``hidden_states``: every layer's frame features ``(T, L, H)``, since the weighted sum needs them all and the
  utterance head projects frames before it pools; ``-l k`` runs share it. ``L * H * 2`` bytes per frame:
  SSAST patch base 12 x 9216 x 2 = 221 KB per frame (2.2 MB per second at 10 frames/s), frame base 12 x 768
  x 2 = 18 KB per frame (1.8 MB per second at 100 frames/s).
* ``last_hidden_state``: ``(T, 1, H)``; ``clip`` (the PSLA head's pooled token): ``(1, 1, D)``.

Several processes may share a cache (two probes of one upstream at once, DDP ranks, a suite's jobs), so
(see ``common.files``):

* each writer writes to temporary files of its own (``<file>.<host>.<pid>.<random>.tmp``), renamed into place
  (``os.replace``), the metadata JSON last: an interrupted build leaves no metadata and is rebuilt, and the
  temporary files of a writer that died are removed by the next build in the folder;
* a build holds an ``flock`` on ``<split>-<clips>.lock``: a second process asking for the same shard waits,
  then reads the finished shard instead of computing it again;
* the metadata holds the sha256 of the whole ``.f16`` and ``.offsets.npy`` files, computed while they are
  written; a shard is verified when it is first opened in a process (one sha256 pass over it, see
  :meth:`FeatureCache.check_shard`), and one whose sizes or checksum disagree is rebuilt with a warning naming
  the file, or refused (:class:`FeatureCacheError`) where the cache cannot be written.

Features are computed in the split's order (longest first once ``datasets.prepare_task`` ran), in batches of
at most ``batch_size`` clips whose padding follows the clips' own lengths (``batching.length_batches``);
upstreams whose valid frames depend on the batch's padding (MAE-AST with ``partial_patch_valid``) give the
features of that batching.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.files import (
    HashingWriter,
    cannot_write,
    file_checksum,
    locked,
    remove_stale_tmps,
    tmp_path,
    write_atomic,
)
from upstream.interface import feature_fingerprint, run_upstream

from .batching import length_batches
from .datasets import ClipDataset, TaskData, collate
from .progress import progress

CACHE_ENV = "ASTBENCH_CACHE"
CACHE_VERSION = 1  # bump when the stored layout or the meaning of a selection changes
SELECTIONS = ("hidden_states", "last_hidden_state", "clip")
_DATA_FILES = (".f16", ".offsets.npy")  # checksummed in the metadata (``"checksums"``)


class FeatureCacheError(ValueError):
    """A shard that is damaged or missing where the cache cannot be (re)built (read-only folder or
    ``build=False``); a ValueError, so the CLI reports it on one line (exit 2)."""


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "astbench" / "features").expanduser()


# ------------------------------------------------------------------------------------------ keys
def _sha256_tensors(state: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(up: nn.Module, name: str, overrides: dict, selection: str, seed: int) -> tuple[str, dict]:
    """(hex key, the JSON-able description it hashes) for ``up``'s ``selection`` features."""
    if selection not in SELECTIONS:
        raise ValueError(f"feature selection must be one of {SELECTIONS}, got {selection!r}")
    fp = feature_fingerprint(up)  # the upstream says what its features depend on
    if fp.checkpoint_sha256:
        weights = {"checkpoint_sha256": fp.checkpoint_sha256}
    else:
        weights = {"state_sha256": _sha256_tensors(up.state_dict()), "seed": seed}
    desc = {
        "version": CACHE_VERSION, "upstream": name, "weights": weights,
        "overrides": {k: overrides[k] for k in sorted(overrides)},
        "upstream_config": fp.config, "selection": selection, "code": fp.code,
    }
    blob = json.dumps(desc, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32], desc


def _clip_identity(clip) -> tuple:
    """What a clip's cached features depend on besides the upstream: its file, crop and gain."""
    return (str(clip.path), clip.crop_secs, clip.random_crop, clip.gain_db)


def _whole_clip_pool(data: TaskData, sample_rate: int) -> ClipDataset | None:
    """Every distinct clip of every split of ``data``, longest first (then by path), as one evaluation
    dataset; None when a clip is cropped (its audio may depend on the split, the seed or the epoch).

    ESC-50's and IEMOCAP's folds are the same clips split five ways, so the folds of one upstream share one
    shard: each clip's features are computed once per task, not once per fold. Batches follow the pool's
    order, the same for every fold, so a clip's features do not depend on the fold it is scored in.
    """
    seen: dict[tuple, object] = {}
    for clips in data.splits.values():
        for clip in clips:
            if clip.crop_secs is not None:
                return None
            seen.setdefault(_clip_identity(clip), clip)
    ordered = sorted(seen.values(), key=lambda c: (-(c.loaded_secs or 0.0), str(c.path)))
    return ClipDataset(ordered, sample_rate, data.classes, multilabel=data.multilabel, train=False)


def _clips_digest(ds: ClipDataset) -> str:
    h = hashlib.sha256()
    seeded = any(c.random_crop for c in ds.clips) and not ds.train
    h.update(json.dumps({"sr": ds.sample_rate, "seed": ds.seed if seeded else None}).encode())
    for c in ds.clips:
        try:
            st = c.path.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        h.update(json.dumps([str(c.path), size, mtime, c.crop_secs, c.random_crop, c.gain_db]).encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------ batches
@dataclass
class FeatureBatch:
    """A batch of cached features, plus the clips that must go through the upstream (random crops).

    Attributes:
        feats: (B, T, L, H) float16, rows past ``lengths[b]`` are 0.
        lengths: (B,) valid rows.
        live: ``[(row, wav)]`` clips whose features are computed now; their ``feats`` rows are 0.
    """

    feats: torch.Tensor
    lengths: torch.Tensor
    live: list = field(default_factory=list)

    def to(self, device: torch.device) -> FeatureBatch:
        return FeatureBatch(self.feats.to(device, non_blocking=True), self.lengths.to(device),
                            [(i, w.to(device)) for i, w in self.live])

    def __len__(self) -> int:
        return len(self.lengths)


def collate_features(batch: Sequence[tuple]) -> tuple[FeatureBatch, torch.Tensor, list[str]]:
    """Items of :class:`CachedDataset` -> ``(FeatureBatch, labels, uids)``; labels as :func:`collate`."""
    items, labels, uids = zip(*batch, strict=True)
    shape = next((x.shape[1:] for x in items if x.dim() == 3), None)
    if shape is None:  # every clip is live: the shape comes from the upstream
        shape = (1, 1)
    T = max((x.shape[0] for x in items if x.dim() == 3), default=0)
    feats = torch.zeros(len(items), max(T, 1), *shape, dtype=torch.float16)
    lengths = torch.zeros(len(items), dtype=torch.long)
    live = []
    for i, x in enumerate(items):
        if x.dim() == 3:
            feats[i, : x.shape[0]] = x
            lengths[i] = x.shape[0]
        else:
            live.append((i, x))
    _, label_tensor, _ = collate([(torch.zeros(1), lab, u) for lab, u in zip(labels, uids)])
    return FeatureBatch(feats, lengths, live), label_tensor, list(uids)


class CachedDataset(Dataset):
    """A :class:`ClipDataset` whose cached clips are read from a shard: item = ``(feats (T, L, H) f16 or wav
    (S,), label, uid)``; a live clip (random training crop) is loaded as audio."""

    def __init__(self, ds: ClipDataset, shard: Path, meta: dict, rows: Sequence[int] | None = None):
        self.ds, self.shard, self.meta = ds, shard, meta
        self.live = set(meta["live"])
        # clip i of ds is clip rows[i] of the shard (a task's shared shard); None: the shard is ds's own
        self.rows = None if rows is None else list(rows)
        self._feats = self._offsets = None  # opened lazily, once per worker process

    def __len__(self) -> int:
        return len(self.ds)

    def _open(self):
        if self._feats is None:
            self._offsets = np.load(self.shard.with_suffix(".offsets.npy"))
            self._feats = np.memmap(self.shard.with_suffix(".f16"), dtype=np.float16, mode="r",
                                    shape=tuple(self.meta["shape"]))
        return self._feats, self._offsets

    def __getitem__(self, index: int):
        if index in self.live:
            return self.ds[index]
        feats, offsets = self._open()
        at = index if self.rows is None else self.rows[index]
        rows = torch.from_numpy(np.array(feats[offsets[at]: offsets[at + 1]]))  # (T, L, H)
        _, label, uid = self._label(index)
        return rows, label, uid

    def _label(self, index: int):
        clip = self.ds.clips[index]
        if self.ds.multilabel:
            label = torch.zeros(len(self.ds.classes), dtype=torch.float32)
            label[clip.label] = 1.0
        else:
            label = int(clip.label)
        return None, label, clip.uid


# ------------------------------------------------------------------------------------------ the cache
def select_features(out: dict, selection: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream output -> ``((B, T, L, H), lengths (B,))`` for ``selection``."""
    if selection == "hidden_states":
        return torch.stack(out["hidden_states"], 2), out["lengths"]
    if selection == "last_hidden_state":
        return out["last_hidden_state"][:, :, None], out["lengths"]
    clip = out["clip"][:, None, None]  # (B, 1, 1, D)
    return clip, torch.ones(len(clip), dtype=torch.long, device=clip.device)


class FeatureCache:
    """Builds and opens the cached shards of one (upstream, weights, overrides, selection).

    Args:
        root: cache folder (``default_cache_dir()``).
        up: the frozen upstream, on ``device``.
        name: upstream name as given to ``-u``.
        overrides: ``upstream_overrides`` it was built with.
        selection: one of ``SELECTIONS``.
        seed: the run seed (part of the key for random-init weights).
        batch_size: clips per upstream call while building.
        device: where the upstream runs.
        log: progress messages and warnings.
    """

    def __init__(self, root: str | Path, up: nn.Module, name: str, overrides: dict, selection: str, seed: int,
                 batch_size: int, device: torch.device, log: Callable[[str], None] = print):
        self.key, self.desc = cache_key(up, name, overrides, selection, seed)
        self.dir = Path(root).expanduser() / self.key
        self.up, self.selection, self.batch_size = up, selection, batch_size
        self.device, self.log = device, log
        # shard -> file identities it was verified with: the runner reopens dev at every evaluation
        self._verified: dict[Path, tuple] = {}

    def dataset(self, data: TaskData, split: str, sample_rate: int, train: bool, seed: int,
                build: bool = True) -> CachedDataset:
        """The split as a :class:`CachedDataset`, building (or rebuilding) its shard when needed.

        Raises:
            FeatureCacheError: the shard is damaged, or missing, and ``build`` is False or the folder is
                read-only.
        """
        ds = data.dataset(split, sample_rate, train=train, seed=seed)
        pool = _whole_clip_pool(data, sample_rate)
        if pool is not None:  # every split of the task reads the one shard of all its clips
            shard = self.dir / f"all-{_clips_digest(pool)}-eval"
            meta = self._shard_meta(shard, lambda: pool, set(), build)
            index = {_clip_identity(c): i for i, c in enumerate(pool.clips)}
            return CachedDataset(ds, shard, meta, [index[_clip_identity(c)] for c in ds.clips])
        live = [i for i, c in enumerate(ds.clips) if c.random_crop and c.crop_secs is not None and train]
        shard = self.dir / f"{split}-{_clips_digest(ds)}-{'train' if live else 'eval'}"
        # built from the split's whole clips (no random crops); the live ones are left out of the shard
        meta = self._shard_meta(shard, lambda: data.dataset(split, sample_rate, train=False, seed=seed),
                                set(live), build)
        return CachedDataset(ds, shard, meta)

    def _shard_meta(self, shard: Path, clips: Callable[[], ClipDataset], live: set[int], build: bool) -> dict:
        """The metadata of ``shard``: opened (and verified), else built from ``clips()`` unless ``build`` is
        False (then :class:`FeatureCacheError`)."""
        meta, problem = self._open(shard)
        if meta is None:
            if not build:
                what = problem or f"shard {shard} is missing or incomplete"
                raise FeatureCacheError(f"feature cache: {what} (not rebuilt: build=False)")
            meta = self._build_once(clips(), shard, live)
        return meta

    @staticmethod
    def check_shard(shard: Path) -> tuple[dict | None, str | None]:
        """``(metadata, None)`` if the shard is complete and intact, ``(None, None)`` if it has no metadata
        (never built, or interrupted), else ``(None, what is wrong, naming the file)``.

        Hashes the whole files: 1.6 GB/s on one core with SHA extensions (0.4-0.5 GB/s without). For
        ``ssast_patch_400``'s 2 MB of ``hidden_states`` per second of audio that is 1.3-2.3 ms per audio
        second (measured on a loaded 2-core x86-64), about what decoding that second of WAV takes (1.7 ms) and
        ~1/300 of computing the features on that CPU (680 ms).
        """
        meta_path, data, offsets_path = (shard.with_suffix(s) for s in (".json", ".f16", ".offsets.npy"))
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as err:
            return None, f"{meta_path} is unreadable ({err})"
        try:
            sums = meta.get("checksums")
            if not isinstance(sums, dict) or set(sums) != set(_DATA_FILES):
                return None, f"{meta_path} has no whole-file checksum (written by an older version)"
            rows, L, H = meta["shape"]
            size = data.stat().st_size
            if size != rows * L * H * 2:
                return None, f"{data} holds {size} bytes, {meta_path.name} says {rows * L * H * 2}"
            for suffix in _DATA_FILES:
                if file_checksum(shard.with_suffix(suffix)) != sums[suffix]:
                    return None, (f"{shard.with_suffix(suffix)} does not match its checksum (damaged or "
                                  f"changed)")
            offsets = np.load(offsets_path)
            ok = (len(offsets) == meta["num_clips"] + 1 and offsets[0] == 0 and offsets[-1] == rows
                  and bool(np.all(np.diff(offsets) >= 0)))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            return None, f"shard {shard} is unreadable ({type(err).__name__}: {err})"
        return (meta, None) if ok else (None, f"{offsets_path} disagrees with {meta_path.name}")

    @staticmethod
    def read_meta(shard: Path) -> dict | None:
        """The shard's metadata if the shard is complete and intact, else None."""
        return FeatureCache.check_shard(shard)[0]

    def _identity(self, shard: Path) -> tuple:
        """What changes when any file of the shard is replaced or written to."""
        out = []
        for suffix in (".json", *_DATA_FILES):
            try:
                st = shard.with_suffix(suffix).stat()
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return tuple(out)

    def _open(self, shard: Path) -> tuple[dict | None, str | None]:
        """:meth:`check_shard`, hashing each shard once per process unless its files change."""
        ident = self._identity(shard)
        if shard in self._verified and self._verified[shard][0] == ident:
            return self._verified[shard][1], None
        meta, problem = self.check_shard(shard)
        if meta is not None:
            self._verified[shard] = (ident, meta)
        return meta, problem

    def _build_once(self, ds: ClipDataset, shard: Path, live: set[int]) -> dict:
        """Build the shard under its lock; a process that had to wait finds it built and reads it."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            waiting = f"feature cache: waiting for another process building {shard}"
            with locked(shard.with_suffix(".lock"), waiting=lambda: self.log(waiting)):
                meta, problem = self._open(shard)  # built, or found damaged, while this process waited
                if meta is not None:
                    return meta
                if problem:
                    self.log(f"warning: feature cache: {problem}; rebuilding shard {shard.name}")
                remove_stale_tmps(self.dir, self.log)
                return self._build(ds, shard, live)
        except OSError as err:
            if cannot_write(err, self.dir):
                raise FeatureCacheError(self._not_writable(shard, err)) from None
            raise

    def _not_writable(self, shard: Path, err: OSError) -> str:
        _, problem = self.check_shard(shard)
        return (f"feature cache: {problem or f'shard {shard} is missing or incomplete'}, and it cannot be "
                f"rebuilt there ({err.strerror}: {err.filename}); use a writable --cache-dir (or "
                f"$ASTBENCH_CACHE)")

    @torch.no_grad()
    def _build(self, ds: ClipDataset, shard: Path, live: set[int]) -> dict:
        write_atomic(self.dir / "key.json", json.dumps(self.desc, indent=1, sort_keys=True, default=str))
        self.log(f"feature cache: computing {shard.name} ({len(ds) - len(live)} clips) under {self.dir}")
        tmp = {s: tmp_path(shard.with_suffix(s)) for s in (*_DATA_FILES, ".json")}
        idx = [i for i in range(len(ds)) if i not in live]
        # consecutive batches in index order (rows are written in that order), sized so that padding follows
        # the clips' own lengths: prepared splits are longest first, so one long clip pads no full batch
        batches = length_batches([c.loaded_secs for c in ds.clips], idx, self.batch_size)
        loader = DataLoader(ds, batch_sampler=batches, collate_fn=collate)
        counts = np.zeros(len(ds), dtype=np.int64)
        shape = None
        sums = {}
        was_training = self.up.training
        self.up.eval()
        pos = 0
        try:
            with open(tmp[".f16"], "wb") as f:
                out = HashingWriter(f)  # the checksum costs no second read of the shard
                for wavs, _, _ in progress(loader, desc=f"features {shard.stem}", unit="batch"):
                    # only what the selection stores: no hidden states for 'last_hidden_state' / 'clip'
                    out_up = run_upstream(self.up, [w.to(self.device) for w in wavs],
                                          None if self.selection == "hidden_states" else [])
                    feats, lengths = select_features(out_up, self.selection)
                    feats = feats.to(torch.float16).cpu()
                    for b in range(len(wavs)):
                        out.write(feats[b, : int(lengths[b])].contiguous().numpy().tobytes())
                        counts[idx[pos]] = int(lengths[b])
                        pos += 1
                    shape = tuple(feats.shape[2:])
                sums[".f16"] = out.checksum()
            if shape is None:  # nothing to cache (every clip live): any shape, zero rows
                shape = (1, 1)
            offsets = np.concatenate([[0], np.cumsum(counts)])
            with open(tmp[".offsets.npy"], "wb") as f:
                out = HashingWriter(f)
                np.save(out, offsets)
                sums[".offsets.npy"] = out.checksum()
            for suffix in _DATA_FILES:
                os.replace(tmp[suffix], shard.with_suffix(suffix))
            meta = {"num_clips": len(ds), "shape": [int(offsets[-1]), *shape], "live": sorted(live),
                    "selection": self.selection, "checksums": sums}
            tmp[".json"].write_text(json.dumps(meta))
            # last: the shard is complete once it is named
            os.replace(tmp[".json"], shard.with_suffix(".json"))
        finally:
            self.up.train(was_training)
            for t in tmp.values():
                t.unlink(missing_ok=True)  # an exception left this writer's part-written files
        self._verified[shard] = (self._identity(shard), meta)
        return meta
