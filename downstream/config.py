"""A downstream run's configuration: the typed sections of ``configs/downstream/<task>[_finetune].yaml``.

``DownstreamConfig`` is what a run resolves (``downstream.protocols.resolve``: defaults <- task config <-
family protocol <- ``-c`` <- ``-o``), saves as ``<run folder>/config.yaml`` and rebuilds for ``-m evaluate``.
Every field is honoured by the run; an unknown key is refused by ``common.config`` naming it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from upstream.registry import family_of, get_family

from .augment import AugmentConfig, ScheduleConfig
from .datasets import DataConfig

PROTOCOL_CHOICES = ("official", "s3prl", "none")


def _at_least(cfg, low: int, *names: str) -> None:
    """ValueError naming the first field of ``cfg`` below ``low`` (the config loader adds its section)."""
    for name in names:
        if getattr(cfg, name) < low:
            raise ValueError(f"{name} must be >= {low}, got {getattr(cfg, name)}")


@dataclass
class RunnerConfig:
    total_steps: int = 200_000  # optimizer steps (s3prl runner.total_steps)
    eval_step: int = 5000  # evaluate the selection split every this many steps
    log_step: int = 100  # train loss, lr and gradient norm (before clipping) to the log and tensorboard
    batch_size: int = 32
    eval_batch_size: int = 32
    gradient_accumulate_steps: int = 1  # micro-batches per optimizer step
    gradient_clipping: float = 1.0  # s3prl default
    num_workers: int = 0
    # frozen runs: upstream features computed once, then read from disk (downstream.cache)
    feature_cache: bool = True

    def __post_init__(self):
        _at_least(self, 1, "total_steps", "eval_step", "log_step", "batch_size", "eval_batch_size",
                  "gradient_accumulate_steps")
        _at_least(self, 0, "num_workers")
        if not self.gradient_clipping > 0:  # also refuses NaN
            raise ValueError(f"gradient_clipping must be > 0 (s3prl: 1.0), got {self.gradient_clipping}")


@dataclass
class OptimizerConfig:
    """Adam over the head (and, under ``-f``, the upstream). ``lr`` is the head's (featurizer included);
    under ``-f`` the upstream's parameters learn at ``lr * upstream_lr_scale * layer scale``, where the layer
    scale is ``layer_decay ** (L - i)`` for block ``i`` (0-based) of the upstream's ``L`` blocks,
    ``layer_decay ** (L + 1)`` for what comes before the blocks (patch and position embeddings) and 1 for what
    comes after them (the final norm), as BEiT / data2vec / MAE fine-tuning (``downstream.engine``
    ``param_groups``). Both at 1.0 (the defaults): one lr for every parameter, as s3prl."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)  # SSAST PSLA recipe: (0.95, 0.999)
    weight_decay: float = 0.0  # SSAST PSLA recipe: 5e-7
    upstream_lr_scale: float = 1.0  # -f only: the upstream's lr as a multiple of lr
    layer_decay: float = 1.0  # -f only: layer-wise lr decay over the upstream's blocks; 1.0 = none

    def __post_init__(self):
        if not self.lr > 0:  # also refuses NaN
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must each lie in [0, 1), got {list(self.betas)}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 < self.upstream_lr_scale < float("inf"):
            raise ValueError(f"upstream_lr_scale must be > 0 and finite (a multiple of lr; to keep the "
                             f"upstream fixed, run without -f), got {self.upstream_lr_scale}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must lie in (0, 1] (1 = the same lr for every block), "
                             f"got {self.layer_decay}")

    @property
    def scaled(self) -> bool:
        """Whether the upstream learns at another lr than the head (``upstream_lr_scale`` or
        ``layer_decay`` set)."""
        return self.upstream_lr_scale != 1.0 or self.layer_decay != 1.0


@dataclass
class HeadConfig:
    kind: Literal["utterance", "psla"] = "utterance"  # s3prl UtteranceLevel | SSAST ft_avgtok mlp_head
    feature: Literal["hidden_states", "last_hidden_state"] = "hidden_states"  # s3prl -s
    proj_dim: int = 256

    def __post_init__(self):
        _at_least(self, 1, "proj_dim")


@dataclass
class RunConfig:
    """What this run is; saved so ``-m evaluate -e EXPDIR`` rebuilds it."""

    upstream: str = ""
    ckpt: str | None = None
    task: str = ""
    fold: int | None = None
    finetune: bool = False
    layer: int | None = None
    seed: int = 1337  # s3prl default
    data_root: str | None = None
    expname: str = ""
    label: str = ""  # table row (benchmark suites); empty = the upstream name

    def __post_init__(self):
        if not 0 <= self.seed < 2**32:  # what numpy's global seed takes
            raise ValueError(f"seed must lie in 0..2**32-1, got {self.seed}")


@dataclass
class DownstreamConfig:
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # -f PSLA recipes only
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    upstream_overrides: dict = field(default_factory=dict)  # passed to upstream.load (e.g. window_secs)
    # overrides for one family only, keyed by its name: {"ssast": {"target_length": 512}} applies to SSAST's
    # upstreams (a recipe's input length is SSAST's setting; MAE-AST and ASiT take whole clips)
    family_overrides: dict = field(default_factory=dict)
    # which family protocol (downstream.protocols) sits between the task config and -c/-o: 'official' (the
    # family's own pipeline), 's3prl' (its recipe on the upstream as s3prl's expert builds it) or 'none'
    protocol: str = "official"
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)  # bad files, training crops, batching, folder splits

    def __post_init__(self):
        if self.protocol not in PROTOCOL_CHOICES:
            raise ValueError(f"protocol must be 'official', 's3prl' or 'none', got {self.protocol!r}")
        for family in self.family_overrides:  # keyed by family name: an unknown one would silently do nothing
            get_family(family)

    def overrides_for(self, upstream: str) -> dict:
        """``upstream.load`` overrides of ``upstream``: its family's (``upstream.registry.family_of``; none
        for a plug-in), then ``upstream_overrides`` on top."""
        spec = family_of(upstream)
        overrides = self.family_overrides.get(spec.name, {}) if spec is not None else {}
        if not isinstance(overrides, dict):
            raise ValueError(f"family_overrides.{spec.name} must be a mapping of upstream overrides, "
                             f"got {overrides!r}")
        return {**overrides, **self.upstream_overrides}
