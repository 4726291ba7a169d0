"""Self-supervised pretraining of the three families (or one's own objective): ``run(cfg) -> Path``.

    from pretrain import resolve_config, run
    cfg = resolve_config("ssast_patch", overrides=["max_steps=20000"], out_dir="exp/pretrain/a", data="DIR")
    upstream_pt = run(cfg)            # resume=True continues exactly; probe=callback scores the encoder

Modules: ``config`` (typed settings), ``recipes`` (shortcuts and recipe resolution), ``data`` and
``fbank_cache`` (clips and their crops), ``objective`` (objective and optimizer), ``schedule`` (lr / weight
decay), ``checkpoint``, ``report`` (rank 0's outputs), ``stopping`` (signals and the errors that end a run)
and ``engine`` (the loop). This package imports
``upstream`` and ``common`` only; the CLI is ``run_pretrain.py``.
"""
from .config import DataConfig, OptimConfig, PretrainConfig
from .data import DataError, UnlabeledAudio, collate_views, list_audio_files
from .engine import run
from .objective import build_objective, build_optimizer
from .recipes import resolve_config, shortcuts
from .schedule import Schedule
from .stopping import NonFiniteLossError, PretrainStopped

__all__ = ["DataConfig", "DataError", "NonFiniteLossError", "OptimConfig", "PretrainConfig",
           "PretrainStopped", "Schedule", "UnlabeledAudio", "build_objective", "build_optimizer",
           "collate_views", "list_audio_files", "resolve_config", "run", "shortcuts"]
