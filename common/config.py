"""Typed YAML configs: dataclass defaults <- base layer <- experiment YAML <- CLI ``key=value``.

The dinov2 / nanoGPT way, without their ``eval``/``exec``: every value is parsed with ``yaml.safe_load`` and
checked against the dataclass field's annotation. Nested dataclasses take dotted keys (``optim.lr=1e-4``);
a ``dict`` field takes dotted keys into the dict (``objective.mask_patch=250``) and YAML mappings merge
into it key by key. Errors are :class:`ConfigError` naming the key, where it came from (file or command
line), and what was expected or which keys were close.

>>> cfg = load_config(PretrainConfig, "configs/pretrain/ssast_patch_400.yaml", ["optim.lr=5e-5"])
>>> dump_config(cfg, "exp/run/config.yaml")   # the resolved config, written atomically

Type rules (annotation -> accepted values): ``int`` (not bool), ``float`` (ints and numeric strings too,
because YAML 1.1 reads ``1e-4`` as a string), ``bool``, ``str`` (a CLI value is kept verbatim, so
``name=007`` stays ``"007"``), ``X | None`` (``null``, ``~`` or ``None``), ``list[X]``, ``tuple[X, ...]``,
``tuple[X, Y]``, ``Literal[...]``, ``dict`` / ``dict[str, X]``, nested dataclasses, ``Any``.

What a run does with its config folder (one run per folder, locks, resumes) is :mod:`common.rundir`'s.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from common.files import write_atomic

__all__ = ["ConfigError", "config_from_dict", "config_to_dict", "dump_config", "flatten_config",
           "load_config", "merge_config", "parse_override"]

_MISSING = object()


class ConfigError(ValueError):
    """A config key that is unknown, missing or of the wrong type; the message names it and its source."""


class _CliValue:
    """A command-line value: the raw text and its YAML parse (``str`` fields keep the raw text)."""

    def __init__(self, text: str):
        self.text = text
        try:
            self.parsed = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            self.parsed = text  # e.g. an unbalanced bracket: let the type check name it


# ------------------------------------------------------------------------------------------ type checks
def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_dict_type(tp: Any) -> bool:
    return tp is dict or typing.get_origin(tp) is dict


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class _TypeMismatch(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` converted to annotation ``tp``, or :class:`_TypeMismatch`."""
    if isinstance(value, _CliValue):
        if _accepts_str(tp) and not (value.parsed is None and _accepts_none(tp)):
            value = value.text  # a string field takes the text as typed, not its YAML reading
        else:
            value = value.parsed
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if type(None) in args and (value is None or (isinstance(value, str) and value in ("None", "none"))):
            return None
        for arm in args:
            if arm is type(None):
                continue
            try:
                return _coerce(value, arm)
            except _TypeMismatch:
                continue
        raise _TypeMismatch
    if origin is typing.Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        raise _TypeMismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _TypeMismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _TypeMismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _TypeMismatch from None
        raise _TypeMismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _TypeMismatch
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _TypeMismatch
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise _TypeMismatch
        return [_coerce(v, args[0]) for v in value] if args else list(value)
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise _TypeMismatch
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if len(args) != len(value):
            raise _TypeMismatch
        return tuple(_coerce(v, a) for v, a in zip(value, args))
    if _is_dict_type(tp):
        if not isinstance(value, Mapping):
            raise _TypeMismatch
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, vt) for k, v in value.items()}
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        raise _TypeMismatch
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _TypeMismatch
    raise _TypeMismatch


def _accepts_str(tp: Any) -> bool:
    if tp is str or tp is Path:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_accepts_str(a) for a in typing.get_args(tp))
    return False


def _accepts_mapping(tp: Any) -> bool:
    if tp is Any or _is_dict_type(tp) or _is_dataclass_type(tp):
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_accepts_mapping(a) for a in typing.get_args(tp))
    return False


def _accepts_none(tp: Any) -> bool:
    return tp is Any or (typing.get_origin(tp) in (typing.Union, types.UnionType)
                         and type(None) in typing.get_args(tp))


def _show(value: Any) -> str:
    return repr(value.text if isinstance(value, _CliValue) else _plain(value))


def _plain(value: Any) -> Any:
    """Strip CLI wrappers from values going into untyped (``dict`` / ``Any``) slots."""
    if isinstance(value, _CliValue):
        return value.parsed
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


# ------------------------------------------------------------------------------------------ merging
def _defaults(cls: type) -> dict[str, Any]:
    """Field name -> default value, nested dataclasses as dicts; required fields -> ``_MISSING``."""
    hints = _hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        elif _is_dataclass_type(hints[f.name]):
            value = _defaults(hints[f.name])
        else:
            value = _MISSING
        out[f.name] = config_to_dict(value, keep_tuples=True) if dataclasses.is_dataclass(value) else value
    return out


def _unknown_key(key: str, known: Iterable[str], source: str) -> ConfigError:
    known = sorted(known)
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown config key '{key}' in {source}{hint} Valid keys here: {', '.join(known)}")


def _deep_merge(base: Mapping, update: Mapping) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = _plain(v)
    return out


def _merge(tree: dict, cls: type, update: Mapping, source: str, prefix: str = "") -> None:
    """Merge ``update`` (from ``source``) into the field tree of ``cls`` in place, checking every key."""
    if not isinstance(update, Mapping):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<top level>'}' in {source} must be a "
                          f"mapping of keys to values, got {_show(update)}")
    hints = _hints(cls)
    for key, value in update.items():
        if not isinstance(key, str) or key not in hints or key not in tree:
            raise _unknown_key(f"{prefix}{key}", [k for k in hints if k in tree], source)
        tp, name = hints[key], f"{prefix}{key}"
        if _is_dataclass_type(tp):
            current = tree[key] if isinstance(tree[key], dict) else {}
            if isinstance(value, Mapping):
                _merge(current, tp, value, source, name + ".")
                tree[key] = current
                continue
            if isinstance(value, tp):
                tree[key] = config_to_dict(value, keep_tuples=True)
                continue
        elif _is_dict_type(tp) and isinstance(value, Mapping):
            merged = _deep_merge(tree[key] if isinstance(tree[key], Mapping) else {}, value)
            try:
                tree[key] = _coerce(merged, tp)
            except _TypeMismatch:
                raise ConfigError(f"config key '{name}' in {source} expects {_type_name(tp)}, got "
                                  f"{merged!r}") from None
            continue
        if isinstance(value, Mapping) and not _accepts_mapping(tp):
            sub = ", ".join(f"'{name}.{k}'" for k in value)
            raise ConfigError(f"config key '{name}' in {source} is a {_type_name(tp)} value, not a section: "
                              f"{sub} cannot be set")
        try:
            tree[key] = _coerce(value, tp)
        except _TypeMismatch:
            raise ConfigError(f"config key '{name}' in {source} expects {_type_name(tp)}, got {_show(value)} "
                              f"({type(_plain(value)).__name__})") from None


def _construct(cls: type, tree: Mapping, prefix: str = "") -> Any:
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        value = tree.get(f.name, _MISSING)
        if value is _MISSING:
            raise ConfigError(f"config key '{prefix}{f.name}' is required ({_type_name(hints[f.name])}) but "
                              f"was not set")
        if _is_dataclass_type(hints[f.name]) and isinstance(value, Mapping):
            value = _construct(hints[f.name], value, f"{prefix}{f.name}.")
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # the dataclass's own __post_init__ checks
        text = str(err)
        if text.split(" ", 1)[0] in hints:  # "lr must be > 0" -> "optimizer.lr must be > 0": the key in full
            raise ConfigError(f"invalid {cls.__name__}: {prefix}{text}") from err
        where = f" (section '{prefix.rstrip('.')}')" if prefix else ""
        raise ConfigError(f"invalid {cls.__name__}{where}: {text}") from err


def parse_override(item: str) -> dict:
    """``"a.b.c=v"`` -> ``{"a": {"b": {"c": <v>}}}`` (``<v>`` parsed later against the field type)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"command-line override {item!r} must look like key=value (dotted keys for "
                          f"nested sections, e.g. optim.lr=1e-4)")
    out: dict = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = _CliValue(text)
    return out


def _read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, got "
                          f"{type(data).__name__}")
    return dict(data)


def load_config(cls: type, yaml_path: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                base: Mapping | None = None) -> Any:
    """Build ``cls`` from its defaults, then ``base``, then the YAML file, then ``key=value`` overrides.

    Args:
        cls: a dataclass type (fields may nest other dataclasses).
        yaml_path: experiment YAML; None for none.
        overrides: ``"key=value"`` strings, dotted keys for nested fields, in order (later wins).
        base: an optional layer between the defaults and the YAML (e.g. a CLI shortcut's settings).

    Raises:
        ConfigError: unknown key (with close matches), wrong type, or a required key left unset.
    """
    if not _is_dataclass_type(cls):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    tree = _defaults(cls)
    if base:
        _merge(tree, cls, base, "the base settings")
    if yaml_path is not None:
        _merge(tree, cls, _read_yaml(yaml_path), f"config file {yaml_path}")
    for item in overrides:
        _merge(tree, cls, parse_override(item), f"command-line override {item!r}")
    return _construct(cls, tree)


def merge_config(cfg: Any, overrides: Iterable[str] = ()) -> Any:
    """A copy of dataclass instance ``cfg`` with ``key=value`` overrides applied and checked."""
    tree = config_to_dict(cfg, keep_tuples=True)
    for item in overrides:
        _merge(tree, type(cfg), parse_override(item), f"command-line override {item!r}")
    return _construct(type(cfg), tree)


def config_from_dict(cls: type, data: Mapping, source: str = "a dict") -> Any:
    """Build ``cls`` from its defaults updated by ``data`` (e.g. a config stored in a checkpoint)."""
    tree = _defaults(cls)
    _merge(tree, cls, data, source)
    return _construct(cls, tree)


def config_to_dict(cfg: Any, keep_tuples: bool = False) -> Any:
    """Plain YAML-safe data: dataclasses -> dicts, tuples -> lists (unless ``keep_tuples``), paths -> str."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name), keep_tuples) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return {k: config_to_dict(v, keep_tuples) for k, v in cfg.items()}
    if isinstance(cfg, tuple) and keep_tuples:
        return tuple(config_to_dict(v, keep_tuples) for v in cfg)
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v, keep_tuples) for v in cfg]
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


class _Dumper(yaml.SafeDumper):
    """Block-style mappings, one-line lists (``betas: [0.9, 0.999]``)."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def dump_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    write_atomic(path, text)


# ------------------------------------------------------------------------------------------ flattening
def flatten_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and scalars are leaves (tuples compared as lists)."""
    if isinstance(tree, Mapping) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten_config(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): config_to_dict(tree)}
