"""Step-indexed training batches and the ``torchrun`` process group, for pretraining and downstream runs.

``StepBatchSampler`` makes the training order a pure function of ``(seed, micro-batch index)``: a run resumed
at step ``s`` draws exactly the batches an uninterrupted run draws from step ``s`` on, and under ``torchrun``
each rank takes its slice of the same global batch, so the configured batch size is the global batch whatever
the number of processes. This replaces a ``DistributedSampler``: it splits one global batch across ranks
instead of one epoch, which is what makes N ranks equal one process. :func:`setup_distributed` is the one
place that joins the process group and picks this process's device.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from common.config import ConfigError


class StepBatchSampler(Sampler):
    """This rank's indices for each micro-batch in ``[start, stop)``.

    Epoch ``e`` is a permutation of the ``n`` items drawn from ``(seed, e)`` (``(seed, stream, e)`` when a
    ``stream`` is given), or, with ``weights``, ``n`` draws with replacement in proportion to them
    (``WeightedRandomSampler``, s3prl KS1). Micro-batch ``m`` holds positions ``[m * batch, (m + 1) * batch)``
    of the epochs laid end to end; rank ``r`` of ``world`` takes the ``r``-th of ``world`` equal slices.

    Args:
        num_items: dataset size n.
        batch_size: global micro-batch size (divisible by ``world_size``).
        seed: run seed.
        start, stop: micro-batch indices to yield.
        weights: ``(n,)`` sampling weights, or None for shuffling.
        rank, world_size: this process and the number of processes.
        stream: an extra seed word for the epoch orders (pretraining uses 0, so that its orders stay apart
            from the per-position crop draws it seeds with ``(seed, 1, position)``); None: ``(seed, e)``.
        keyed: yield ``(position, item)`` pairs instead of items, for datasets whose random draws are seeded
            by the stream position (pretraining crops), so that they too are a function of the step.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start: int, stop: int,
                 weights: torch.Tensor | None = None, rank: int = 0, world_size: int = 1, *,
                 stream: int | None = None, keyed: bool = False):
        if num_items < 1:
            raise ValueError("StepBatchSampler needs a non-empty dataset")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must be divisible by the {world_size} processes")
        self.n, self.batch, self.seed, self.start, self.stop = num_items, batch_size, seed, start, stop
        self.p = None if weights is None else (weights / weights.sum()).double().numpy()
        self.rank, self.per_rank = rank, batch_size // world_size
        self._key = [seed] if stream is None else [seed, stream]
        self.keyed = keyed
        self._epochs: dict[int, np.ndarray] = {}

    def position(self, m: int) -> tuple[int, int]:
        """(epoch, index within the epoch) of the first item of micro-batch ``m``."""
        return divmod(m * self.batch, self.n)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._epochs:
            self._epochs = {e: o for e, o in self._epochs.items() if e >= epoch - 1}
            rng = np.random.default_rng([*self._key, epoch])
            draw = rng.permutation(self.n) if self.p is None else rng.choice(self.n, self.n, p=self.p)
            self._epochs[epoch] = draw
        return self._epochs[epoch]

    def __iter__(self) -> Iterator[list]:
        for m in range(self.start, self.stop):
            lo = m * self.batch + self.rank * self.per_rank
            items = [int(self._order(p // self.n)[p % self.n]) for p in range(lo, lo + self.per_rank)]
            yield list(zip(range(lo, lo + self.per_rank), items)) if self.keyed else items

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


@dataclass
class DistContext:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this call created the process group, so it destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, values: list[float]) -> list[float]:
        """Element-wise mean of ``values`` over ranks."""
        if not self.enabled or not values:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def gather(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device: str | None = None) -> tuple[DistContext, torch.device]:
    """Join the ``torchrun`` group when ``WORLD_SIZE > 1`` and pick this process's device.

    Args:
        device: ``'cuda'``, ``'cuda:<i>'``, ``'cpu'``, or None for CUDA when available. Under ``torchrun`` a
            CUDA process takes GPU ``LOCAL_RANK`` (one GPU per rank) and the group uses nccl; CPU uses gloo.
            A single CUDA process uses the given (or current) GPU and makes it current.

    Returns:
        ``(context, device)``. A process group the caller already made is joined, not owned: ``close()`` then
        leaves it for the caller (e.g. a benchmark sweep running many jobs in one ``torchrun``).

    Raises:
        ConfigError: CUDA was asked for but is not available.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was requested but CUDA is not available")
    if not use_cuda:
        dev = torch.device("cpu")
    elif world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        dev = torch.device(device or "cuda")
        dev = dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
    if use_cuda:
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistContext(), dev
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), owns), dev
