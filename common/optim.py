"""Adam / AdamW construction (fused kernels where this torch has them) and gradient clipping, shared by
pretraining and downstream training."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["clip_gradients", "fused_adam_supported", "make_adam"]


def fused_adam_supported(device: torch.device) -> bool:
    """Whether this torch build has fused Adam/AdamW kernels for ``device`` (CUDA, CPU, MPS, XPU, ...)."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:  # older torch: fused kernels were CUDA-only
        return device.type == "cuda"
    return device.type in _get_fused_kernels_supported_devices()


def make_adam(params: Iterable, device: torch.device, *, name: Literal["adam", "adamw"] = "adam",
              lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
              weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` (``'adam'``: L2 decay coupled into the gradient) or ``AdamW`` (``'adamw'``:
    decoupled decay) over ``params`` (tensors or parameter groups; a group's own ``weight_decay`` wins).

    The fused kernel is used where ``device`` has one: one kernel for the whole update, on CPU too, where it
    is 3.5-4x faster per step than the default (foreach) path on 100 M parameters and agrees with it to float
    rounding.
    """
    if name not in ("adam", "adamw"):
        raise ValueError(f"optimizer name must be 'adam' or 'adamw', got {name!r}")
    kwargs = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
    if fused_adam_supported(device):
        kwargs["fused"] = True
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return cls(params, **kwargs)


def clip_gradients(params: Iterable[nn.Parameter], max_norm: float, mode: str = "global") -> Tensor:
    """Clip gradients in place as the method's official code does; returns the global norm before clipping.

    ``'global'``: ``torch.nn.utils.clip_grad_norm_`` (one scale for every gradient, as fairseq's
    ``clip_norm``).
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
