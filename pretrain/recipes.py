"""From a recipe name to a resolved :class:`~pretrain.config.PretrainConfig`: what ``run_pretrain.py
-u/-c/-o`` and the benchmark's pretraining rows both ask for.

A shortcut (``-u ssast_patch``) pins objective keys (``family``, ``token``) and names the family's paper
recipe; its family's :class:`~upstream.registry.FamilySpec` defines it (:func:`shortcuts`). ``-u
package.module:builder`` names one's own objective, with a recipe given. Overrides (``key=value``, dotted)
apply on top; the run folder, data, device and fbank cache are the caller's.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from common.config import ConfigError, load_config
from common.resources import shipped_path
from upstream.registry import PretrainShortcut, pretrain_shortcuts

from .config import PretrainConfig

__all__ = ["resolve_config", "shortcuts"]

_DEFAULT_OUT_DIR = PretrainConfig().out_dir  # what a recipe without an out_dir line resolves to


def shortcuts() -> dict[str, PretrainShortcut]:
    """``run_pretrain.py -u`` names -> :class:`~upstream.registry.PretrainShortcut` (pinned objective keys,
    default recipe), every family's."""
    return pretrain_shortcuts()


def resolve_config(upstream: str | None = None, recipe: str | os.PathLike | None = None,
                   overrides: Sequence[str] = (), *, out_dir: str | os.PathLike, data: str | None = None,
                   device: str | None = None, fbank_cache: str | None = None,
                   resume: bool = False) -> PretrainConfig:
    """The config of one pretraining run, as ``run_pretrain.py`` resolves its arguments (no data is read).

    Args:
        upstream: a shortcut name (:func:`shortcuts`) or ``package.module:builder``; None: the recipe's
            ``objective.family`` decides.
        recipe: a recipe YAML (``configs/...`` names the shipped one unless such a file is in the current
            folder); None: the shortcut's paper recipe, or on ``resume`` the run's own ``config.yaml``.
        overrides: ``key=value`` items, dotted for nested keys (``optim.lr=1e-4``).
        out_dir: the run folder. It is the caller's alone: an ``out_dir`` from an override, or from a recipe
            that names another folder, is refused instead of being silently replaced.
        data, device, fbank_cache: when given, ``data.path``, ``device`` and ``data.fbank_cache``.
        resume: the run is being resumed (its ``config.yaml`` is then the default recipe).

    Raises:
        ConfigError: an unknown shortcut, no recipe, an unknown key or bad value (named), an override that
            contradicts the shortcut, or an ``out_dir`` other than ``out_dir``.
    """
    known = shortcuts()
    if upstream and upstream not in known and ":" not in upstream:
        raise ConfigError(f"-u {upstream!r} is not one of {sorted(known)} or package.module:builder")
    shortcut = known.get(upstream) if upstream else None
    pinned = dict(shortcut.objective) if shortcut else ({"family": upstream} if upstream else {})
    out_dir = Path(out_dir)
    yaml_path = shipped_path(recipe) if recipe else None  # configs/... also outside the checkout
    if yaml_path is None and resume and (out_dir / "config.yaml").is_file():
        yaml_path = out_dir / "config.yaml"  # the resumed run's own resolved config
    elif yaml_path is None and shortcut is not None:
        yaml_path = shipped_path(shortcut.recipe, prefer_shipped=True)
    elif yaml_path is None:
        raise ConfigError("give a recipe with -c configs/pretrain/<recipe>.yaml or a shortcut with -u "
                          f"({', '.join(known)})")
    for item in overrides:
        if item.split("=", 1)[0].strip() == "out_dir":
            raise ConfigError(f"-o {item}: the run folder is not a config key here; it is {out_dir} "
                              f"(run_pretrain.py: --expdir DIR -n NAME)")
    cfg = load_config(PretrainConfig, yaml_path, overrides, base={"objective": pinned})
    for key, want in pinned.items():
        if cfg.objective.get(key) != want:
            raise ConfigError(f"-u {upstream} sets objective.{key}={want!r} but {yaml_path} or an "
                              f"override says {cfg.objective.get(key)!r}")
    own = yaml_path == out_dir / "config.yaml"  # a resumed run's config names its folder (maybe moved since)
    if not own and cfg.out_dir not in (_DEFAULT_OUT_DIR, str(out_dir)) and Path(cfg.out_dir) != out_dir:
        raise ConfigError(f"{yaml_path} sets out_dir: {cfg.out_dir}, but this run's folder is {out_dir} "
                          f"(run_pretrain.py: --expdir/-n): delete the out_dir line from the recipe")
    cfg.out_dir = str(out_dir)
    if data is not None:
        cfg.data.path = data
    if device is not None:
        cfg.device = device
    if fbank_cache is not None:
        cfg.data.fbank_cache = fbank_cache
    return cfg
