"""Pretraining loop for any objective (SSAST, MAE-AST, ASiT, or your own), single device or DDP: :func:`run`.

Reference loops: facebookresearch/mae ``engine_pretrain.py`` (per-step schedule, stop on a non-finite loss),
facebookresearch/dino ``main_dino.py`` (cosine lr / weight-decay schedules, EMA teacher after the step),
karpathy/nanoGPT ``train.py`` (the checkpoint carries the config that rebuilds it). The CLI is
``run_pretrain.py``; the recipes are ``configs/pretrain/*.yaml`` (``pretrain.recipes`` resolves them); the
pieces are ``pretrain.config`` (settings), ``data`` and ``fbank_cache`` (clips), ``objective`` (objective and
optimizer), ``schedule``, ``checkpoint``, ``report`` (rank 0's outputs) and ``stopping`` (signals, errors).

Data flow of one step::

    files --StepBatchSampler(keyed)--> (position, file) keys --UnlabeledAudio--> views (crop/pad/roll, CPU)
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
import logging
import math
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from common.config import ConfigError, config_to_dict
from common.distributed import DistContext, StepBatchSampler, setup_distributed
from common.optim import clip_gradients
from common.rng import set_rng_state
from common.rundir import check_run_dir, ensure_writable_dir, run_dir_lock
from upstream.frontend import Fbank, FbankConfig

from .checkpoint import load_resume_checkpoint, save_checkpoint
from .config import RESUMABLE_CHANGES, PretrainConfig
from .data import UnlabeledAudio, collate_views, list_audio_files
from .fbank_cache import cached_dataset
from .objective import build_objective, build_optimizer
from .report import Reporter
from .schedule import Schedule
from .stopping import NonFiniteLossError, PretrainStopped, StopFlag

__all__ = ["run"]

log = logging.getLogger(__name__)
# probe(objective, step) -> {name: value}, or a list of them (one per task)
Probe = Callable[[nn.Module, int], dict | list[dict]]


# ============================================================================================ the run
def run(cfg: PretrainConfig, *, resume: bool = False, probe: Probe | None = None,
        stop_at_step: int | None = None, allow_config_change: bool = False, trust_checkpoint: bool = False,
        objective: nn.Module | None = None) -> Path:
    """Run (or resume) pretraining as ``cfg`` says; see the module docstring for the exactness contract.

    Args:
        cfg: the resolved config (``pretrain.recipes.resolve_config`` makes one from a recipe);
            ``cfg.out_dir`` receives ``config.yaml``, ``last.ckpt``, ``upstream.pt``, ``losses.jsonl`` and
            ``tb/`` (rank 0 only).
        resume: continue from ``out_dir/last.ckpt``.
        probe: ``probe(objective, step) -> dict`` scores the encoder as it is (e.g.
            ``downstream.knn.KnnProbe``, which ``run_pretrain.py --probe`` passes in: this package does not
            import ``downstream``). Rank 0
            calls it before the first step of a new run (step 0: the random initialisation) and after every
            ``probe_every``-th step; the dict (or each dict of a list, one per task) goes to ``losses.jsonl``
            as ``{"step", "probe": dict}`` and its numbers to tensorboard as ``probe/<key>``. It must leave
            the objective's weights and mode as it found them; the loop re-seeds every micro-batch, so its RNG
            draws change nothing.
        stop_at_step: end this invocation after that many steps in all, checkpointed, without changing the
            schedules' horizon ``cfg.max_steps`` (for time-limited jobs); ``resume`` continues from there.
        allow_config_change: let ``resume`` continue with settings other than the run's (e.g. a lower
            ``optim.lr`` after a divergence); the changes are logged and the old ``config.yaml`` is kept as
            ``config.to-step<K>.yaml``. The objective, batch size and seed can never change.
        trust_checkpoint: let ``resume`` unpickle a ``last.ckpt`` that needs more than this project writes
            (which can run code stored in it; warns). Off: such a file is refused (``upstream.safe_load``).
        objective: an already built objective (default: ``build_objective(cfg.objective)``).

    ``upstream.pt`` is written when the run reaches ``max_steps`` (or ``stop_at_step``), never by a stopped
    run; ``last.ckpt`` every ``ckpt_every`` steps, at the end and when stopped by SIGTERM / SIGINT. A signal
    stops a single-process run after the step under way, a multi-process run at the next ``log_every`` step
    (the ranks agree on the step there without an extra synchronisation).

    Returns:
        ``out_dir/upstream.pt``, the pretrained encoder (``upstream.load(<an upstream of the family>,
        ckpt=...)`` loads it); under ``torchrun`` rank 0 writes it, so other ranks wait for it at a barrier
        of their own.

    Raises:
        ConfigError: bad settings or run folder (also a ``ValueError``).
        DataError: data that cannot be used (also a ``ValueError``).
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
        PretrainStopped: SIGTERM / SIGINT stopped the run (``last.ckpt`` saved, no ``upstream.pt``).
    """
    if stop_at_step is not None and stop_at_step < 0:
        raise ConfigError(f"stop_at_step must be >= 0, got {stop_at_step}")
    ctx, device = setup_distributed(cfg.device)  # a caller's process group (e.g. a benchmark sweep) stays
    try:
        if cfg.batch_size % (ctx.world_size * cfg.grad_accum):
            raise ConfigError(f"batch_size={cfg.batch_size} must be divisible by world_size x grad_accum = "
                              f"{ctx.world_size} x {cfg.grad_accum}")
        out = Path(cfg.out_dir)
        changed = check_run_dir(out, config_to_dict(cfg), resume, ignore=RESUMABLE_CHANGES,
                                markers=("last.ckpt", "upstream.pt"), allow_changes=allow_config_change)
        ensure_writable_dir(out.parent, "experiment folder (--expdir)")
        if cfg.data.fbank_cache and ctx.is_main:
            ensure_writable_dir(cfg.data.fbank_cache, "fbank cache folder (--fbank-cache)")
        with run_dir_lock(out) if ctx.is_main else contextlib.nullcontext():
            state = _prepare(cfg, ctx, device, objective, resume, changed, trust_checkpoint)
            _loop(state, stop_at_step, probe)
    finally:
        ctx.close()
    return out / "upstream.pt"


@dataclass
class _State:
    """What the loop works on, once the objective, data, optimizer and (on resume) checkpoint are in place."""

    cfg: PretrainConfig
    ctx: DistContext
    device: torch.device
    raw: nn.Module  # the objective itself; the loop steps ``model`` (DDP / compiled around it)
    files: list[str]
    dataset: Dataset
    collate: Callable
    fbank: Fbank
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    resume: bool
    start: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason, over all ranks


def _prepare(cfg: PretrainConfig, ctx: DistContext, device: torch.device, objective: nn.Module | None,
             resume: bool, changed: list[str], trust_checkpoint: bool) -> _State:
    """Build the objective, data and optimizer (the same on every rank); load ``last.ckpt`` on resume."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and in every repeat
    raw = objective if objective is not None else build_objective(cfg.objective)
    raw.to(device).train()
    files = list_audio_files(cfg.data.path, cfg.data.min_secs)
    fe: FbankConfig = raw.frontend
    min_samples = int(fe.sample_rate * fe.frame_length_ms / 1000)  # one fbank window
    if cfg.data.fbank_cache:
        dataset, collate = cached_dataset(cfg, files, fe, raw, min_samples, ctx)
    else:
        dataset = UnlabeledAudio(files, fe.sample_rate, raw.crop_secs, raw.num_views, cfg.seed, cfg.data,
                                 min_samples)
        collate = collate_views
    state = _State(cfg, ctx, device, raw, files, dataset, collate, Fbank(fe).to(device),
                   build_optimizer(raw, cfg.optim, device), Schedule(cfg.optim, cfg.max_steps), resume)
    if resume:
        out = Path(cfg.out_dir)
        ckpt = load_resume_checkpoint(out / "last.ckpt", cfg, ctx.world_size, len(files), trust_checkpoint)
        raw.load_state_dict(ckpt["objective"])
        state.optimizer.load_state_dict(ckpt["optimizer"])
        state.schedule.load_state_dict(ckpt["schedule"])
        set_rng_state(ckpt["rng"])
        state.skipped, state.start = dict(ckpt["skipped_files"]), int(ckpt["step"])
        if ctx.is_main:
            log.info("resuming %s at step %d (epoch %d, index %d)", out, state.start, *ckpt["sampler"][:2])
            if changed:  # --allow-config-change: keep the settings the first steps ran with
                kept = out / f"config.to-step{state.start}.yaml"
                os.replace(out / "config.yaml", kept)
                log.warning("resuming with changed settings (%s); the previous config is kept as %s",
                            "; ".join(changed), kept)
            if state.skipped:
                log.warning("%d unusable audio files were skipped so far (last.ckpt['skipped_files'])",
                            len(state.skipped))
    return state


def _loop(s: _State, stop_at_step: int | None, probe: Probe | None) -> None:
    """Steps ``s.start -> stop``, with syncs, probes, checkpoints and signals; see the module docstring."""
    cfg, raw, rank, world, device = s.cfg, s.raw, s.ctx.rank, s.ctx.world_size, s.device
    out = Path(cfg.out_dir)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    stop = cfg.max_steps if stop_at_step is None else min(cfg.max_steps, stop_at_step)
    sampler = StepBatchSampler(len(s.files), cfg.batch_size, cfg.seed, s.start, stop, rank=rank,
                               world_size=world, stream=0, keyed=True)
    workers = cfg.data.num_workers
    loader = DataLoader(s.dataset, batch_sampler=sampler, collate_fn=s.collate, num_workers=workers,
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
            save_checkpoint(out / "last.ckpt", raw, s.optimizer, s.schedule, cfg, step, world,
                            sampler.position(step), len(s.files), s.skipped, final)

    report = Reporter(cfg, out, s.start, stop, s.resume, rank == 0)
    if rank == 0:
        log.info("pretraining %s (%s) on %d files from %s: steps %d -> %d, batch %d = %d rank(s) x %d "
                 "micro-batch(es) x %d clips, %s, device %s", raw.family, type(raw).__name__, len(s.files),
                 cfg.data.path, s.start, stop, cfg.batch_size, world, cfg.grad_accum,
                 cfg.batch_size // (world * cfg.grad_accum), "bf16 autocast" if use_bf16 else "fp32", device)
    step, stopped_by, saved_at = s.start, None, (s.start if s.resume else None)
    pending: list[tuple[int, float, float, list[str], Tensor]] = []  # steps whose stats are on the device
    pending_bad: list[tuple[str, str]] = []  # unusable files this rank met since the last sync
    batches = iter(loader)

    def run_probe(at: int) -> None:
        if probe is not None and rank == 0:
            result = probe(raw, at)
            for record in result if isinstance(result, list) else [result]:  # several tasks: a line each
                report.probe(at, record)

    try:
        if s.start == 0:
            run_probe(0)  # the random initialisation: the baseline pretraining must beat
        with StopFlag() as flag:
            while step < stop:
                wavs, lengths, bad = next(batches)
                pending_bad += [(p, r) for p, r in bad if p not in s.skipped]
                lr, wd = s.schedule.apply(s.optimizer, step)
                keys, stats = _train_step(model, raw, s.fbank, wavs, lengths, s.optimizer, cfg, step, rank,
                                          world, device, use_bf16)
                raw.after_step(step, cfg.max_steps)
                step += 1
                pending.append((step, lr, wd, keys, stats))
                # one process stops right after the step a signal came in; ranks stop together at a sync
                probe_due = probe is not None and step % cfg.probe_every == 0  # synced: losses.jsonl in order
                if not (_sync_due(step, stop, cfg) or probe_due or (world == 1 and flag.signal is not None)):
                    continue
                rows, (signals, bad_count) = _gather_stats(
                    pending, [float(flag.signal is not None), float(len(pending_bad))], world, device)
                pending = []
                if bad_count:  # rare: share the new unusable files so rank 0 records all of them
                    _record_skipped(s.skipped, pending_bad, world, rank == 0)
                pending_bad = []
                for done, row_lr, row_wd, loss, logs in rows:
                    if not math.isfinite(loss):
                        raise NonFiniteLossError(done, loss, str(out), saved_at)
                    s.schedule.observe(done - 1, loss)
                    report.step(done, loss, row_lr, row_wd, logs, len(s.skipped))
                if probe_due:
                    run_probe(step)
                if step % cfg.ckpt_every == 0 and step < stop:
                    save(step, final=False)
                    saved_at = step
                if signals and step < stop:  # every rank sees it at this step, so all of them stop together
                    stopped_by = signal.Signals(flag.signal).name if flag.signal else "a signal to a peer"
                    break
            if stopped_by is None:  # reached its stop: the run's outputs, upstream.pt included
                if saved_at != step or not (out / "upstream.pt").is_file():
                    save(step, final=True)
            elif saved_at != step:
                save(step, final=False)
        if rank == 0 and s.skipped:
            log.warning("%d unusable audio files were skipped (listed in last.ckpt['skipped_files'])",
                        len(s.skipped))
    finally:
        report.close()
        del batches  # shuts the loader's workers down
    if stopped_by is not None:
        raise PretrainStopped(stopped_by, step, cfg.max_steps, str(out))
    if rank == 0:
        where = "" if step >= cfg.max_steps else f" of {cfg.max_steps} (stop_at_step)"
        log.info("done at step %d%s: %s (skipped files: %d)", step, where, out / "upstream.pt",
                 len(s.skipped))


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

def _seed_for(seed: int, step: int, micro: int, stream: int) -> int:
    """A 63-bit seed from (seed, step, micro-batch, stream), well mixed by numpy's SeedSequence."""
    hi, lo = np.random.SeedSequence([seed, step, micro, stream]).generate_state(2)
    return ((int(hi) << 32) | int(lo)) & ((1 << 63) - 1)
