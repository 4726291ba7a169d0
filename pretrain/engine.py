"""Pretraining loop for any objective (SSAST, MAE-AST, ASiT, or your own), single device or DDP.

Reference loops: facebookresearch/mae ``engine_pretrain.py`` (per-step schedule, stop on a non-finite loss),
facebookresearch/dino ``main_dino.py`` (cosine lr / weight-decay schedules, EMA teacher after the step),
karpathy/nanoGPT ``train.py`` (the checkpoint carries the config that rebuilds it). The CLI is
``run_pretrain.py``; the recipes are ``configs/pretrain/*.yaml``.

Data flow of one step::

    files --StepBatchSampler--> (position, file) keys --UnlabeledAudio--> views (crop / pad / roll, CPU)
          --collate--> waveforms (B, V, S) + lengths (B, V) --Fbank on device--> (B, [V,] T, F)
          --objective(fbank, num_frames, generator)--> (loss, logs) per micro-batch --> AdamW step

Reproducibility contract (what makes resume and multi-GPU runs exact):

* The data stream is a function of ``(seed, step)`` only. Step ``s`` takes global sample positions
  ``[s*B, (s+1)*B)``; position ``p`` is item ``p % N`` of the seeded permutation of epoch ``p // N``, and its
  crop/roll draws come from a generator seeded with ``(seed, p)``. Resuming therefore skips consumed batches
  exactly, and the sampler position stored in the checkpoint is ``(epoch, index) = divmod(s*B, N)``.
* A step's global batch is cut into ``world_size * grad_accum`` micro-batches of consecutive positions, each
  padded and turned into fbank on its own. The mask generator passed to the objective, and torch's global
  RNG (dropout, layerdrop, drop-path), are re-seeded from ``(seed, step, micro-batch index)`` before each
  micro-batch. A micro-batch's loss thus does not depend on which rank or accumulation slot computes it: a
  2-GPU run with ``grad_accum=1`` reproduces a 1-GPU run with ``grad_accum=2`` (same global batch, same
  micro-batches), batch statistics (MAE-AST's input BatchNorm, batch-shared chunk masks, ASiT's alien
  pasting) included. Runs with different micro-batch counts see the same data but different masks. State an
  objective updates inside ``forward`` (e.g. DINO centres) must be updated once per step, in ``after_step``,
  for this to hold.
* The reported loss of a step is the mean of its micro-batch losses (all-reduced over ranks); the gradient is
  that of this mean. One exception to rank-independence: under DDP, BatchNorm running statistics (used only
  at feature-extraction time) come from rank 0's micro-batches, as DDP broadcasts buffers.
* The host waits for the device only every ``log_every`` steps, at checkpoints and at the end (and at the
  end of each ``plateau_halving`` window): losses and logs stay on the device until then, when one
  all-reduce and one copy bring them, the signal flag and the count of new unusable files back together.
  A non-finite loss is therefore seen up to ``log_every`` steps late; no checkpoint is written after it,
  so the last good checkpoint is kept as before, and the error names the step where it first appeared.
* ``objective.after_step(i, max_steps)`` gets the 0-based index ``i`` of the update just applied (DINO's
  ``it``); ``losses.jsonl`` and checkpoints count completed updates (``step = i + 1``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from common.config import (ConfigError, check_run_dir, config_to_dict, dump_config, ensure_writable_dir,
                              run_dir_lock, temp_path, truncate_jsonl)

from upstream.checkpoint import CheckpointError, save_upstream
from upstream.safe_load import load_checkpoint_file
from upstream.frontend import AudioError, Fbank, FbankConfig, load_audio

__all__ = ["AUDIO_EXTENSIONS", "DataConfig", "DataError", "NonFiniteLossError", "OptimConfig",
           "PretrainConfig", "Schedule", "StepBatchSampler", "UnlabeledAudio", "build_objective",
           "collate_views", "list_audio_files", "pretrain"]

log = logging.getLogger(__name__)
CKPT_FORMAT = "astbench-pretrain"
CKPT_VERSION = 1
# what libsndfile (soundfile) decodes; mp3 needs libsndfile >= 1.1
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".caf",
                    ".w64", ".rf64")


# ============================================================================================ configs
@dataclass
class DataConfig:
    path: str = ""  # folder (searched recursively) or manifest (.jsonl/.csv/.json/.tsv); set by --data
    num_workers: int = 4  # DataLoader worker processes decoding audio (0 = in the main process)
    # Files are resampled (soxr HQ) to the objective front end's rate. False makes a file at another rate
    # count as unusable, like ASiT's loader, which assumed 32 kHz files.
    resample: bool = True
    min_secs: float = 0.0  # shorter clips are skipped and counted (MAE-AST: min_sample_size 32000 = 2 s)
    # Zero-pad short clips' waveforms to the crop length and count the zeros as signal (ASiT's loader);
    # otherwise the front end pads the fbank (SSAST pads to target_length with normalised zeros).
    pad_to_crop: bool = False
    roll_prob: float = 0.0  # chance of a random circular shift of the clip before cropping (ASiT: 0.5)
    # Folder of precomputed fbank shards (pretrain/fbank_cache.py), built on first use: train on crops read
    # from memory-mapped features instead of decoding audio. "" decodes every step.
    fbank_cache: str = ""

    def __post_init__(self):
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if not self.min_secs >= 0:
            raise ValueError(f"min_secs must be >= 0, got {self.min_secs}")
        if not 0 <= self.roll_prob <= 1:
            raise ValueError(f"roll_prob is a probability in [0, 1], got {self.roll_prob}")


@dataclass
class OptimConfig:
    name: Literal["adamw", "adam"] = "adamw"  # 'adam': L2 decay coupled into the gradient (SSAST's Adam)
    lr: float = 1e-4  # peak learning rate, reached at the end of warm-up
    weight_decay: float = 0.05
    weight_decay_end: float | None = None  # cosine from weight_decay to this over max_steps (DINO/ASiT)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0  # warm-up steps before the schedule below
    # 'linear': lr * (step + 1) / warmup_steps, every step; 'step': SSAST's (traintest_mask.py trainmask): the lr
    # is set to lr * step / warmup_steps only every warmup_every steps and kept in between, so 0 for the first ones
    warmup: Literal["linear", "step"] = "linear"
    warmup_every: int = 50  # 'step' warm-up: steps between lr updates (SSAST: global_step % 50 == 0)
    # after warm-up: 'constant'; 'cosine' to min_lr at max_steps; 'polynomial' (fairseq polynomial_decay,
    # power poly_power) to min_lr at max_steps; 'plateau_halving': SSAST's ReduceLROnPlateau, applied to the
    # mean training loss of each plateau_every-step window (SSAST watched a validation masked accuracy)
    schedule: Literal["constant", "cosine", "polynomial", "plateau_halving"] = "cosine"
    min_lr: float = 0.0
    poly_power: float = 1.0
    plateau_every: int = 4000  # SSAST epoch_iter
    plateau_patience: int = 2  # windows without improvement before the lr is multiplied by plateau_factor
    plateau_factor: float = 0.5
    clip_grad: float | None = None  # max grad norm; None or 0 = no clipping
    # 'global': one norm over every gradient (torch clip_grad_norm_, fairseq clip_norm: MAE-AST); 'per_parameter':
    # each parameter's gradient clipped to clip_grad on its own (DINO utils.clip_gradients: ASiT)
    clip_mode: Literal["global", "per_parameter"] = "global"

    def __post_init__(self):
        # `not x > 0` rather than `x <= 0`: NaN fails too
        for name in ("lr", "eps", "poly_power", "plateau_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "min_lr", "warmup_steps", "plateau_patience"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.weight_decay_end is not None and not self.weight_decay_end >= 0:
            raise ValueError(f"weight_decay_end must be >= 0 or null, got {self.weight_decay_end}")
        if self.clip_grad is not None and not self.clip_grad >= 0:
            raise ValueError(f"clip_grad must be >= 0 or null (0 or null: no clipping), got {self.clip_grad}")
        if self.plateau_every <= 0:
            raise ValueError(f"plateau_every must be > 0, got {self.plateau_every}")
        if self.warmup_every <= 0:
            raise ValueError(f"warmup_every must be > 0, got {self.warmup_every}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must each lie in [0, 1), got {list(self.betas)}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")


@dataclass
class PretrainConfig:
    # passed to the family's build_objective; 'family' picks it: ssast | mae_ast | asit | "pkg.module:fn"
    objective: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 8  # global clips per optimizer step, over all ranks and accumulation slots
    grad_accum: int = 1  # micro-batches per rank per step (see the module docstring)
    max_steps: int = 1000  # optimizer steps of the whole run; the lr / wd schedules end here
    # tensorboard / log-line interval, and how often the host waits for the device (losses.jsonl still
    # gets every step, written at those points)
    log_every: int = 10
    ckpt_every: int = 1000
    # with a probe (run_pretrain.py --probe TASK): score the encoder at step 0 and every this many steps
    probe_every: int = 100
    seed: int = 0
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile the objective
    device: str | None = None  # 'cuda' | 'cpu' | None (CUDA when available)
    find_unused_parameters: bool = False  # DDP: needed when a step may skip parameters (layerdrop)
    tensorboard: bool = True
    out_dir: str = "exp/pretrain/default"

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "max_steps", "log_every", "ckpt_every", "probe_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:  # numpy's seed range
            raise ValueError(f"seed must lie in 0..2**32-1, got {self.seed}")


# Keys a resumed run may change: where things are, how they are logged or loaded (the data order and masks are
# functions of (seed, step), not of these). grad_accum changes the masks and is warned about.
RESUMABLE_CHANGES = ("out_dir", "device", "data.path", "data.num_workers", "data.fbank_cache", "log_every",
                     "ckpt_every", "tensorboard", "compile", "find_unused_parameters", "grad_accum", "probe_every")


class DataError(ValueError):
    """Pretraining data that cannot be used: the message names the path."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint (if any) is left as it was."""

    def __init__(self, step: int, value: float, out_dir: str, kept_step: int | None = None):
        self.step, self.kept_step = step, kept_step
        if kept_step is None:
            kept = (f"No checkpoint exists yet in {out_dir} (none was due before step {step}): lower optim.lr or "
                    f"fix the data and start the run again")
        else:
            kept = (f"{Path(out_dir) / 'last.ckpt'} of step {kept_step}, the last one saved before the loss "
                    f"became non-finite, was kept: continue from it with --resume --allow-config-change "
                    f"-o optim.lr=LOWER (or after fixing the data)")
        super().__init__(f"non-finite loss {value} at step {step}; stopping. {kept}")


def build_objective(cfg: Mapping) -> nn.Module:
    """Build the objective named by ``cfg['family']``; the family's builder checks the other keys.

    The result follows :class:`upstream.objective.Objective`: ``family``, ``num_views`` (1, or 2 for ASiT),
    ``frontend`` (:class:`FbankConfig`, sample rate included), ``crop_secs`` (None = whole clips),
    ``forward(fbank (B, [V,] T, F), num_frames (B, [V]), generator) -> (loss, {name: scalar})``,
    ``after_step(i, total_steps)``, ``param_groups(weight_decay)`` and ``to_upstream()``.
    """
    from upstream import asit, mae_ast, ssast
    from upstream.registry import resolve_builder

    family = cfg.get("family")
    families = {"ssast": ssast, "mae_ast": mae_ast, "asit": asit}
    if family in families:
        builder = getattr(families[family], "build_objective", None)
        if builder is None:
            raise ConfigError(f"upstream.{family} has no build_objective(); this objective is not available")
    elif isinstance(family, str) and ":" in family:
        builder = resolve_builder(family)
    else:
        raise ConfigError(f"objective.family must be one of {sorted(families)} or 'package.module:builder', "
                          f"got {family!r}")
    try:
        return builder(dict(cfg))
    except (TypeError, ValueError) as err:  # unknown or invalid objective keys, named by the family
        raise ConfigError(f"objective: {err}") from err


# ============================================================================================ data
def _read_manifest(path: Path) -> list[tuple[str, float | None]]:
    """(audio path, duration or None) rows; relative paths resolve against the manifest's folder."""
    suffix, rows = path.suffix.lower(), []
    text = path.read_text(encoding="utf-8")
    if suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    rows.append((row.get("path") or row["wav"], row.get("duration")))
                except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
                    raise DataError(f"manifest {path} line {n}: expected a JSON object with 'path'") from None
    elif suffix == ".csv":
        import csv

        reader = csv.DictReader(text.splitlines())
        if "path" not in (reader.fieldnames or []):
            raise DataError(f"manifest {path} needs a header with a 'path' column, got {reader.fieldnames}")
        rows = [(r["path"], float(r["duration"]) if r.get("duration") else None) for r in reader]
    elif suffix == ".json":  # SSAST / ASiT datafile {"data": [{"wav": ...}, ...]}
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise DataError(f"manifest {path}: expected {{'data': [{{'wav': ...}}, ...]}} (SSAST datafile)")
        rows = [(r["wav"], None) for r in data["data"]]
    elif suffix == ".tsv":  # fairseq (MAE-AST): root folder, then 'relative/path<TAB>num_samples' lines
        lines = [ln for ln in text.splitlines() if ln.strip()]
        root = Path(lines[0].strip()) if lines else path.parent
        root = root if root.is_absolute() else path.parent / root
        rows = [(str(root / ln.split("\t")[0]), None) for ln in lines[1:]]
    else:
        raise DataError(f"data path {path} is a file but not a manifest (.jsonl, .csv, .json or .tsv)")
    return [(p if Path(p).is_absolute() else str(path.parent / p), d) for p, d in rows]


def list_audio_files(path: str | os.PathLike, min_secs: float = 0.0) -> list[str]:
    """Audio files of a folder (recursive, hidden files skipped, sorted) or of a manifest.

    Files are not opened here: unusable ones are found, skipped and counted while training. For millions of
    files on a network disk, a manifest avoids the directory walk.
    """
    if not str(path):
        raise DataError("no pretraining data given: pass --data DIR_OR_MANIFEST (or data.path=...)")
    p = Path(path)
    if not p.exists():
        raise DataError(f"pretraining data path {p} does not exist")
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS
                       and not any(part.startswith(".") for part in f.relative_to(p).parts) and f.is_file())
        if not files:
            raise DataError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found under {p}")
        return files
    rows = _read_manifest(p)
    kept = [f for f, d in rows if d is None or d >= min_secs]
    if len(kept) < len(rows):
        log.info("%d clips of manifest %s are shorter than min_secs=%s and were left out",
                 len(rows) - len(kept), p, min_secs)
    if not kept:
        raise DataError(f"manifest {p} lists no usable audio files")
    return kept


class UnlabeledAudio(Dataset):
    """Clip -> ``num_views`` random crops, keyed by ``(global position, file index)``.

    A file that cannot be used (unreadable, empty, too short, wrong rate without ``resample``) is replaced by
    the next file of the list, deterministically, and reported with the item so the trainer can count it.
    """

    def __init__(self, files: Sequence[str], sample_rate: int, crop_secs: float | None, num_views: int,
                 seed: int, data: DataConfig, min_samples: int = 1):
        self.files, self.sample_rate = list(files), int(sample_rate)
        self.num_views, self.seed = num_views, seed
        self.crop = None if crop_secs is None else round(crop_secs * sample_rate)
        self.cfg = data
        self.min_samples = max(min_samples, math.ceil(data.min_secs * sample_rate))

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, path: str) -> Tensor:
        wav, sr = load_audio(path, target_sr=self.sample_rate if self.cfg.resample else None, downmix=True)
        if sr != self.sample_rate:
            raise AudioError(f"audio file {path} is at {sr} Hz, not {self.sample_rate} Hz "
                             f"(data.resample=false)")
        if wav.numel() < self.min_samples:
            raise AudioError(f"audio file {path} is too short ({wav.numel()} samples < {self.min_samples})")
        return wav

    def __getitem__(self, key: tuple[int, int]) -> dict:
        position, index = key
        bad = []
        for attempt in range(len(self.files)):
            path = self.files[(index + attempt) % len(self.files)]
            try:
                wav = self._load(path)
                break
            except (AudioError, OSError, RuntimeError, ValueError) as err:
                bad.append((path, str(err)))
        else:
            raise DataError(f"none of the {len(self.files)} audio files could be used, e.g. {bad[0][1]}")
        rng = np.random.default_rng([self.seed, 1, position])  # per (seed, epoch, index): resume-exact
        if self.cfg.roll_prob > 0 and rng.random() < self.cfg.roll_prob:  # ASiT dataloader.py
            wav = torch.roll(wav, int(rng.integers(0, wav.numel() + 1)))
        if self.crop is not None and self.cfg.pad_to_crop and wav.numel() < self.crop:
            wav = F.pad(wav, (0, self.crop - wav.numel()))
        views = []
        for _ in range(self.num_views):
            if self.crop is not None and wav.numel() > self.crop:
                start = int(rng.integers(0, wav.numel() - self.crop + 1))
                views.append(wav[start:start + self.crop])
            else:
                views.append(wav)
        return {"views": views, "bad": bad}


def collate_views(items: list[dict]) -> tuple[Tensor, Tensor, list]:
    """-> zero-padded waveforms (B, V, S), lengths (B, V), [(bad path, reason), ...]."""
    lengths = torch.tensor([[v.numel() for v in it["views"]] for it in items], dtype=torch.long)  # (B, V)
    wavs = torch.zeros(*lengths.shape, int(lengths.max()))
    for b, it in enumerate(items):
        for v, view in enumerate(it["views"]):
            wavs[b, v, : view.numel()] = view
    return wavs, lengths, [x for it in items for x in it["bad"]]


class StepBatchSampler(Sampler):
    """This rank's keys for each step in ``[start_step, stop_step)``; see the module docstring."""

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int, stop_step: int,
                 rank: int = 0, world_size: int = 1):
        self.n, self.batch, self.seed = num_items, batch_size, seed
        self.start, self.stop, self.rank = start_step, stop_step, rank
        self.per_rank = batch_size // world_size
        self._perms: dict[int, np.ndarray] = {}

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, index within the epoch) of the first sample of ``step``."""
        return divmod(step * self.batch, self.n)

    def _file(self, position: int) -> int:
        epoch, i = divmod(position, self.n)
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = np.random.default_rng([self.seed, 0, epoch]).permutation(self.n)
        return int(self._perms[epoch][i])

    def __iter__(self):
        for step in range(self.start, self.stop):
            lo = step * self.batch + self.rank * self.per_rank
            yield [(p, self._file(p)) for p in range(lo, lo + self.per_rank)]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


# ============================================================================================ schedules
class Schedule:
    """Learning rate and weight decay per step (0-based index of the update about to be applied)."""

    def __init__(self, cfg: OptimConfig, max_steps: int):
        self.cfg, self.max_steps = cfg, max_steps
        self.scale, self.best, self.bad, self.window = 1.0, math.inf, 0, []  # plateau_halving state

    def _progress(self, step: int) -> float:
        span = max(1, self.max_steps - self.cfg.warmup_steps)
        return min(1.0, max(0.0, (step - self.cfg.warmup_steps) / span))

    def lr(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup_steps:
            if c.warmup == "step":  # SSAST: if global_step <= 1000 and global_step % 50 == 0: lr = step/1000 * lr
                return c.lr * (step - step % c.warmup_every) / c.warmup_steps
            return c.lr * (step + 1) / c.warmup_steps
        p = self._progress(step)
        if c.schedule == "cosine":
            return c.min_lr + (c.lr - c.min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))
        if c.schedule == "polynomial":
            return c.min_lr + (c.lr - c.min_lr) * (1.0 - p) ** c.poly_power
        return c.lr * self.scale  # constant (scale stays 1) or plateau_halving

    def weight_decay(self, step: int) -> float:
        c = self.cfg
        if c.weight_decay_end is None:
            return c.weight_decay
        p = min(1.0, step / max(1, self.max_steps - 1))
        cosine = 0.5 * (1.0 + math.cos(math.pi * p))
        return c.weight_decay_end + (c.weight_decay - c.weight_decay_end) * cosine

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> tuple[float, float]:
        lr, wd = self.lr(step), self.weight_decay(step)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
            g["weight_decay"] = wd * g["wd_scale"]
        return lr, wd

    def observe(self, step: int, loss: float) -> None:
        """Feed the step's loss (plateau_halving only): ReduceLROnPlateau(mode='min', threshold 1e-4 rel)."""
        if self.cfg.schedule != "plateau_halving" or step < self.cfg.warmup_steps:
            return
        self.window.append(loss)
        if len(self.window) < self.cfg.plateau_every:
            return
        mean, self.window = sum(self.window) / len(self.window), []
        if mean < self.best * (1.0 - 1e-4) if self.best > 0 else mean < self.best:
            self.best, self.bad = mean, 0
        else:
            self.bad += 1
            if self.bad > self.cfg.plateau_patience:
                self.scale, self.bad = self.scale * self.cfg.plateau_factor, 0
                log.info("plateau: training loss has not improved for %d windows; lr scale now %g",
                         self.cfg.plateau_patience + 1, self.scale)

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad": self.bad, "window": list(self.window)}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best = state["scale"], state["best"]
        self.bad, self.window = state["bad"], list(state["window"])


# ============================================================================================ helpers
def _seed_for(seed: int, step: int, micro: int, stream: int) -> int:
    """A 63-bit seed from (seed, step, micro-batch, stream), well mixed by numpy's SeedSequence."""
    hi, lo = np.random.SeedSequence([seed, step, micro, stream]).generate_state(2)
    return ((int(hi) << 32) | int(lo)) & ((1 << 63) - 1)


def _setup_distributed(device: str | None) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); joins the torchrun process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but CUDA is not available")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not use_cuda:
        dev = torch.device("cpu")
    elif world > 1:
        dev = torch.device("cuda", local_rank)  # one GPU per torchrun process
    else:
        dev = torch.device(device or "cuda")
        dev = dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, dev


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = temp_path(path)  # unique per writer
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _make_optimizer(objective: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = objective.param_groups(1.0)  # weight_decay 1.0 reveals each group's decay multiplier
    seen: set[int] = set()
    for g in groups:
        g["params"] = list(g["params"])
        g["wd_scale"] = float(g.get("weight_decay", 1.0))
        g["weight_decay"] = cfg.weight_decay * g["wd_scale"]
        for p in g["params"]:
            if id(p) in seen:
                raise ValueError(f"{type(objective).__name__}.param_groups lists a parameter twice")
            seen.add(id(p))
    missing = [n for n, p in objective.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        log.warning("%d trainable parameters are in no optimizer group and will not train, e.g. %s",
                    len(missing), missing[:3])
    kwargs = {"lr": cfg.lr, "betas": cfg.betas, "eps": cfg.eps}
    if fused_adam_supported(device):
        # one kernel for the whole update; on CPU too, where it is 3.5-4x faster per step than the
        # default (foreach) path on 100 M parameters and agrees with it to float rounding
        kwargs["fused"] = True
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(groups, **kwargs)


def fused_adam_supported(device: torch.device) -> bool:
    """Whether this torch build has fused Adam/AdamW kernels for ``device`` (CUDA, CPU, MPS, XPU, ...)."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:  # older torch: fused kernels were CUDA-only
        return device.type == "cuda"
    return device.type in _get_fused_kernels_supported_devices()


class _StopFlag:
    """SIGTERM / SIGINT set a flag; the loop finishes the step under way, checkpoints and returns."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if hasattr(signal, "SIGTERM") and _in_main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # a second signal acts at once

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ============================================================================================ the loop
def pretrain(cfg: PretrainConfig, resume: bool = False, objective: nn.Module | None = None,
             stop_at_step: int | None = None, allow_config_change: bool = False,
             trust_checkpoint: bool = False, probe: Callable[[nn.Module, int], dict] | None = None) -> dict:
    """Run (or resume) pretraining as ``cfg`` says; see the module docstring for the exactness contract.

    Args:
        cfg: the resolved config; ``cfg.out_dir`` receives ``config.yaml``, ``last.ckpt``, ``upstream.pt``,
            ``losses.jsonl`` and ``tb/`` (rank 0 only).
        resume: continue from ``out_dir/last.ckpt``.
        objective: an already built objective (default: ``build_objective(cfg.objective)``).
        stop_at_step: end this invocation after that many steps in all, checkpointed, without changing the
            schedules' horizon ``cfg.max_steps`` (for time-limited jobs); ``resume`` continues from there.
        allow_config_change: let ``resume`` continue with settings other than the run's (e.g. a lower
            ``optim.lr`` after a divergence); the changes are logged and the old ``config.yaml`` is kept as
            ``config.to-step<K>.yaml``. The objective, batch size and seed can never change.
        trust_checkpoint: let ``resume`` unpickle a ``last.ckpt`` that needs more than this project writes
            (which can run code stored in it; warns). Off: such a file is refused (``upstream.safe_load``).
        probe: ``probe(objective, step) -> dict`` scores the encoder as it is (e.g. ``downstream.knn.KnnProbe``,
            which ``run_pretrain.py --probe`` passes in: this package does not import ``downstream``). Rank 0
            calls it before the first step of a new run (step 0: the random initialisation) and after every
            ``probe_every``-th step; the dict goes to ``losses.jsonl`` as ``{"step", "probe": dict}`` and its
            numbers to tensorboard as ``probe/<key>``. It must leave the objective's weights and mode as it
            found them; the loop re-seeds every micro-batch, so its RNG draws change nothing.

    ``upstream.pt`` is written when the run reaches ``max_steps`` (or ``stop_at_step``), never by a stopped run;
    ``last.ckpt`` every ``ckpt_every`` steps, at the end and when stopped by SIGTERM / SIGINT. A signal stops
    a single-process run after the step under way, a multi-process run at the next ``log_every`` step (the
    ranks agree on the step there without an extra synchronisation).

    Returns:
        dict with ``step`` (updates done), ``max_steps``, ``stopped_by`` (signal name, or None when the run
        reached its stop), ``skipped_files`` (count), ``out_dir`` and ``last_loss``.

    Raises:
        ConfigError / DataError on bad settings, data or run folder; NonFiniteLossError when the loss is NaN/inf.
    """
    owns_group = not dist.is_initialized()  # a caller's process group (e.g. a benchmark sweep) is left alone
    rank, world, device = _setup_distributed(cfg.device)
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ConfigError(f"batch_size={cfg.batch_size} must be divisible by world_size x grad_accum = "
                          f"{world} x {cfg.grad_accum}")
    if stop_at_step is not None and stop_at_step < 0:
        raise ConfigError(f"stop_at_step must be >= 0, got {stop_at_step}")
    out = Path(cfg.out_dir)
    changed = check_run_dir(out, config_to_dict(cfg), resume, ignore=RESUMABLE_CHANGES,
                            markers=("last.ckpt", "upstream.pt"), allow_changes=allow_config_change)
    ensure_writable_dir(out.parent, "experiment folder (--expdir)")
    if cfg.data.fbank_cache and rank == 0:
        ensure_writable_dir(cfg.data.fbank_cache, "fbank cache folder (--fbank-cache)")
    with run_dir_lock(out) if rank == 0 else contextlib.nullcontext():
        return _pretrain(cfg, resume, objective, stop_at_step, changed, owns_group, rank, world, device,
                         trust_checkpoint, probe)


def _pretrain(cfg: PretrainConfig, resume: bool, objective: nn.Module | None, stop_at_step: int | None,
              changed: list[str], owns_group: bool, rank: int, world: int, device: torch.device,
              trust_checkpoint: bool = False, probe: Callable[[nn.Module, int], dict] | None = None) -> dict:
    """:func:`pretrain` once its arguments and run folder are checked (rank 0 holds the folder's lock)."""
    out = Path(cfg.out_dir)
    ckpt_path = out / "last.ckpt"
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores
        torch.backends.cudnn.allow_tf32 = True

    # ---------------------------------------------------------------- objective, data, optimizer
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and in every repeat
    raw = objective if objective is not None else build_objective(cfg.objective)
    raw.to(device).train()
    files = list_audio_files(cfg.data.path, cfg.data.min_secs)
    fe: FbankConfig = raw.frontend
    min_samples = int(fe.sample_rate * fe.frame_length_ms / 1000)  # one fbank window
    if cfg.data.fbank_cache:
        dataset, collate = _cached_dataset(cfg, files, fe, raw, min_samples, rank, world)
    else:
        dataset = UnlabeledAudio(files, fe.sample_rate, raw.crop_secs, raw.num_views, cfg.seed, cfg.data,
                                 min_samples)
        collate = collate_views
    fbank = Fbank(fe).to(device)
    optimizer = _make_optimizer(raw, cfg.optim, device)
    schedule = Schedule(cfg.optim, cfg.max_steps)
    skipped: dict[str, str] = {}  # path -> reason, over all ranks
    start = 0
    if resume:
        try:  # no code runs from the file unless trusted: a run folder can come from anywhere
            ckpt = load_checkpoint_file(ckpt_path, trust_checkpoint, what="resume checkpoint")
        except CheckpointError as err:
            raise ConfigError(str(err)) from None
        _check_resumable(ckpt, cfg, world, len(files))
        raw.load_state_dict(ckpt["objective"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        _set_rng_state(ckpt["rng"])
        skipped, start = dict(ckpt["skipped_files"]), int(ckpt["step"])
        if rank == 0:
            log.info("resuming %s at step %d (epoch %d, index %d)", out, start, *ckpt["sampler"][:2])
            if changed:  # --allow-config-change: keep the settings the first steps ran with
                kept = out / f"config.to-step{start}.yaml"
                os.replace(out / "config.yaml", kept)
                log.warning("resuming with changed settings (%s); the previous config is kept as %s",
                            "; ".join(changed), kept)
            if skipped:
                log.warning("%d unusable audio files were skipped so far (last.ckpt['skipped_files'])",
                            len(skipped))
    stop = cfg.max_steps if stop_at_step is None else min(cfg.max_steps, stop_at_step)
    sampler = StepBatchSampler(len(files), cfg.batch_size, cfg.seed, start, stop, rank, world)
    workers = cfg.data.num_workers
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
    model = raw
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            raw, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters)
    if cfg.compile:
        model = torch.compile(model)

    def save(step: int, final: bool) -> None:
        if rank == 0:
            _save_checkpoint(ckpt_path, raw, optimizer, schedule, cfg, step, world, sampler.position(step),
                             len(files), skipped, final)

    # ---------------------------------------------------------------- steps
    report = _Reporter(cfg, out, start, stop, resume, rank == 0)
    if rank == 0:
        log.info("pretraining %s (%s) on %d files from %s: steps %d -> %d, batch %d = %d rank(s) x %d "
                 "micro-batch(es) x %d clips, %s, device %s", raw.family, type(raw).__name__, len(files),
                 cfg.data.path, start, stop, cfg.batch_size, world, cfg.grad_accum,
                 cfg.batch_size // (world * cfg.grad_accum), "bf16 autocast" if use_bf16 else "fp32", device)
    step, stopped_by, last_loss, saved_at = start, None, math.nan, (start if resume else None)
    pending: list[tuple[int, float, float, list[str], Tensor]] = []  # steps whose stats are on the device
    pending_bad: list[tuple[str, str]] = []  # unusable files this rank met since the last sync
    batches = iter(loader)

    def run_probe(at: int) -> None:
        if probe is not None and rank == 0:
            report.probe(at, probe(raw, at))

    try:
        if start == 0:
            run_probe(0)  # the random initialisation: the baseline pretraining must beat
        with _StopFlag() as flag:
            while step < stop:
                wavs, lengths, bad = next(batches)
                pending_bad += [(p, r) for p, r in bad if p not in skipped]
                lr, wd = schedule.apply(optimizer, step)
                keys, stats = _train_step(model, raw, fbank, wavs, lengths, optimizer, cfg, step, rank, world,
                                          device, use_bf16)
                raw.after_step(step, cfg.max_steps)
                step += 1
                pending.append((step, lr, wd, keys, stats))
                # one process stops right after the step a signal came in; ranks stop together at a sync
                probe_due = probe is not None and step % cfg.probe_every == 0  # synced: losses.jsonl stays in order
                if not (_sync_due(step, stop, cfg) or probe_due or (world == 1 and flag.signal is not None)):
                    continue
                rows, (signals, bad_count) = _gather_stats(
                    pending, [float(flag.signal is not None), float(len(pending_bad))], world, device)
                pending = []
                if bad_count:  # rare: share the new unusable files so rank 0 records all of them
                    _record_skipped(skipped, pending_bad, world, rank == 0)
                pending_bad = []
                for done, row_lr, row_wd, loss, logs in rows:
                    if not math.isfinite(loss):
                        raise NonFiniteLossError(done, loss, str(out), saved_at)
                    schedule.observe(done - 1, loss)
                    report.step(done, loss, row_lr, row_wd, logs, len(skipped))
                    last_loss = loss
                if probe_due:
                    run_probe(step)
                if step % cfg.ckpt_every == 0 and step < stop:
                    save(step, final=False)
                    saved_at = step
                if signals and step < stop:  # seen by every rank at the same step, so all of them stop together
                    stopped_by = signal.Signals(flag.signal).name if flag.signal else "a signal to a peer"
                    break
            if stopped_by is None:  # reached its stop: the run's outputs, upstream.pt included
                if saved_at != step or not (out / "upstream.pt").is_file():
                    save(step, final=True)
            elif saved_at != step:
                save(step, final=False)
        if rank == 0 and stopped_by:
            log.info("stopped by %s at step %d of %d; last.ckpt saved to %s (no upstream.pt written)", stopped_by,
                     step, cfg.max_steps, ckpt_path)
        if rank == 0 and skipped:
            log.warning("%d unusable audio files were skipped (listed in last.ckpt['skipped_files'])",
                        len(skipped))
    finally:
        report.close()
        del batches  # shuts the loader's workers down
        if world > 1 and owns_group and dist.is_initialized():
            dist.destroy_process_group()
    return {"step": step, "max_steps": cfg.max_steps, "stopped_by": stopped_by, "skipped_files": len(skipped),
            "out_dir": str(out), "last_loss": last_loss}


def _train_step(model, raw, fbank: Fbank, wavs: Tensor, lengths: Tensor, optimizer, cfg: PretrainConfig,
                step: int, rank: int, world: int, device: torch.device,
                use_bf16: bool) -> tuple[list[str], Tensor]:
    """One optimizer step over this rank's ``grad_accum`` micro-batches, without waiting for the device.

    Returns the sorted log names and this rank's ``[loss, *logs]`` averaged over its micro-batches, a
    tensor left on the device (see :func:`_gather_stats`).
    """
    micro = wavs.shape[0] // cfg.grad_accum
    total = torch.zeros((), device=device)
    log_sums: dict[str, Tensor] = {}
    for a in range(cfg.grad_accum):
        m = rank * cfg.grad_accum + a  # global micro-batch index: positions [m*micro, (m+1)*micro) of step
        # the micro-batch's own padding, so its features do not depend on what else the rank holds
        lens = lengths[a * micro:(a + 1) * micro]  # (b, V), on the host
        if wavs.dim() == 4:  # fbank from the cache (B, V, T, F); variable length: cut to the longest clip
            T = wavs.shape[2] if fbank.config.target_length else int(lens.max())
            feats = wavs[a * micro:(a + 1) * micro, :, :T].to(device, non_blocking=True)  # (b, V, T, F)
            frames = lens.to(device, non_blocking=True)  # (b, V)
        else:
            w = wavs[a * micro:(a + 1) * micro, :, : int(lens.max())].to(device, non_blocking=True)  # (b,V,S)
            with torch.no_grad():
                feats, frames = fbank(w.flatten(0, 1), lens.flatten().to(device, non_blocking=True))
            feats, frames = feats.unflatten(0, w.shape[:2]), frames.view(w.shape[:2])  # (b, V, T, F), (b, V)
        if raw.num_views == 1:
            feats, frames = feats[:, 0], frames[:, 0]  # (b, T, F), (b,)
        gen = torch.Generator(device=device).manual_seed(_seed_for(cfg.seed, step, m, 0))
        torch.manual_seed(_seed_for(cfg.seed, step, m, 1))  # dropout / drop-path / layerdrop
        sync = contextlib.nullcontext() if world == 1 or a == cfg.grad_accum - 1 else model.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, logs = model(feats, frames, gen)
            (loss.float() / cfg.grad_accum).backward()
        total += loss.detach().float() / cfg.grad_accum
        for k, v in logs.items():
            # a Python number becomes a device tensor by a fill kernel, not a (synchronising) host copy
            v = (v.detach().float().to(device) if torch.is_tensor(v)
                 else torch.full((), float(v), device=device))
            log_sums[k] = log_sums[k] + v / cfg.grad_accum if k in log_sums else v / cfg.grad_accum
    if cfg.optim.clip_grad:
        log_sums["grad_norm"] = clip_gradients(raw.parameters(), cfg.optim.clip_grad, cfg.optim.clip_mode)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    keys = sorted(log_sums)
    return keys, torch.stack([total, *(log_sums[k] for k in keys)])


def clip_gradients(params, max_norm: float, mode: str = "global") -> Tensor:
    """Clip gradients in place as the method's official code does; returns the global norm before clipping.

    ``'global'``: ``torch.nn.utils.clip_grad_norm_`` (one scale for every gradient, as fairseq's ``clip_norm``).
    ``'per_parameter'``: DINO's ``utils.clip_gradients`` (ASiT ``main_ASiT.py``): each gradient ``g`` with
    ``||g|| > max_norm`` is scaled by ``max_norm / (||g|| + 1e-6)``, every parameter on its own.
    """
    params = [p for p in params if p.grad is not None]
    if mode == "global":
        return nn.utils.clip_grad_norm_(params, max_norm).float()
    if mode != "per_parameter":
        raise ValueError(f"clip_mode must be 'global' or 'per_parameter', got {mode!r}")
    if not params:
        return torch.zeros(())
    grads = [p.grad for p in params]
    norms = torch._foreach_norm(grads)  # one kernel for all, no host sync
    coefs = [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms]  # official: multiply only if < 1
    torch._foreach_mul_(grads, coefs)
    return torch.linalg.vector_norm(torch.stack(norms)).float()


def _sync_due(step: int, stop: int, cfg: PretrainConfig) -> bool:
    """Whether the host reads the device after ``step`` completed updates (same answer on every rank)."""
    o = cfg.optim
    plateau_end = (o.schedule == "plateau_halving" and step > o.warmup_steps
                   and (step - o.warmup_steps) % o.plateau_every == 0)  # Schedule.observe needs the window
    return step % cfg.log_every == 0 or step % cfg.ckpt_every == 0 or step == stop or plateau_end


def _gather_stats(pending: list[tuple[int, float, float, list[str], Tensor]], flags: list[float], world: int,
                  device: torch.device) -> tuple[list[tuple[int, float, float, float, dict]], list[float]]:
    """Bring the pending steps' stats to the host: one all-reduce (mean over ranks) and one copy.

    Returns ``(step, lr, wd, loss, logs)`` per pending step and ``flags`` summed over ranks (they ride on the
    same all-reduce, so stopping and bookkeeping cost no extra collective).
    """
    stats = torch.cat([p[4] for p in pending]) / world
    flat = torch.cat([stats, torch.tensor(flags, device=device)])
    if world > 1:
        dist.all_reduce(flat)
    values = flat.tolist()  # the host waits for the device here, and only here
    rows, at = [], 0
    for done, lr, wd, keys, _ in pending:
        loss, logs = values[at], dict(zip(keys, values[at + 1:at + 1 + len(keys)]))
        rows.append((done, lr, wd, loss, logs))
        at += 1 + len(keys)
    return rows, values[at:]


def _cached_dataset(cfg: PretrainConfig, files: list[str], fe: FbankConfig, raw, min_samples: int, rank: int,
                    world: int):
    """The fbank-cache dataset and its collate function; rank 0 builds or updates the cache first."""
    import functools

    from .fbank_cache import CachedFbank, build_cache, collate_fbank, pad_value

    root = Path(cfg.data.fbank_cache)
    if rank == 0:
        build_cache(root, files, fe, cfg.data.resample, max(min_samples, math.ceil(cfg.data.min_secs *
                                                                                   fe.sample_rate)), log)
    if world > 1:
        dist.barrier()  # the other ranks read the index rank 0 wrote
    index = json.loads((root / "index.json").read_text(encoding="utf-8"))
    if cfg.data.pad_to_crop and rank == 0:
        log.warning("data.pad_to_crop is not reproduced by the fbank cache: short clips are padded as the "
                    "front end pads its target length")
    dataset = CachedFbank(root, index, files, fe, raw.crop_secs, raw.num_views, cfg.seed, cfg.data.roll_prob)
    return dataset, functools.partial(collate_fbank, pad=pad_value(fe), target_length=fe.target_length)


def _record_skipped(skipped: dict[str, str], new: list[tuple[str, str]], world: int, report: bool) -> None:
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, new)
        new = [x for part in gathered for x in part]
    for path, reason in new:
        if path not in skipped:
            skipped[path] = reason
            if report:
                log.warning("skipping unusable audio file (%d so far): %s", len(skipped), reason)


def _save_checkpoint(path: Path, raw: nn.Module, optimizer, schedule: Schedule, cfg: PretrainConfig,
                     step: int, world: int, position: tuple[int, int], num_files: int, skipped: dict,
                     final: bool) -> None:
    """``last.ckpt`` (everything to resume) and, when ``final``, ``upstream.pt`` (the encoder as an upstream),
    each atomically. A run stopped by a signal leaves no ``upstream.pt``: one there means the run reached its
    stop (``max_steps``, or ``stop_at_step`` when given; ``extra.pretrain_step`` says which step)."""
    if final:
        save_upstream(raw.to_upstream(), path.parent / "upstream.pt",
                      extra={"pretrain_step": step, "objective": dict(cfg.objective),
                             "skipped_files": len(skipped)})
    _atomic_save({
        "format": CKPT_FORMAT, "version": CKPT_VERSION, "step": step, "world_size": world,
        "objective": raw.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
        "rng": _rng_state(), "mask_generator": "seeded from (seed, step, micro-batch), see pretrain.engine",
        "sampler": (*position, step * cfg.batch_size), "num_files": num_files, "skipped_files": dict(skipped),
        "config": config_to_dict(cfg),
    }, path)


class _Reporter:
    """Rank-0 outputs of the loop: ``losses.jsonl`` (every step), tensorboard and the bar or log lines."""

    def __init__(self, cfg: PretrainConfig, out: Path, start: int, stop: int, resume: bool, enabled: bool):
        from tqdm import tqdm

        self.cfg, self.stop, self.enabled = cfg, stop, enabled
        self.writer = self.file = None
        self.bar = tqdm(total=stop, initial=start, disable=not enabled or not sys.stderr.isatty(),
                        dynamic_ncols=True, desc="pretrain")
        self.window_loss, self.window_steps, self.t0 = 0.0, 0, time.perf_counter()
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out / "config.yaml")
        truncate_jsonl(out / "losses.jsonl", start)
        self.file = open(out / "losses.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"), purge_step=start + 1 if resume else None)

    def step(self, step: int, loss: float, lr: float, wd: float, logs: dict, skipped: int) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, "loss": loss, "lr": lr, "logs": logs}) + "\n")
        self.file.flush()
        self.bar.update(1)
        self.window_loss, self.window_steps = self.window_loss + loss, self.window_steps + 1
        if step % self.cfg.log_every and step != self.stop:
            return
        mean = self.window_loss / self.window_steps
        clips_s = self.window_steps * self.cfg.batch_size / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(loss=f"{mean:.4f}", clips_s=f"{clips_s:.1f}", skipped=skipped)
        if self.writer is not None:
            scalars = {"loss": mean, "lr": lr, "weight_decay": wd, "clips_per_sec": clips_s,
                       "skipped_files": skipped, **logs}
            for k, v in scalars.items():
                self.writer.add_scalar(f"pretrain/{k}", v, step)
        if self.bar.disable:
            log.info("step %d/%d loss %.4f lr %.3g clips/s %.1f skipped files %d", step, self.stop, mean, lr,
                     clips_s, skipped)
        self.window_loss, self.window_steps, self.t0 = 0.0, 0, time.perf_counter()

    def probe(self, step: int, result: dict) -> None:
        """A probe's record: one ``losses.jsonl`` line, its numbers to tensorboard, and a log line."""
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, "probe": result}) + "\n")
        self.file.flush()
        numbers = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.writer is not None:
            for k, v in numbers.items():
                self.writer.add_scalar(f"probe/{k}", v, step)
        text = ", ".join(f"{k} {v:.4g}" for k, v in numbers.items())
        if self.bar.disable:
            log.info("probe at step %d: %s", step, text)
        else:
            self.bar.write(f"probe at step {step}: {text}")

    def close(self) -> None:
        self.bar.close()
        for f in (self.writer, self.file):
            if f is not None:
                f.close()


def _check_resumable(ckpt: dict, cfg: PretrainConfig, world: int, num_files: int) -> None:
    if ckpt.get("format") != CKPT_FORMAT:
        raise ConfigError("last.ckpt is not a pretraining checkpoint of this project")
    old = ckpt["config"]
    for key in ("objective", "batch_size", "seed"):
        new = config_to_dict(getattr(cfg, key))
        if old[key] != new:
            raise ConfigError(f"cannot resume: {key} was {old[key]!r} in the checkpoint but is {new!r} now")
    if old["grad_accum"] * ckpt["world_size"] != cfg.grad_accum * world:
        log.warning("resuming with %d micro-batches per step instead of %d: masks will differ from an "
                    "uninterrupted run", cfg.grad_accum * world, old["grad_accum"] * ckpt["world_size"])
    if ckpt["num_files"] != num_files:
        log.warning("the data now has %d files, the checkpoint saw %d: the data order changes from here",
                    num_files, ckpt["num_files"])
