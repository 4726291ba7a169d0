"""Batches whose cost follows each clip's own length.

A batch is padded to its longest clip, so one 85 s recording among 2 s clips makes its whole batch cost 85 s
per clip. Two remedies, both using the lengths the header scan found (``Clip.loaded_secs``):

* evaluation and the feature-cache build (:func:`length_batches`): clips are taken in their split's order,
  longest first (``datasets.sort_by_length``), and a batch closes when one more clip would make
  ``clips x longest`` exceed a budget of ``batch_size x`` the split's median length, or at ``batch_size``
  clips. Whole clips are processed (upstreams window long audio themselves); a long clip simply shares its
  batch with few others, so no batch costs much more than a full batch of typical clips. The metric does not
  depend on the batching (the upstream contract: padding never leaks into valid frames).
* training (:class:`LengthGroupedSampler`): the batches of ``distributed.StepBatchSampler``'s stream, taken
  ``window`` micro-batches at a time, are re-formed from that window's clips sorted by length, and the
  window's batches are then shuffled. Every clip is still seen once per epoch, batch sizes are unchanged, and
  micro-batch ``m`` stays a pure function of ``(seed, m)``, so ``--resume`` and ``torchrun`` ranks draw what
  an uninterrupted single process draws.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from common.distributed import StepBatchSampler


def length_batches(secs: Sequence[float | None], indices: Sequence[int], batch_size: int,
                   budget_secs: float | None = None) -> list[list[int]]:
    """Cut ``indices`` (in their order) into consecutive batches of at most ``batch_size`` clips whose padded
    length ``len(batch) * max(secs)`` stays within ``budget_secs``; a clip longer than the budget is alone.

    Args:
        secs: seconds of every clip of the dataset (``None`` where unknown: plain ``batch_size`` chunks).
        indices: the clips to batch, in order (longest first makes the padding small).
        batch_size: most clips per batch.
        budget_secs: padded seconds per batch; None: ``batch_size x`` the median of ``secs[indices]``.

    Returns:
        Lists of dataset indices; their concatenation is ``indices``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    indices = list(indices)
    if any(secs[i] is None for i in indices):
        return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    if budget_secs is None:
        budget_secs = batch_size * float(np.median([secs[i] for i in indices])) if indices else 0.0
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0.0
    for i in indices:
        padded = (len(current) + 1) * max(longest, secs[i])
        if current and (len(current) == batch_size or padded > budget_secs):
            batches.append(current)
            current, longest = [], 0.0
        current.append(i)
        longest = max(longest, secs[i])
    if current:
        batches.append(current)
    return batches


def padded_secs(batches: Sequence[Sequence[int]], secs: Sequence[float]) -> float:
    """Total padded seconds ``sum(len(b) * max(secs[b]))``: what batches cost an upstream (for
    measurements)."""
    return float(sum(len(b) * max(secs[i] for i in b) for b in batches if len(b)))


class LengthGroupedSampler(StepBatchSampler):
    """``StepBatchSampler`` whose micro-batches hold clips of similar length.

    Micro-batch ``m`` belongs to window ``w = m // window``. The window's ``window x batch_size`` stream
    positions (the same items ``StepBatchSampler`` would give those micro-batches, epoch permutations or
    class-balanced draws included) are sorted by length (ties keep stream order), cut into ``window`` global
    batches, and these are shuffled with a generator seeded by ``(seed, w)``; rank ``r`` takes its slice of
    the global batch as in ``StepBatchSampler``.

    Args:
        secs: ``(n,)`` training length of each item in seconds (``Clip.loaded_secs``).
        window: micro-batches sorted together; 1 gives ``StepBatchSampler``'s batches.
        Others: as ``StepBatchSampler``.
    """

    def __init__(self, secs: Sequence[float], batch_size: int, seed: int, start: int, stop: int,
                 weights: torch.Tensor | None = None, rank: int = 0, world_size: int = 1, window: int = 50):
        super().__init__(len(secs), batch_size, seed, start, stop, weights, rank, world_size)
        if window < 1:
            raise ValueError(f"window must be >= 1 micro-batch, got {window}")
        self.secs = np.asarray(secs, dtype=np.float64)
        self.window = window
        self._cached: tuple[int, np.ndarray] | None = None  # (window index, its (window, batch) items)

    def _window(self, w: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != w:
            lo = w * self.window * self.batch
            positions = range(lo, lo + self.window * self.batch)
            stream = np.array([self._order(p // self.n)[p % self.n] for p in positions])
            # longest first, ties in stream order
            stream = stream[np.argsort(-self.secs[stream], kind="stable")]
            batches = stream.reshape(self.window, self.batch)
            batches = batches[np.random.default_rng([self.seed, 1, w]).permutation(self.window)]
            self._cached = (w, batches)
        return self._cached[1]

    def global_batch(self, m: int) -> list[int]:
        """All ranks' items of micro-batch ``m``."""
        return self._window(m // self.window)[m % self.window].tolist()

    def __iter__(self):
        for m in range(self.start, self.stop):
            lo = self.rank * self.per_rank
            yield self.global_batch(m)[lo:lo + self.per_rank]
