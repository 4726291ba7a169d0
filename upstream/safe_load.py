"""Reading checkpoint files without letting them run code.

A ``torch.save`` file is a pickle, and a pickle can name any Python callable to be called while it loads
(``__reduce__``): ``torch.load(weights_only=False)`` of a stranger's file runs the stranger's code. Every file
this project reads with ``torch.load`` (official checkpoints, its own ``upstream.pt``, ``dev-best.ckpt``,
``last.ckpt``) goes through :func:`load_checkpoint_file`, which uses torch's restricted unpickler
(``weights_only=True``: tensors, containers, numbers, strings) plus an explicit allow-list of the few
other names that the formats store (found with ``torch.serialization.get_unsafe_globals_in_checkpoint``):

* ASiT ``checkpoint.pth``: ``args`` is an ``argparse.Namespace``.
* MAE-AST (fairseq) ``.pt`` written by older fairseq: ``cfg`` is an omegaconf ``DictConfig`` (its nodes,
  metadata, ``typing.Any``, ``defaultdict``, ``dict`` / ``list`` / ``int`` as type references). omegaconf is
  not a dependency: those names are bound to the stand-ins below, which only receive the pickled fields and
  are turned into plain dicts and lists by :func:`plain_config`.
* this project's ``last.ckpt``: numpy's global RNG state (an ``ndarray`` of ``uint32`` inside a tuple).

Anything else is refused with a :class:`CheckpointError` naming the file and the names it wanted. Full
unpickling happens only behind the explicit opt-in ``trust_checkpoint=True`` (``--trust-checkpoint``), and
even then only for a file that needs it; it warns with :class:`TrustedCheckpointWarning`.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import contextvars
import os
import pickle
import re
import typing
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

OPT_IN = "pass trust_checkpoint=True (on the command line: --trust-checkpoint)"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the file and the reason named."""


class TrustedCheckpointWarning(UserWarning):
    """A file was unpickled in full because the caller opted in with ``trust_checkpoint=True``."""


# ---------------------------------------------------------------------------------------------- stand-ins
class OmegaConfStandIn:
    """Base of the stand-ins for omegaconf's pickled classes.

    The restricted unpickler creates one with ``cls.__new__(cls)`` and fills ``__dict__`` with the pickled
    state (omegaconf's ``__getstate__``: ``_metadata``, ``_parent``, ``_content`` or ``_val``); no method of
    omegaconf runs, and none of these classes defines a method the unpickler would call.
    """

    def __repr__(self) -> str:
        return f"<{self.omegaconf_name} stand-in>"


class DictConfigStandIn(OmegaConfStandIn):
    omegaconf_name = "omegaconf.dictconfig.DictConfig"  # _content: {key: node} (or None / a "${...}" string)


class ListConfigStandIn(OmegaConfStandIn):
    omegaconf_name = "omegaconf.listconfig.ListConfig"  # _content: [node, ...]


class ValueNodeStandIn(OmegaConfStandIn):
    omegaconf_name = "omegaconf.nodes.AnyNode"  # _val: the value


class MetadataStandIn(OmegaConfStandIn):
    omegaconf_name = "omegaconf.base.Metadata"  # ref_type, object_type, key, flags, resolver_cache, ...


def _value_node(name: str) -> type:
    return type(name.rsplit(".", 1)[1] + "StandIn", (ValueNodeStandIn,), {"omegaconf_name": name})


_STANDINS: list[type] = [
    DictConfigStandIn, ListConfigStandIn, ValueNodeStandIn, MetadataStandIn,
    type("ContainerMetadataStandIn", (MetadataStandIn,),
         {"omegaconf_name": "omegaconf.base.ContainerMetadata"}),
    # typed leaves of structured configs: same state as AnyNode
    *(_value_node(f"omegaconf.nodes.{n}") for n in ("StringNode", "IntegerNode", "FloatNode", "BooleanNode")),
]

_NP_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, wherever this numpy keeps it

# name in the pickle -> the object it is bound to while loading. Nothing here runs code from the file:
# classes are created empty and given their pickled fields; the callables build arrays, dicts and lists.
SAFE_GLOBALS: dict[str, Any] = {
    "argparse.Namespace": argparse.Namespace,  # ASiT's args
    **{cls.omegaconf_name: cls for cls in _STANDINS},  # fairseq omegaconf cfg
    "typing.Any": typing.Any,
    "collections.defaultdict": collections.defaultdict,  # omegaconf Metadata.resolver_cache
    "builtins.dict": dict,
    "builtins.list": list,
    "builtins.int": int,
    "numpy.ndarray": np.ndarray,  # np.random.get_state() in last.ckpt
    "numpy.dtype": np.dtype,
    # what numpy.dtype("u4") returns since numpy 1.25; not named in the file, but the unpickler sets its state
    f"numpy.dtypes.{type(np.dtype(np.uint32)).__name__}": type(np.dtype(np.uint32)),
    "numpy._core.multiarray._reconstruct": _NP_RECONSTRUCT,  # numpy >= 2
    "numpy.core.multiarray._reconstruct": _NP_RECONSTRUCT,  # files written with numpy 1.x
}


# ---------------------------------------------------------------------------------------------- opt-in
_TRUST: contextvars.ContextVar[bool] = contextvars.ContextVar("astbench_trust_checkpoint", default=False)


@contextlib.contextmanager
def trusting_checkpoints(trust: bool = True) -> Iterator[None]:
    """Within the block, checkpoint reads that are not told otherwise use ``trust``.

    How ``upstream.load(..., trust_checkpoint=True)`` reaches the read inside a family's builder (or a
    plug-in's) without every builder having to pass it on.
    """
    token = _TRUST.set(bool(trust))
    try:
        yield
    finally:
        _TRUST.reset(token)


def trust_default() -> bool:
    """The opt-in in force here: set by :func:`trusting_checkpoints`, False otherwise."""
    return _TRUST.get()


# ---------------------------------------------------------------------------------------------- loading
def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    core = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)  # torch's reason
    text = core.group(1) if core else text
    return text if len(text) <= 300 else text[:297] + "..."


def _refused_globals(path: Path, err: BaseException) -> list[str]:
    """The names outside the allow-list that ``path`` asks for (all of them where the file is a zip)."""
    try:
        with torch.serialization.safe_globals(_safe_global_list()):
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # legacy (non-zip) format or unreadable: the unpickler's message names the first one
        names = re.findall(r"GLOBAL ([\w.]+)", str(err))
    return sorted(set(names))


def _safe_global_list() -> list[tuple[Any, str]]:
    return [(obj, name) for name, obj in SAFE_GLOBALS.items()]


def load_checkpoint_file(path: str | os.PathLike, trust_checkpoint: bool | None = None,
                         map_location: str | torch.device | None = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load`` of ``path`` that cannot run code from the file unless the caller opts in.

    Args:
        path: any file written with ``torch.save``.
        trust_checkpoint: allow full unpickling for a file that needs names outside :data:`SAFE_GLOBALS`
            (warns). None: the default in force (:func:`trusting_checkpoints`, else False).
        map_location: as ``torch.load``.
        what: how the file is called in errors (``"checkpoint"``, ``"resume checkpoint"``, ...).

    Raises:
        CheckpointError naming the file: missing, unreadable, or asking for names outside the allow-list
        (listed, with how to opt in).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} {'is not a file' if path.exists() else 'does not exist'}")
    trust = trust_default() if trust_checkpoint is None else trust_checkpoint
    refused: list[str] = []
    try:
        with torch.serialization.safe_globals(_safe_global_list()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _refused_globals(path, err)
        if not trust and refused:
            raise CheckpointError(
                f"{what} {path} was refused: it needs Python objects outside the checkpoint formats' "
                f"allow-list ({', '.join(refused)}), and unpickling those can run code; if you trust the "
                f"file and where it came from, {OPT_IN}") from None
        if not trust:
            raise CheckpointError(f"{what} {path} could not be read safely ({_one_line(err)}); if you trust "
                                  f"the file, {OPT_IN}") from None
    except Exception as err:  # not a torch file, truncated, empty, ...
        raise CheckpointError(f"{what} {path} could not be read by torch.load: {_one_line(err)}") from None
    # only a file that needs more than the allow-list, read with the opt-in, gets here
    named = ", ".join(refused) or "outside the allow-list"
    warnings.warn(f"trust_checkpoint: unpickling {path} in full ({named}); this runs whatever code the file "
                  f"names", TrustedCheckpointWarning, stacklevel=2)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except ModuleNotFoundError as err:
        raise CheckpointError(f"{what} {path} needs the Python module {err.name!r} to unpickle") from None
    except Exception as err:
        raise CheckpointError(f"{what} {path} could not be read by torch.load: {_one_line(err)}") from None


# ---------------------------------------------------------------------------------------------- configs
def plain_config(obj: Any) -> Any:
    """A stored config as plain Python: omegaconf containers (stand-ins, or the real ones when a trusted
    load used an installed omegaconf) become dicts and lists, nodes their values, a Namespace a dict."""
    if isinstance(obj, DictConfigStandIn):
        content = obj.__dict__.get("_content")
        return {k: plain_config(v) for k, v in content.items()} if isinstance(content, dict) else content
    if isinstance(obj, ListConfigStandIn):
        content = obj.__dict__.get("_content")
        return [plain_config(v) for v in content] if isinstance(content, list) else content
    if isinstance(obj, ValueNodeStandIn):
        return plain_config(obj.__dict__.get("_val"))
    if isinstance(obj, argparse.Namespace):
        return {k: plain_config(v) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {k: plain_config(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain_config(v) for v in obj]
    if type(obj).__module__.startswith("omegaconf"):  # a real omegaconf object (trusted load)
        from omegaconf import OmegaConf

        return OmegaConf.to_container(obj, resolve=True)
    return obj
