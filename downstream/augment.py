"""SSAST PSLA fine-tuning extras: mixup, SpecAugment, noise, the lr schedules and weight averaging.

Follows YuanGongND/ssast ``src/dataloader.py`` (augmentation) and ``src/traintest.py`` (schedule, warm-up,
weight averaging). Everything is batched on the device and drawn from one seeded
``torch.Generator``, with no Python loop over clips or frames:

* mixup: clip ``i`` is mixed, with probability ``mixup``, with a partner drawn from its batch (SSAST draws it
  from the whole train set; batches are random draws of it). Both waveforms lose their mean, the partner is
  zero-padded / cut to clip ``i``'s length, ``lambda ~ Beta(10, 10)``, the mix loses its mean, and the target
  is ``lambda * y_i + (1 - lambda) * y_partner``.
* SpecAugment: torchaudio ``FrequencyMasking(freqm)`` + ``TimeMasking(timem)``, one mask each per clip, width
  ``floor(U * param)`` in ``[0, param)``. SSAST masks the raw log-mel with 0 before normalising; the
  upstream's front end has normalised already, so the mask value is ``(0 - mean) / (2 std)``, the same input.
* noise: ``fbank += U[0, 1)^(T, F) * U[0, 1) / 10``, then a roll in time by ``randint(-10, 10)`` frames.

SpecAugment and noise reach the upstream through the contract's ``set_input_augment`` hook (:func:`attach`):
it applies them to each normalised input its encoder sees: one per clip for a whole-clip upstream (MAE-AST) or
when the clip fits one window, one per window when an upstream cuts a long clip into windows (SSAST's default
1 s windows), so the recipe's single 1024/512/128-frame input needs an upstream built with that window. An
upstream without the hook (a plug-in that computes its own input) is fine-tuned without them, with an
:class:`AugmentationSkipped` warning.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AugmentConfig:
    """Training-time augmentation of ``-f`` PSLA runs (SSAST ``run_*.sh`` arguments of the same names)."""

    mixup: float = 0.0  # probability that a training clip is mixed with a partner
    freqm: int = 0  # frequency mask width drawn from [0, freqm) mel bins; 0 = off
    timem: int = 0  # time mask width drawn from [0, timem) frames; 0 = off
    noise: bool = False  # U*U/10 fbank noise and a random roll in [-10, 10) frames

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.freqm > 0 or self.timem > 0 or self.noise

    def __post_init__(self):
        if not 0.0 <= self.mixup <= 1.0:
            raise ValueError(f"augment.mixup is a probability in [0, 1], got {self.mixup}")
        if self.freqm < 0 or self.timem < 0:
            raise ValueError(f"augment.freqm / timem must be >= 0, got {self.freqm} / {self.timem}")


DECAYS = ("constant", "cosine", "linear")


@dataclass
class ScheduleConfig:
    """The lr schedule: one of two, never both.

    * SSAST ``traintest.py`` (the PSLA recipes): MultiStepLR over epochs of ``runner.eval_step`` optimizer
      steps (the PSLA configs evaluate once per epoch), after an optional ``warmup_steps`` staircase ramp.
    * Warm-up + decay (the generic ``folder`` / ``manifest`` fine-tuning recipe, as BEiT / data2vec / MAE
      fine-tune): the lr rises linearly over the first ``warmup_fraction`` of ``runner.total_steps``, then
      falls to 0 at ``runner.total_steps`` (``decay``: ``cosine`` or ``linear``; ``constant`` keeps it).

    Every default: a constant lr (s3prl).
    """

    lrscheduler_start: int = 0  # first epoch milestone of MultiStepLR; 0 = constant lr (s3prl)
    lrscheduler_step: int = 1  # milestones every this many epochs from the start
    lrscheduler_decay: float = 1.0  # gamma: lr *= decay at each milestone
    warmup_steps: int = 0  # SSAST --warmup True: lr ramps 0 -> lr over 1000 steps, updated every 50
    # warm-up + decay: a linear ramp over this fraction of runner.total_steps, updated every step
    warmup_fraction: float = 0.0
    decay: str = "constant"  # after the warm-up: constant, cosine or linear to 0 at runner.total_steps
    wa: bool = False  # average the weights of epochs wa_start..wa_end (1-based) and report that model
    wa_start: int = 1
    wa_end: int = 1

    def __post_init__(self):
        if self.lrscheduler_step < 1:
            raise ValueError(f"schedule.lrscheduler_step must be >= 1, got {self.lrscheduler_step}")
        if self.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.warmup_fraction < 1.0:  # also refuses NaN
            raise ValueError(f"schedule.warmup_fraction is a fraction of runner.total_steps in [0, 1), got "
                             f"{self.warmup_fraction}")
        if self.decay not in DECAYS:
            raise ValueError(f"schedule.decay must be one of {', '.join(DECAYS)}, got {self.decay!r}")
        if self.warmup_decay and (self.warmup_steps or self.lrscheduler_start > 0):
            raise ValueError("schedule.warmup_fraction / decay (warm-up + decay) and schedule.warmup_steps / "
                             "lrscheduler_start (the SSAST schedule) exclude each other: set one of them")
        if self.wa and not 1 <= self.wa_start <= self.wa_end:
            raise ValueError(f"schedule.wa_start/wa_end must satisfy 1 <= start <= end, got "
                             f"{self.wa_start}/{self.wa_end}")

    @property
    def warmup_decay(self) -> bool:
        """Whether this is the warm-up + decay schedule (``warmup_fraction`` or ``decay`` set)."""
        return self.warmup_fraction > 0 or self.decay != "constant"


WARMUP_UPDATE_EVERY = 50  # SSAST sets the warm-up lr every 50 iterations


def warmup_decay_factor(step: int, total_steps: int, warmup_fraction: float, decay: str) -> float:
    """Warm-up + decay: the multiplier of ``optimizer.lr`` for the update at 0-based ``step`` of
    ``total_steps``.

    The warm-up has ``W = round(warmup_fraction * total_steps)`` updates with factor ``(step + 1) / W`` (the
    first update already learns, the W-th is at the full lr); after it, with ``p = (step - W) / (total_steps
    - W)`` in [0, 1), ``cosine`` gives ``(1 + cos(pi p)) / 2``, ``linear`` ``1 - p``, ``constant`` 1: the lr
    would reach 0 at step ``total_steps``, one past the last update.
    """
    warm = round(warmup_fraction * total_steps)
    if step < warm:
        return (step + 1) / warm
    if decay == "constant":
        return 1.0
    p = min(1.0, (step - warm) / max(1, total_steps - warm))
    return 0.5 * (1.0 + math.cos(math.pi * p)) if decay == "cosine" else 1.0 - p


def lr_factor(step: int, steps_per_epoch: int, cfg: ScheduleConfig, total_steps: int | None = None) -> float:
    """Multiplier of ``optimizer.lr`` for the update at 0-based ``step``.

    Warm-up + decay (``cfg.warmup_decay``): :func:`warmup_decay_factor` over ``total_steps``
    (``runner.total_steps``, required then). Otherwise SSAST's:
    ``MultiStepLR(milestones=range(start, 1000, step), gamma=decay)`` stepped after each epoch: during epoch
    ``e`` (0-based) the lr is multiplied by ``decay`` once per milestone ``<= e``. Warm-up (SSAST): for
    ``step <= warmup_steps`` the lr is ``lr * (step - step % 50) / warmup_steps``, so the first 50 updates
    have lr 0, exactly as ``traintest.py``.
    """
    if cfg.warmup_decay:
        if total_steps is None:
            raise ValueError("lr_factor: the warm-up + decay schedule needs total_steps")
        return warmup_decay_factor(step, total_steps, cfg.warmup_fraction, cfg.decay)
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return (step - step % WARMUP_UPDATE_EVERY) / cfg.warmup_steps
    if cfg.lrscheduler_start <= 0:
        return 1.0
    epoch = step // max(1, steps_per_epoch)
    passed = len(range(cfg.lrscheduler_start, min(epoch, 999) + 1, cfg.lrscheduler_step))
    return cfg.lrscheduler_decay ** passed


# ------------------------------------------------------------------------------------------ mixup
def sample_beta(a: int, b: int, n: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """``(n,)`` draws of Beta(a, b) for integer a, b: the a-th smallest of a + b - 1 uniforms (an exact
    identity), so a ``torch.Generator`` drives it."""
    u = torch.rand(n, a + b - 1, generator=generator, device=device)
    return u.sort(1).values[:, a - 1]


def mixup(wavs: list[torch.Tensor], labels: torch.Tensor, num_classes: int, prob: float,
          generator: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Mix each clip with an in-batch partner with probability ``prob`` (SSAST ``_wav2fbank``).

    Args:
        wavs: B waveforms ``(S_i,)`` on one device.
        labels: ``(B,)`` class indices or ``(B, C)`` multi-hot.
        num_classes: C.
        prob: mixup probability.
        generator: on the waveforms' device.
    Returns:
        waveforms (each keeps its length) and ``(B, C)`` float targets ``lam * y + (1 - lam) * y_partner``
        (``lam = 1`` for clips left unmixed).
    """
    B, dev = len(wavs), wavs[0].device
    target = labels.float() if labels.ndim == 2 else F.one_hot(labels, num_classes).float()
    target = target.to(dev)
    lens = torch.tensor([w.numel() for w in wavs], device=dev)
    padded = nn.utils.rnn.pad_sequence(wavs, batch_first=True)  # (B, S)
    valid = torch.arange(padded.shape[1], device=dev)[None] < lens[:, None]  # (B, S)
    centred = (padded - (padded.sum(1, keepdim=True) / lens[:, None])) * valid
    partner = torch.randint(B, (B,), generator=generator, device=dev)
    lam = sample_beta(10, 10, B, generator, dev)
    lam = torch.where(torch.rand(B, generator=generator, device=dev) < prob, lam, torch.ones_like(lam))
    # partner cut/padded to len i
    mixed = lam[:, None] * centred + (1 - lam[:, None]) * centred[partner] * valid
    mixed = (mixed - mixed.sum(1, keepdim=True) / lens[:, None]) * valid
    out = torch.where((lam < 1)[:, None], mixed, padded)  # unmixed clips stay as loaded
    target = lam[:, None] * target + (1 - lam[:, None]) * target[partner]
    return [out[i, : lens[i]] for i in range(B)], target


# ------------------------------------------------------------------------------------------ spectrogram
def mask_along_axis(x: torch.Tensor, max_width: int, axis: int, value: float,
                    generator: torch.Generator) -> torch.Tensor:
    """One mask per row of ``x`` (B, T, F) along ``axis`` (1 = time, 2 = frequency), torchaudio semantics.

    ``width = floor(U * max_width)``, ``start = floor(U * (size - U * max_width))``; entries with
    ``start <= i < start + width`` become ``value``.
    """
    if max_width <= 0:
        return x
    B, size = x.shape[0], x.shape[axis]
    w = torch.rand(B, generator=generator, device=x.device) * max_width
    start = (torch.rand(B, generator=generator, device=x.device) * (size - w)).long()
    end = start + w.long()
    i = torch.arange(size, device=x.device)
    band = (i[None] >= start[:, None]) & (i[None] < end[:, None])  # (B, size)
    band = band[:, :, None] if axis == 1 else band[:, None, :]
    return x.masked_fill(band, value)


def noise_and_roll(x: torch.Tensor, generator: torch.Generator, max_shift: int = 10) -> torch.Tensor:
    """SSAST ``noise=True``: ``x + U(T, F) * U() / 10`` per clip, then ``roll`` by ``randint(-10, 10)``
    rows."""
    B, T, _ = x.shape
    scale = torch.rand(B, 1, 1, generator=generator, device=x.device) / 10
    x = x + torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * scale
    shift = torch.randint(-max_shift, max_shift, (B,), generator=generator, device=x.device)
    src = (torch.arange(T, device=x.device)[None] - shift[:, None]) % T  # roll: out[t] = x[t - shift]
    return x.gather(1, src[:, :, None].expand_as(x))


class SpecAugment:
    """SpecAugment and noise on normalised features, as the upstream's ``set_input_augment`` hook runs them.

    The upstream calls it in training mode only, on each normalised input ``(B, T, F)`` its encoder sees, with
    ``fill``, the value a raw zero log-mel bin has after its normalisation: SSAST masks the raw log-mel with
    0.

    Args:
        cfg: what to apply.
        generator: the run's augmentation generator (its state is saved for resuming).
    """

    def __init__(self, cfg: AugmentConfig, generator: torch.Generator):
        self.cfg, self.generator = cfg, generator

    def __call__(self, feats: torch.Tensor, fill: float) -> torch.Tensor:
        feats = mask_along_axis(feats, self.cfg.freqm, 2, fill, self.generator)
        feats = mask_along_axis(feats, self.cfg.timem, 1, fill, self.generator)
        if self.cfg.noise:
            feats = noise_and_roll(feats, self.generator)
        return feats


class AugmentationSkipped(UserWarning):
    """SpecAugment / noise requested for an upstream without the contract's ``set_input_augment`` hook."""


def attach(upstream: nn.Module, cfg: AugmentConfig, generator: torch.Generator) -> bool:
    """Give ``upstream`` SpecAugment and noise through its ``set_input_augment`` hook (the upstream contract,
    ``downstream/validate.py``); returns whether they were attached.

    Nothing to do (False, silently) when ``cfg`` asks for none of them. An upstream without the hook gets none
    either (False) with an :class:`AugmentationSkipped` warning: the hook is optional, its input is its own
    business, and mixup, which acts on waveforms, still applies.
    """
    if not (cfg.freqm or cfg.timem or cfg.noise):
        return False
    hook = getattr(upstream, "set_input_augment", None)
    if not callable(hook):
        asked = ", ".join(f"{k}={getattr(cfg, k)}" for k in ("freqm", "timem", "noise") if getattr(cfg, k))
        warnings.warn(f"augment {asked} skipped: {type(upstream).__name__} has no set_input_augment hook to "
                      f"take SpecAugment / noise (mixup, on waveforms, still applies)", AugmentationSkipped,
                      stacklevel=2)
        return False
    hook(SpecAugment(cfg, generator))
    return True


# ------------------------------------------------------------------------------------------ weight averaging
class WeightAverage:
    """Running mean of state dicts (SSAST ``weight_averaging``: the per-epoch models ``wa_start..wa_end``
    averaged key by key); integer buffers keep the latest value."""

    def __init__(self):
        self.sum: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, state: dict) -> None:
        for k, v in state.items():
            v = v.detach().cpu()
            if v.is_floating_point():
                self.sum[k] = self.sum[k] + v.float() if k in self.sum else v.float().clone()
            else:
                self.sum[k] = v.clone()
        self.count += 1

    def average(self) -> dict:
        if not self.count:
            raise ValueError("WeightAverage.average: no state was added")
        return {k: v / self.count if v.is_floating_point() else v for k, v in self.sum.items()}

    def state_dict(self) -> dict:
        return {"sum": self.sum, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.sum, self.count = dict(state["sum"]), int(state["count"])
