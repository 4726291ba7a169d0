"""Run folders: one run per folder, written by one process at a time, with outputs checked before any work.

Shared by pretraining and downstream runs:

* :func:`check_run_dir` refuses a folder that holds another configuration (naming every differing key, as
  :func:`config_diff` lists them), a finished run without ``--resume``, and ``--resume`` without a checkpoint;
* :func:`run_dir_lock` holds an exclusive lock on the folder while a run writes into it;
* :func:`ensure_writable_dir` checks an output folder before hours of training, not after;
* :func:`truncate_jsonl` drops the log lines a resumed run is about to redo.

Errors are :class:`~common.config.ConfigError` (a ``ValueError``): the CLIs print them on one line.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import yaml

from common.config import ConfigError, flatten_config
from common.files import tmp_path, write_atomic

__all__ = ["check_run_dir", "config_diff", "ensure_writable_dir", "os_reason", "read_saved_config",
           "run_dir_lock", "truncate_jsonl"]

_ABSENT = object()


def config_diff(saved: Mapping, current: Mapping, ignore: Iterable[str] = (),
                defaults: Mapping | None = None) -> list[str]:
    """The keys whose values differ between two config trees, one readable line each, in key order.

    Keys are dotted (``optimizer.lr``); ``ignore`` lists keys (or section prefixes, ``run.data_root``) left
    out of the comparison. Values compare as their JSON text, so ``1e-4`` read back from YAML equals
    ``0.0001``. ``defaults`` (a config tree of default values): a key the saved config lacks, because it was
    saved before the key existed, is no difference while its current value is the default, which is how the
    saved run behaved.

    >>> config_diff({"run": {"seed": 1}, "lr": 0.1}, {"run": {"seed": 7}, "lr": 0.1})
    ['run.seed was 1, now 7']
    """
    ignore = tuple(ignore)
    old, new = flatten_config(saved), flatten_config(current)
    base = flatten_config(defaults) if defaults is not None else {}
    lines = []
    for key in sorted(set(old) | set(new)):
        if any(key == i or key.startswith(i + ".") for i in ignore):
            continue
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a is _ABSENT:
            if key in base and _same(base[key], b):
                continue  # a key added since the run was saved, at the value the run had
            lines.append(f"{key} is new (now {b!r})")
        elif b is _ABSENT:
            lines.append(f"{key} was {a!r}, now absent")
        elif not _same(a, b):
            lines.append(f"{key} was {a!r}, now {b!r}")
    return lines


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def read_saved_config(path: str | os.PathLike) -> dict:
    """The resolved config a run saved (``config.yaml``), as plain data; ConfigError if unreadable."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read the saved config {path}: {err}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"the saved config {path} is not a mapping of keys to values")
    return dict(data)


def check_run_dir(run_dir: str | os.PathLike, config: Mapping, resume: bool, ignore: Iterable[str] = (),
                  markers: Sequence[str] = ("last.ckpt",), name_flag: str = "-n",
                  allow_changes: bool = False, defaults: Mapping | None = None) -> list[str]:
    """Refuse to write a run into ``run_dir`` when that would mix it with another one.

    * ``run_dir/config.yaml`` holds another configuration (keys in ``ignore`` aside): refused, with the
      differing keys, whether resuming or not;
    * not ``resume`` and the folder holds a run of this configuration (one of ``markers`` exists): refused,
      the user passes ``--resume`` or a new name;
    * ``resume`` and there is no ``run_dir/last.ckpt``: refused.

    With ``allow_changes`` a resume may change the configuration; the differing keys are returned (else
    ``[]``). ``defaults``: as in :func:`config_diff` (keys added since the folder's run, at their default).

    Raises:
        ConfigError: naming the folder and, for a changed configuration, every differing key.
    """
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if saved.is_file():
        diff = config_diff(read_saved_config(saved), config, ignore, defaults)
        if diff and resume and allow_changes:
            if not (run_dir / "last.ckpt").is_file():
                raise ConfigError(f"--resume: no checkpoint {run_dir / 'last.ckpt'} to continue from")
            return diff
        if diff and resume:
            raise ConfigError(f"cannot resume {run_dir}: the configuration changed: {'; '.join(diff)}. "
                              f"Resume with the run's own settings, or start a new run with another "
                              f"{name_flag} NAME")
        if diff:
            raise ConfigError(f"{run_dir} holds a run of another configuration: {'; '.join(diff)}. Choose "
                              f"another {name_flag} NAME for this run")
    if resume and not (run_dir / "last.ckpt").is_file():
        raise ConfigError(f"--resume: no checkpoint {run_dir / 'last.ckpt'} to continue from (drop --resume "
                          f"to start the run)")
    held = [m for m in markers if (run_dir / m).exists()]
    if not resume and held:
        raise ConfigError(f"{run_dir} already holds a run of this configuration ({', '.join(held)}); pass "
                          f"--resume to continue it, or another {name_flag} NAME to start a new one")
    return []


def ensure_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create folder ``path`` if needed and check that a file can be written in it; ConfigError otherwise.

    Done before a run starts so that an unwritable output fails in a second, not after hours of training.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tmp_path(path / "write-check")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{what} {path} is not writable: {os_reason(err)}") from None
    return path


def os_reason(err: OSError) -> str:
    """Why a path could not be created or written, in words: ``'/x/f' is a file, not a folder``, or the OS's
    message with the path it concerns."""
    if isinstance(err, (FileExistsError, NotADirectoryError)) and err.filename:
        blocker = Path(err.filename)
        while blocker != blocker.parent and not blocker.exists():  # the component that is a file
            blocker = blocker.parent
        if blocker.is_file():
            return f"{blocker} is a file, not a folder"
    where = f" ({err.filename})" if err.filename else ""
    return f"{err.strerror or type(err).__name__}{where}"


@contextlib.contextmanager
def run_dir_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` while a run writes into it; a second process asking for the same
    folder at the same time gets a ConfigError at once (``fcntl.flock``; a no-op where it is unavailable)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ConfigError(f"run folder {run_dir} is not writable: {os_reason(err)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(f"{run_dir} is in use by another run (process {holder}); wait for it to end or "
                              f"choose another experiment name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def truncate_jsonl(path: Path, step: int) -> None:
    """Keep the lines of a ``{"step": ...}`` log up to ``step``, atomically: a run that resumes from a
    checkpoint redoes the steps logged after it (pretraining's ``losses.jsonl``, a downstream run's
    ``evals.jsonl``)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines()
             if ln.strip() and json.loads(ln)["step"] <= step]
    write_atomic(path, "".join(ln + "\n" for ln in lines))
