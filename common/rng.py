"""Random-number-generator state of a process: what a checkpoint stores so that a resumed run draws as an
uninterrupted one would (torch CPU, NumPy's and Python's global generators, and the CUDA generators)."""
from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state"]


def rng_state(cuda: bool = True) -> dict:
    """The global generators' state: ``{"torch", "numpy", "python", "cuda"}``.

    Args:
        cuda: include every CUDA device's generator (``"cuda"`` is None without CUDA or when False).
    """
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if cuda and torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (a state without ``"cuda"``, or one saved on a machine without
    CUDA, leaves the CUDA generators as they are)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
