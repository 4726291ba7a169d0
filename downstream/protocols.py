"""Family downstream protocols: each family's own pipeline for a task, as data with its provenance.

The papers' numbers come from each family's own code: SSAST fine-tuned AS-20K / ESC-50 / KS2 with its PSLA
data loader and KS1 / SID / ER through its own SUPERB upstream; MAE-AST ran s3prl with configs of its own.
Those settings live in ``configs/protocols/<family>.yaml``, one entry per (task, mode), each value with the
official file and line (or paper section) it comes from. This module loads them, checks every key against
:class:`~downstream.config.DownstreamConfig`, and layers the one of a run (later wins)::

    DownstreamConfig defaults <- configs/downstream/<task>[_finetune].yaml <- family protocol <- -o key=value
    DownstreamConfig defaults <- family protocol <- -c FILE <- -o key=value            (with -c, in the task
                                                                                         config's place)

The config key ``protocol`` picks the layer: ``official`` (default), ``s3prl`` (the protocol without its
``upstream_overrides``: the family's recipe on the upstream as s3prl's expert builds it, e.g. SSAST's 1 s
windows) or ``none`` (the task config alone). An upstream's family is the registry's
(``upstream.registry.family_of``), its protocols the family's ``protocol_file``; plug-in upstreams and frozen
probes (no paper ran one) have no protocol. :func:`render` prints a resolved config with
the upstream's front end and the provenance of every protocol value (``run_downstream.py --print-config``).
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml

from common.config import ConfigError, config_to_dict, load_config
from common.resources import config_path, shipped_path
from common.yamlfile import read_yaml, require_keys
from upstream import registry

from .config import DownstreamConfig
from .tasks import TASKS

CONFIG_DIR = config_path("downstream")  # task configs, shipped with the package
PROTOCOL_DIR = config_path("protocols")
MODES = ("finetune", "frozen")
_FORBIDDEN = ("run.", "protocol", "family_overrides")  # a protocol says how to train, not which run this is


class ProtocolError(ValueError):
    """A protocol file that does not validate; the message names the file and the key."""


@dataclass(frozen=True)
class Setting:
    key: str  # dotted DownstreamConfig key, e.g. "optimizer.lr" or "upstream_overrides.target_length"
    value: Any
    source: str  # official file and line, or paper section


@dataclass(frozen=True)
class Variant:
    upstreams: tuple[str, ...]  # fnmatch patterns of upstream names, e.g. "ssast_frame_*"
    settings: tuple[Setting, ...]


@dataclass(frozen=True)
class Protocol:
    family: str
    task: str
    mode: str  # 'finetune' | 'frozen'
    pipeline: str  # the official pipeline in one line
    settings: tuple[Setting, ...]
    variants: tuple[Variant, ...] = ()
    path: str = ""  # the protocol file, relative to the repository

    @property
    def name(self) -> str:
        return f"{self.family}/{self.task}/{self.mode}"

    def settings_for(self, upstream: str) -> tuple[Setting, ...]:
        """The settings for ``upstream``: the entry's, then those of every variant matching it (later
        wins)."""
        merged = {s.key: s for s in self.settings}
        for variant in self.variants:
            if any(fnmatch(upstream, pattern) for pattern in variant.upstreams):
                merged.update({s.key: s for s in variant.settings})
        return tuple(merged.values())


@dataclass(frozen=True)
class FamilyProtocols:
    family: str
    protocols: Mapping[tuple[str, str], Protocol]  # (task, mode) -> protocol
    path: str


# ------------------------------------------------------------------------------------------ loading
def load_protocols(directory: str | Path | None = None) -> tuple[FamilyProtocols, ...]:
    """Every ``<family>.yaml`` of ``directory`` (default ``configs/protocols``), validated.

    Raises:
        ProtocolError: naming the file and key: unknown or missing keys, an unknown task or mode, a setting
            that is not a DownstreamConfig key or has the wrong type, a setting without its source.
    """
    return _load_dir(str(Path(directory or PROTOCOL_DIR).resolve()))


@functools.lru_cache(maxsize=4)
def _load_dir(directory: str) -> tuple[FamilyProtocols, ...]:
    families = tuple(_load_file(p) for p in sorted(Path(directory).glob("*.yaml")))
    names = [f.family for f in families]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ProtocolError(f"{directory}: family {dup} is defined by more than one protocol file")
    return families


def _rel(path: Path) -> str:
    """``configs/...`` for a shipped file (no machine path in printed provenance), else the path as given."""
    try:
        return "configs/" + path.resolve().relative_to(config_path().resolve()).as_posix()
    except ValueError:
        return str(path)


def _keys(data: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    return require_keys(data, where, required, optional, error=ProtocolError)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ProtocolError(f"{where} must be a non-empty string, got {value!r}")
    return " ".join(value.split())


def _patterns(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(p, str) and p for p in value):
        raise ProtocolError(f"{where} must be a non-empty list of upstream name patterns, got {value!r}")
    return tuple(value)


def _load_file(path: Path) -> FamilyProtocols:
    rel = _rel(path)
    data = read_yaml(path, rel, error=ProtocolError)
    top = _keys(data, rel, ("family", "protocols"), ("shared",))
    family = _text(top["family"], f"{rel}: family")
    entries = top["protocols"]
    if not isinstance(entries, Mapping) or not entries:
        raise ProtocolError(f"{rel}: protocols must be a non-empty mapping of 'task/mode' to a protocol")
    protocols = {}
    for name, entry in entries.items():
        task, _, mode = str(name).partition("/")
        where = f"{rel}: protocols.{name}"
        if task not in TASKS:
            raise ProtocolError(f"{where}: unknown task {task!r}; tasks: {sorted(TASKS)}")
        if mode not in MODES:
            raise ProtocolError(f"{where}: the key must be 'task/mode' with mode in {list(MODES)}, got "
                                f"{name!r}")
        d = _keys(entry, where, ("pipeline", "settings"), ("variants",))
        variants = d.get("variants", [])
        if not isinstance(variants, list):
            raise ProtocolError(f"{where}.variants must be a list, got {type(variants).__name__}")
        parsed = []
        for i, v in enumerate(variants):
            vd = _keys(v, f"{where}.variants[{i}]", ("upstreams", "settings"))
            parsed.append(Variant(_patterns(vd["upstreams"], f"{where}.variants[{i}].upstreams"),
                                  _settings(vd["settings"], f"{where}.variants[{i}].settings")))
        protocols[(task, mode)] = Protocol(family, task, mode, _text(d["pipeline"], f"{where}.pipeline"),
                                           _settings(d["settings"], f"{where}.settings"), tuple(parsed), rel)
    return FamilyProtocols(family, protocols, rel)


def _settings(data: Any, where: str) -> tuple[Setting, ...]:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ProtocolError(f"{where} must be a mapping of config keys to {{value, source}}")
    out = []
    for key, item in data.items():
        if not isinstance(key, str) or any(key == f or key.startswith(f) for f in _FORBIDDEN):
            raise ProtocolError(f"{where}: {key!r} cannot be set by a protocol (run identity, the protocol "
                                f"choice and family_overrides are not a family's recipe)")
        d = _keys(item, f"{where}.{key}", ("value", "source"))
        setting = Setting(key, d["value"], _text(d["source"], f"{where}.{key}.source"))
        try:  # the key must exist in DownstreamConfig and the value have its type
            load_config(DownstreamConfig, None, base=_tree([setting]))
        except (ConfigError, ValueError, TypeError) as err:
            raise ProtocolError(f"{where}.{key}: {str(err).replace(' in the base settings', '')}") from None
        out.append(setting)
    return tuple(out)


def _tree(settings: Sequence[Setting]) -> dict:
    """Dotted settings -> the nested mapping DownstreamConfig's loader merges."""
    tree: dict = {}
    for s in settings:
        node = tree
        *parents, leaf = s.key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = s.value
    return tree


def _deep_merge(base: Mapping, update: Mapping) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


# ------------------------------------------------------------------------------------------ lookup
def family_of(upstream: str) -> FamilyProtocols | None:
    """The protocols of registered upstream ``upstream``'s family (``ssast_patch_400`` -> ssast, from
    ``configs/protocols/ssast.yaml``); None for a plug-in or a family without a protocol file."""
    spec = registry.family_of(upstream)
    if spec is None:
        return None
    path = shipped_path(spec.protocol_file, prefer_shipped=True)
    return _family_file(str(path.resolve()), spec.name) if path.is_file() else None


@functools.lru_cache(maxsize=16)
def _family_file(path: str, family: str) -> FamilyProtocols:
    protocols = _load_file(Path(path))
    if protocols.family != family:
        raise ProtocolError(f"{protocols.path}: family is {protocols.family!r}, but it is the protocol file "
                            f"of family {family!r}")
    return protocols


def protocol_for(upstream: str, task: str, finetune: bool) -> Protocol | None:
    """The family protocol of ``upstream`` on ``task`` in this mode, or None (plug-ins, frozen probes)."""
    family = family_of(upstream)
    return family.protocols.get((task, "finetune" if finetune else "frozen")) if family else None


def applied_settings(protocol: Protocol | None, upstream: str, choice: str) -> tuple[Setting, ...]:
    """What the ``protocol`` choice layers for ``upstream``: all its settings, those that are not upstream
    overrides (``s3prl``), or none."""
    if protocol is None or choice == "none":
        return ()
    settings = protocol.settings_for(upstream)
    if choice == "s3prl":
        settings = tuple(s for s in settings if not s.key.startswith("upstream_overrides."))
    return settings


# ------------------------------------------------------------------------------------------ resolution
def task_config_path(task: str, finetune: bool) -> Path:
    return CONFIG_DIR / f"{task}{'_finetune' if finetune else ''}.yaml"


def resolve(upstream: str, task: str, finetune: bool, config_path: str | Path | None = None,
            overrides: Sequence[str] = ()) -> DownstreamConfig:
    """The DownstreamConfig of a run (``run`` section left at its defaults), layered as the module says.

    Raises:
        ConfigError: a bad task config, ``-c`` file or override, naming it (a bad protocol file raises
            :class:`ProtocolError`).
    """
    path = Path(config_path) if config_path is not None else task_config_path(task, finetune)
    first = load_config(DownstreamConfig, path, overrides)  # every file and override checked, protocol read
    settings = applied_settings(protocol_for(upstream, task, finetune), upstream, first.protocol)
    if not settings:
        return first
    layer = _tree(settings)
    if config_path is not None:  # -c takes the task config's place, above the protocol
        return load_config(DownstreamConfig, path, overrides, base=layer)
    task_yaml = read_yaml(path, f"config file {path}", error=ConfigError) or {}  # checked just above
    return load_config(DownstreamConfig, None, overrides, base=_deep_merge(task_yaml, layer))


# ------------------------------------------------------------------------------------------ printing
def describe_upstream(name: str, ckpt: str | None = None, overrides: Mapping | None = None) -> dict | None:
    """The settings of upstream ``name`` as ``overrides`` build it: front end, input windows, feature layout.

    Built on the ``meta`` device (no weights, no memory); without ``ckpt`` from the registered defaults (the
    released checkpoints' settings), with it from the file (a checkpoint this project wrote keeps its front
    end). None for a plug-in upstream (``package.module:builder``), whose front end is its own.
    """
    import torch

    import upstream as upstreams
    from upstream.registry import resolve_builder

    if name not in upstreams.list_upstreams():
        resolve_builder(name)  # an unknown name fails here, by name
        return None
    kwargs = dict(overrides or {})
    if ckpt is None:
        kwargs["random_init"] = True
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        warnings.simplefilter("ignore")  # meta tensors: "copying ... is a no-op" from load_state_dict
        if ckpt is None:
            stack.enter_context(torch.device("meta"))
        model = upstreams.load(name, ckpt, **kwargs)
    cfg = model.cfg
    return {
        "name": name, "family": cfg.family, "checkpoint": ckpt,
        # norm_mean / norm_std: fbank statistics; target_length: input length
        "frontend": asdict(cfg.frontend),
        "window_mode": cfg.window_mode if cfg.window_frames is not None else "whole clip",
        "window_frames": cfg.window_frames, "pooling": cfg.pooling,
        "sample_rate": model.sample_rate, "downsample_rate": model.get_downsample_rates("hidden_states"),
        "hidden_size": model.hidden_size, "num_layers": model.num_layers,
    }


class _Dumper(yaml.SafeDumper):
    """Block-style mappings, one-line lists (as the saved config.yaml)."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
_Dumper.add_representer(tuple, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", list(v),
                                                                   flow_style=True))


def _get(tree: Mapping, key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def render(cfg: DownstreamConfig, config_path: str | Path | None = None,
           overrides: Sequence[str] = ()) -> str:
    """The resolved configuration of a run as YAML: every DownstreamConfig key (what the run's ``config.yaml``
    holds), then ``upstream`` (the front end and features these settings build: ``frontend.norm_mean`` /
    ``norm_std`` are the fbank statistics, ``frontend.target_length`` the input length) and ``provenance``
    (the layers, the protocol, and each protocol value's source)."""
    r = cfg.run
    protocol = protocol_for(r.upstream, r.task, r.finetune)
    settings = applied_settings(protocol, r.upstream, cfg.protocol)
    tree = config_to_dict(cfg)
    layers = ["DownstreamConfig defaults"]
    if config_path is None:
        layers.append(_rel(task_config_path(r.task, r.finetune)))
    if settings:
        layers.append(f"protocol {protocol.name} ({cfg.protocol}, {protocol.path})")
    if config_path is not None:
        layers.append(f"-c {config_path}")
    layers += [f"-o {o}" for o in overrides]
    sources = {}
    for s in settings:
        final = _get(tree, s.key)
        changed = f"{s.source} [protocol value {s.value!r}, set to {final!r} by -c/-o]"
        sources[s.key] = s.source if final == s.value else changed
    if protocol is None:
        why = ("none: frozen probes have no paper protocol" if not r.finetune
               else "none: no family protocol for this upstream and task")
    else:
        why = f"{protocol.name}: {protocol.pipeline}" + ("" if settings or not protocol.settings
                                                         else f" (not applied: protocol={cfg.protocol})")
    out = dict(tree)
    out["upstream"] = describe_upstream(r.upstream, r.ckpt, cfg.overrides_for(r.upstream))
    out["provenance"] = {"layers": layers, "protocol": why, "settings": sources}
    head = (f"# run_downstream.py -u {r.upstream} -d {r.task}{' -f' if r.finetune else ''}: resolved "
            "configuration\n"
            f"# layers, later wins: {' < '.join(layers)}\n"
            "# every key but 'upstream' and 'provenance' is what the run saves as config.yaml\n")
    return head + yaml.dump(out, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=110)
