"""Upstream and family registry: name -> builder, family name -> :class:`FamilySpec`.

``@register_upstream("ssast_patch_400", family="ssast")`` sits on a builder ``(ckpt=None, **overrides) ->
Upstream``; :func:`load` finds it by name, or imports a user's own builder given as
``"package.module:builder"``. A duplicate name raises, so two plug-ins cannot silently shadow each other.

Each family module (``upstream/ssast.py``, ``mae_ast.py``, ``asit.py``) ends with one :func:`register_family`
call: its :class:`FamilySpec` is the single place every other module asks about a family (its objective,
checkpoint format, pretraining recipes, downstream protocols, released checkpoints). Adding a family is one
module plus its configs. This module imports nothing of the project but :mod:`upstream.safe_load`.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from torch import nn

from .safe_load import trusting_checkpoints

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}
_UPSTREAM_FAMILY: dict[str, str] = {}  # registered upstream name -> family name
_FAMILIES: dict[str, FamilySpec] = {}

# Input-length spellings used before ``target_length`` became the one name: refused, naming the new key.
RENAMED_LENGTH_KEYS = {
    "window_secs": "target_length (fbank frames, 100 per second)",
    "input_tdim": "target_length (fbank frames per model input)",
    "num_frames": "target_length (fbank frames per model input)",
}


# ------------------------------------------------------------------------------------------ families
@dataclass(frozen=True)
class PretrainShortcut:
    """A ``run_pretrain.py -u NAME`` shortcut: the objective keys it pins and its recipes."""

    name: str  # e.g. "ssast_patch"
    objective: Mapping[str, Any]  # the objective keys it pins, family included: {"family": "ssast", ...}
    recipe: str  # default (paper) recipe, repo-relative: "configs/pretrain/ssast_patch_400.yaml"
    mini_recipe: str  # test-size recipe: "configs/pretrain/ssast_patch_mini.yaml"
    mini_upstream: str  # registered test-size upstream its checkpoints load as: "ssast_patch_mini"


@dataclass(frozen=True)
class FamilySpec:
    """Everything the rest of the project knows about one model family, defined in the family's module.

    Attributes:
        name: ``"ssast"``: the ``family`` of its objectives, :class:`~upstream.config.UpstreamConfig` and
            checkpoints, and the stem of ``configs/protocols/<name>.yaml``.
        title: how tables and logs write it (``"SSAST"``).
        module: the module that implements it (``"upstream.ssast"``).
        objective: its :class:`~upstream.objective.Objective` subclass.
        objective_config: the dataclass of a recipe's ``objective`` section.
        frontend: ``(target_length) -> FbankConfig`` of its released checkpoints.
        overrides: the ``upstream.load`` overrides its upstreams take.
        checkpoint_format: its official checkpoint format, as error messages name it.
        detect_checkpoint: ``(top-level dict) -> bool``: is this its official format (top-level keys only).
        read_checkpoint: ``(obj, path, sha256, **options) -> RawCheckpoint`` for that format.
        shortcuts: its ``run_pretrain.py -u`` shortcuts; the first is the family's default recipe.
        releases: its rows of the download table (:func:`upstream.download.released`).
        upstream_prefix: ``(objective config) -> str``: the upstream-name prefix an encoder pretrained with it
            loads as (``"ssast_patch"``, ``"asit_base"``, ...).
    """

    name: str
    title: str
    module: str
    objective: type  # an upstream.objective.Objective subclass (typed loosely: that module imports this one)
    objective_config: type
    frontend: Callable[[int | None], Any]  # -> FbankConfig
    overrides: frozenset[str]
    checkpoint_format: str
    detect_checkpoint: Callable[[dict], bool]
    read_checkpoint: Callable[..., Any]  # -> RawCheckpoint
    shortcuts: tuple[PretrainShortcut, ...]
    upstream_prefix: Callable[[Any], str]
    releases: tuple[Any, ...] = ()  # OfficialCheckpoint rows

    def parse_objective(self, cfg: Mapping) -> Any:
        """The typed objective config from a recipe's ``objective`` mapping (its ``family`` key aside).

        Raises:
            ValueError: naming an unknown key (with the closest known one), or a renamed input-length key
                with its new name.
        """
        cfg = {k: v for k, v in cfg.items() if k != "family"}
        known = {f.name for f in fields(self.objective_config)}
        refuse_unknown(cfg, known, f"{self.name} objective key")
        return self.objective_config(**cfg)

    def build_objective(self, cfg: Mapping) -> Any:
        """The family's objective for a recipe's ``objective`` mapping (see :meth:`parse_objective`)."""
        return self.objective(self.parse_objective(cfg))

    def upstreams(self) -> list[str]:
        """The registered upstream names of this family, sorted."""
        return sorted(n for n, f in _UPSTREAM_FAMILY.items() if f == self.name)

    @property
    def protocol_file(self) -> str:
        """Its downstream protocols, repo-relative (``common.resources.shipped_path`` resolves it)."""
        return f"configs/protocols/{self.name}.yaml"

    @property
    def source_file(self) -> Path:
        """The file of :attr:`module`."""
        return Path(inspect.getsourcefile(importlib.import_module(self.module)))


def register_family(spec: FamilySpec) -> FamilySpec:
    """Make ``spec`` known to :func:`get_family` / :func:`families`; a second family of one name raises."""
    if spec.name in _FAMILIES:
        raise ValueError(f"family {spec.name!r} is already registered (by {_FAMILIES[spec.name].module})")
    _FAMILIES[spec.name] = spec
    return spec


def families() -> tuple[FamilySpec, ...]:
    """Every registered family, sorted by name."""
    return tuple(_FAMILIES[n] for n in sorted(_FAMILIES))


def get_family(name: str) -> FamilySpec:
    """The family called ``name``; ValueError listing the families otherwise."""
    if isinstance(name, str) and name in _FAMILIES:
        return _FAMILIES[name]
    raise ValueError(f"unknown family {name!r}; families: {', '.join(sorted(_FAMILIES))}")


def family_of(upstream: str) -> FamilySpec | None:
    """The family of registered upstream ``upstream``; None for a plug-in, ``s3prl:NAME``, an unknown name."""
    family = _UPSTREAM_FAMILY.get(upstream)
    return _FAMILIES.get(family) if family else None


def pretrain_shortcuts() -> dict[str, PretrainShortcut]:
    """Every family's ``run_pretrain.py -u`` shortcuts, by name."""
    return {s.name: s for f in families() for s in f.shortcuts}


def refuse_unknown(keys, known: set[str], what: str) -> None:
    """ValueError naming the first key of ``keys`` not in ``known``: the new name of a renamed input-length
    key, else the closest known name."""
    for key in keys:
        if key in known:
            continue
        if key in RENAMED_LENGTH_KEYS and "target_length" in known:
            raise ValueError(f"{what} {key!r} is now {RENAMED_LENGTH_KEYS[key]}")
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown {what} {key!r}{hint}; known: {sorted(known)}")


# ------------------------------------------------------------------------------------------ upstreams
def register_upstream(name: str, description: str = "", family: str | None = None) -> Callable:
    """Decorator registering ``fn(ckpt=None, **overrides) -> Upstream`` under ``name``, as a member of
    ``family`` when given (its family overrides and protocols then apply)."""

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"upstream {name!r} is already registered (by {_REGISTRY[name].__module__})")
        _REGISTRY[name] = fn
        _DESCRIPTIONS[name] = description or (inspect.getdoc(fn) or "").split("\n")[0]
        if family is not None:
            _UPSTREAM_FAMILY[name] = family
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
         model_config: str | os.PathLike | dict | None = None, refresh: bool = False,
         **overrides) -> nn.Module:
    """Build upstream ``name``, from ``ckpt`` when given (official or astbench format).

    Overrides use the official argument names (``fstride``, ``tstride``, ...), and ``target_length`` for the
    input length (fbank frames per model input); an unknown one raises naming it. ``trust_checkpoint=True``
    lets a checkpoint that needs more than the official formats be unpickled in full, which can run code
    stored in it (:mod:`upstream.safe_load`); it warns. ``model_config`` and ``refresh`` are the arguments
    s3prl gives every upstream: ``model_config`` is a mapping (or a YAML file of one) of more overrides, under
    the keyword ones; ``refresh`` asks s3prl to download again and means nothing here. For ``s3prl:NAME``
    both go to s3prl's own entry.
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
        raise ValueError(f"upstream {name!r}: model_config {str(model_config)!r} is not a YAML file of "
                         f"overrides")
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"upstream {name!r}: model_config {path} is not valid YAML: "
                         f"{' '.join(str(err).split())}") from None
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
            raise ValueError(f"upstream {name!r}: the builder raised {type(err).__name__}: "
                             f"{message}") from err
        if not isinstance(model, nn.Module):
            raise ValueError(f"upstream {name!r}: the builder returned {type(model).__name__}, not a "
                             f"torch.nn.Module following the upstream contract (upstream/interface.py)")
    if not getattr(model, "name", None):
        model.name = name
    return model


def check_overrides(name: str, overrides: dict, allowed: set[str]) -> None:
    """ValueError naming the overrides ``name`` does not take (a renamed input-length key: its new name)."""
    for key in overrides:
        if key in RENAMED_LENGTH_KEYS and key not in allowed and "target_length" in allowed:
            hint = ""
            if key == "window_secs" and isinstance(overrides[key], (int, float)):  # seconds -> frames
                hint = f": give target_length={round(overrides[key] * 100)}"
            raise ValueError(f"upstream {name!r}: override {key!r} is now {RENAMED_LENGTH_KEYS[key]}{hint}")
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"upstream {name!r} does not take override(s) {unknown}; it takes {sorted(allowed)}")
