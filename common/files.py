"""Files that several processes may write at once: the feature caches' shards and indexes.

Used by ``downstream.cache`` (frozen upstream features) and ``pretrain.fbank_cache`` (pretraining fbanks).

* Temporary names are unique per writer, ``<name>.<host>.<pid>.<random>.tmp`` next to the final file,
  and renamed into place (``os.replace``, atomic on one filesystem), so two writers never share a
  half-written file.
* :func:`locked` holds an exclusive ``fcntl.flock`` on a lock file next to what it guards, so two
  processes building the same shard do the work once: the second waits, then finds the finished shard.
  The kernel releases the lock when its holder dies, so a killed build never blocks the next one. Where
  ``flock`` is unavailable (no ``fcntl``, or a filesystem without locks) the block runs unlocked: the
  unique names still keep both writers correct, they just both do the work.
* :func:`write_atomic` (text) and :func:`torch_save_atomic` (checkpoints) write through such a name.
* :class:`HashingWriter` checksums a file while it is written (no second read); :func:`file_checksum`
  checks it.
* :func:`remove_stale_tmps` deletes what dead writers left: a temporary file whose writer (same host) is
  no longer running, or that nobody has written to for :data:`STALE_AFTER_S` (a writer on another host,
  or a file named by an older version, ``*.tmp`` without a pid). A live writer's file is never touched.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: no locks, unique names only
    fcntl = None

CHECKSUM = "sha256"  # ~1.6 GB/s with the SHA extensions of current x86-64 and ARM CPUs (blake2b: ~1.0 GB/s)
STALE_AFTER_S = 3600.0  # a writer appends at least every batch; an hour without a write means it is gone
_HOST = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"
_TMP = re.compile(r"^(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.(?P<rand>[0-9a-f]{8})\.tmp$")


def tmp_path(path: Path) -> Path:
    """A temporary name next to ``path`` that no other writer uses: ``<name>.<host>.<pid>.<random>.tmp``."""
    return path.with_name(f"{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file of this writer, renamed into place."""
    tmp = tmp_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary file of this writer, renamed into place: a reader
    (or a run killed mid-write) never sees a half-written checkpoint."""
    import torch  # here, so that the text-only users of this module do not load torch

    path = Path(path)
    tmp = tmp_path(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process (or a pid beyond any range)
        return False
    except PermissionError:  # another user's process
        return True
    return True


def is_stale(tmp: Path, now: float | None = None) -> bool:
    """Whether the temporary file ``tmp`` was left by a writer that is gone; see the module docstring."""
    try:
        idle = (time.time() if now is None else now) - tmp.stat().st_mtime
    except OSError:
        return False  # already gone
    m = _TMP.match(tmp.name)
    if m and m["host"] == _HOST and int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"])):
        return True
    return idle > STALE_AFTER_S


def remove_stale_tmps(folder: Path, log: Callable[[str], None] | None = None,
                      patterns: tuple[str, ...] = ("*.tmp",)) -> int:
    """Delete the stale temporary files (names matching ``patterns``) directly in ``folder``; returns the
    bytes freed."""
    freed, names = 0, []
    for tmp in {p for pattern in patterns for p in folder.glob(pattern)}:
        if tmp.is_file() and is_stale(tmp):
            try:
                size = tmp.stat().st_size
                tmp.unlink()
            except OSError:  # another cleaner was first, or no permission: nothing to free here
                continue
            freed, names = freed + size, names + [tmp.name]
    if names and log is not None:
        log(f"removed {len(names)} temporary file(s) left by interrupted writers in {folder} "
            f"({freed / 2**20:.1f} MiB): {', '.join(sorted(names)[:3])}{' ...' if len(names) > 3 else ''}")
    return freed


def cannot_write(err: OSError, folder: Path) -> bool:
    """Whether ``err`` says ``folder`` (or a folder above it, being created) cannot be written: a
    permission error or a read-only filesystem on a path in it, not, say, an unreadable input file
    elsewhere."""
    if not isinstance(err, PermissionError) and err.errno != errno.EROFS:
        return False
    path = Path(err.filename or "")
    return path.parent == folder or path == folder or path in folder.parents


@contextmanager
def locked(lock: Path, waiting: Callable[[], None] | None = None) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``lock`` (created if missing) for the ``with`` block.

    Args:
        lock: the lock file, next to what it guards; it stays in place (deleting it would race with a waiter).
        waiting: called once if another process holds the lock, before blocking until it is released.

    Yields:
        True when the lock is held, False when locking is unsupported here and the block runs unlocked.

    Raises:
        OSError: ``lock`` cannot be created (e.g. a read-only folder).
    """
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        held = False
        if fcntl is not None:
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if waiting is not None:
                        waiting()
                    fcntl.flock(fd, fcntl.LOCK_EX)
                held = True
            except OSError as err:  # a filesystem without locks: unique names still keep writers apart
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
        yield held
    finally:
        os.close(fd)  # releases the lock


class HashingWriter:
    """A binary file being written, checksummed on the way: ``np.save(HashingWriter(f), a)`` hashes the file.

    (``np.save`` writes through ``write`` for objects that are not real files, so every byte passes here.)
    """

    def __init__(self, f):
        self.f, self.hash, self.size = f, hashlib.new(CHECKSUM), 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += memoryview(data).nbytes
        return self.f.write(data)

    def checksum(self) -> str:
        return f"{CHECKSUM}:{self.hash.hexdigest()}"


def file_checksum(path: Path) -> str:
    """``"sha256:<hex>"`` of the whole file, read in chunks."""
    with open(path, "rb") as f:
        return f"{CHECKSUM}:{hashlib.file_digest(f, CHECKSUM).hexdigest()}"
