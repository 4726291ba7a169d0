"""Reading the project's YAML data files (published tables, family protocols, user rows) with one-line errors.

Every data file the project loads by hand (rather than into a typed config, :mod:`common.config`) goes through
:func:`read_yaml`, and each mapping in it through :func:`require_keys`, so that a typo, a missing key or a
broken file fails with one line naming the file and the key, in the same words everywhere. The caller chooses
the exception class (e.g. ``PublishedError``, ``ProtocolError``), so callers keep catching what they did.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["read_yaml", "require_keys"]


def read_yaml(path: str | os.PathLike, what: str | None = None, error: type[Exception] = ValueError) -> Any:
    """The parsed content of the YAML file ``path`` (``yaml.safe_load``: plain data, never objects).

    Args:
        path: the file.
        what: how messages name the file (e.g. ``"rows file x.yaml"``); default the path.
        error: the exception class raised.

    Raises:
        error: ``"<what>: cannot read: <reason>"`` (missing, unreadable, not UTF-8) or
            ``"<what>: not valid YAML: <parser message on one line>"``.
    """
    path = Path(path)
    what = str(path) if what is None else what
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise error(f"{what}: cannot read: {err.strerror or type(err).__name__}") from None
    except UnicodeDecodeError as err:
        raise error(f"{what}: cannot read: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise error(f"{what}: not valid YAML: {' '.join(str(err).split())}") from None


def require_keys(data: Any, where: str, required: Sequence[str], optional: Sequence[str] = (),
                 error: type[Exception] = ValueError) -> dict[str, Any]:
    """``data`` as a dict, checked to be a mapping holding every ``required`` key and nothing outside
    ``required + optional``; ``where`` names it in messages (e.g. ``"x.yaml: table 'main' rows[2]"``).

    Raises:
        error: ``"<where> must be a mapping, got <type>"``,
            ``"<where>: unknown key(s) [...]; allowed: [...]"`` or ``"<where>: missing key(s) [...]"``.
    """
    allowed = [*required, *optional]
    if not isinstance(data, Mapping):
        raise error(f"{where} must be a mapping, got {type(data).__name__}")
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise error(f"{where}: unknown key(s) {unknown}; allowed: {allowed}")
    missing = [k for k in required if k not in data]
    if missing:
        raise error(f"{where}: missing key(s) {missing}")
    return dict(data)
