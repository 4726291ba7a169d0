"""Upstream registry: name -> builder.

``@register_upstream("ssast_patch_400")`` sits on a builder ``(ckpt=None, **overrides) -> Upstream``;
:func:`load` finds it by name, or imports a user's own builder given as ``"package.module:builder"``.
A duplicate name raises, so two plug-ins cannot silently shadow each other.
"""
from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import Callable

from torch import nn

from .safe_load import trusting_checkpoints

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_upstream(name: str, description: str = "") -> Callable:
    """Decorator registering ``fn(ckpt=None, **overrides) -> Upstream`` under ``name``."""

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"upstream {name!r} is already registered (by {_REGISTRY[name].__module__})")
        _REGISTRY[name] = fn
        _DESCRIPTIONS[name] = description or (inspect.getdoc(fn) or "").split("\n")[0]
        return fn

    return deco


def list_upstreams() -> list[str]:
    """All registered names, sorted."""
    return sorted(_REGISTRY)


def describe_upstreams() -> dict[str, str]:
    return {n: _DESCRIPTIONS[n] for n in list_upstreams()}


def resolve_builder(name: str) -> Callable[..., nn.Module]:
    """A registered name, ``"s3prl:NAME"`` for an s3prl upstream, or ``"package.module:builder"`` for a user's
    own upstream."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith("s3prl:"):
        from .s3prl_adapter import s3prl_builder

        return s3prl_builder(name)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ValueError(f"upstream {name!r}: cannot import module {module_name!r}: {e}") from None
        if not hasattr(module, attr):
            raise ValueError(f"upstream {name!r}: module {module_name!r} has no attribute {attr!r}")
        builder = getattr(module, attr)
        if not callable(builder):
            raise ValueError(f"upstream {name!r}: {attr!r} is not callable")
        return builder
    close = [n for n in _REGISTRY if name.split("_")[0] in n][:6]
    hint = f"; similar: {close}" if close else ""
    raise ValueError(f"unknown upstream {name!r}{hint}. Registered: {', '.join(list_upstreams())}; "
                     f"or give 'package.module:builder' for your own")


def load(name: str, ckpt: str | os.PathLike | None = None, trust_checkpoint: bool = False,
         model_config: str | os.PathLike | dict | None = None, refresh: bool = False, **overrides) -> nn.Module:
    """Build upstream ``name``, from ``ckpt`` when given (official or astbench format).

    Overrides use the official argument names (``fstride``, ``tstride``, ``window_secs``, ...); an unknown
    one raises naming it. ``trust_checkpoint=True`` lets a checkpoint that needs more than the official
    formats be unpickled in full, which can run code stored in it (:mod:`upstream.safe_load`); it warns.
    ``model_config`` and ``refresh`` are the arguments s3prl gives every upstream: ``model_config`` is a mapping
    (or a YAML file of one) of more overrides, under the keyword ones; ``refresh`` asks s3prl to download
    again and means nothing here. For ``s3prl:NAME`` both go to s3prl's own entry.
    """
    builder = resolve_builder(name)
    if name.startswith("s3prl:"):
        overrides = {**overrides, "model_config": model_config, "refresh": refresh}
    else:
        overrides = {**_model_config_overrides(name, model_config), **overrides}
    with trusting_checkpoints(trust_checkpoint):
        return _build(name, builder, ckpt, overrides)


def _model_config_overrides(name: str, model_config) -> dict:
    """s3prl's ``model_config`` as overrides: None or "" -> none; a mapping; or a YAML file holding one."""
    if model_config is None or model_config == "":
        return {}
    if isinstance(model_config, dict):
        return dict(model_config)
    path = Path(model_config).expanduser()
    if not path.is_file():
        raise ValueError(f"upstream {name!r}: model_config {str(model_config)!r} is not a YAML file of overrides")
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"upstream {name!r}: model_config {path} is not valid YAML: {' '.join(str(err).split())}")
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"upstream {name!r}: model_config {path} must hold a mapping of overrides, got "
                         f"{type(loaded).__name__}")
    return loaded


def _build(name: str, builder: Callable[..., nn.Module], ckpt, overrides: dict) -> nn.Module:
    if name in _REGISTRY:  # ours: their errors already name the problem
        model = builder(ckpt=ckpt, **overrides) if ckpt is not None else builder(**overrides)
    else:  # a user's builder: whatever it raises becomes one line naming it
        try:
            model = builder(ckpt=ckpt, **overrides) if ckpt is not None else builder(**overrides)
        except Exception as err:  # noqa: BLE001
            message = " ".join(str(err).split()) or "(no message)"
            raise ValueError(f"upstream {name!r}: the builder raised {type(err).__name__}: {message}") from err
        if not isinstance(model, nn.Module):
            raise ValueError(f"upstream {name!r}: the builder returned {type(model).__name__}, not a "
                             f"torch.nn.Module following the upstream contract (upstream/interface.py)")
    if not getattr(model, "name", None):
        model.name = name
    return model


def checkpoint_dir() -> Path:
    """Where official checkpoints are looked up by file name: ``$ASTBENCH_CHECKPOINTS`` or
    ``~/.cache/astbench/checkpoints``."""
    return Path(os.environ.get("ASTBENCH_CHECKPOINTS", Path.home() / ".cache" / "astbench" / "checkpoints"))


def resolve_checkpoint(name: str, ckpt, default_file: str | None, random_init: bool):
    """The checkpoint to build ``name`` from: ``ckpt``, else ``default_file`` in :func:`checkpoint_dir`,
    else ``None`` when ``random_init`` (a from-scratch baseline). Raises with instructions otherwise."""
    from .checkpoint import read_checkpoint

    if ckpt is not None:
        if random_init:
            raise ValueError(f"upstream {name!r}: give either ckpt or random_init=True, not both")
        return ckpt
    if random_init:
        return None
    if default_file:
        path = checkpoint_dir() / default_file
        if path.exists():
            return path
        from .download import download_hint

        raise FileNotFoundError(
            f"upstream {name!r} needs its checkpoint {default_file!r}: place it at {path} (or set "
            f"ASTBENCH_CHECKPOINTS), pass ckpt=/--ckpt with its path, or use random_init=True (command line: "
            f"-o upstream_overrides.random_init=true) for an untrained model{download_hint(default_file)}"
        )
    raise FileNotFoundError(f"upstream {name!r} has no released checkpoint: pass ckpt=/--ckpt (e.g. one "
                            f"pretrained with run_pretrain.py) or random_init=True (command line: "
                            f"-o upstream_overrides.random_init=true)")


def check_overrides(name: str, overrides: dict, allowed: set[str]) -> None:
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"upstream {name!r} does not take override(s) {unknown}; it takes {sorted(allowed)}")
