"""The typed pretraining config: what ``configs/pretrain/*.yaml`` and ``run_pretrain.py -o key=value`` set.

``PretrainConfig`` holds the run (batch, steps, logging, device), ``DataConfig`` the data pipeline and
``OptimConfig`` the optimizer and its schedules; ``objective`` is the family's own section, checked by the
family (``pretrain.objective``). Each knob is honoured by ``pretrain.engine``, or refused: an unknown key by
``common.config``, an impossible value here (``ValueError`` naming the key).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["DataConfig", "OptimConfig", "PretrainConfig", "RESUMABLE_CHANGES"]


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
    # 'linear': lr * (step + 1) / warmup_steps, every step; 'step': SSAST's (traintest_mask.py trainmask): the
    # lr is set to lr * step / warmup_steps only every warmup_every steps and kept in between, so 0 for the
    # first ones
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
    # 'global': one norm over every gradient (torch clip_grad_norm_, fairseq clip_norm: MAE-AST);
    # 'per_parameter': each parameter's gradient clipped to clip_grad on its own (DINO utils.clip_gradients:
    # ASiT)
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
    grad_accum: int = 1  # micro-batches per rank per step (see pretrain.engine's docstring)
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
    out_dir: str = "exp/pretrain/default"  # the run folder (run_pretrain.py: --expdir/-n, not -o out_dir)

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "max_steps", "log_every", "ckpt_every", "probe_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:  # numpy's seed range
            raise ValueError(f"seed must lie in 0..2**32-1, got {self.seed}")


# Keys a resumed run may change: where things are, how they are logged or loaded (the data order and masks are
# functions of (seed, step), not of these). grad_accum changes the masks and is warned about.
RESUMABLE_CHANGES = ("out_dir", "device", "data.path", "data.num_workers", "data.fbank_cache", "log_every",
                     "ckpt_every", "tensorboard", "compile", "find_unused_parameters", "grad_accum",
                     "probe_every")
