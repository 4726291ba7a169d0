"""The released checkpoints, where their authors publish them, and ``python -m benchmark download NAME``.

    python -m benchmark download --list                  # the table below, and which files are already here
    python -m benchmark download ssast_patch_400         # -> $ASTBENCH_CHECKPOINTS/SSAST-Base-Patch-400.pth
    python -m benchmark download mae_ast_patch mae_ast_frame --dir /data/ckpts

Each file is saved under the name the registry looks up (``upstream.load("ssast_patch_400")`` then finds it
in ``$ASTBENCH_CHECKPOINTS``, default ``~/.cache/astbench/checkpoints``). A download goes to ``<file>.part``
and is renamed into place only once verified: its size against the table (or the server's length when the
table has none) and its sha256 when the table has one. An interrupted download is resumed with an HTTP
``Range`` request, both within one command (a dropped connection is retried) and by running the command
again; a server that ignores ``Range`` sends the whole file again. Only the Python standard library is used.

The table is every family's ``RELEASES`` (``FamilySpec.releases``, in ``upstream/<family>.py``), with the URLs
the authors publish: the SSAST README (YuanGongND/ssast, "Pretrained Models", Dropbox direct links) and the
MAE-AST README (AlanBaade/MAE-AST-Public), with the address s3prl's ``mae_ast`` hubconf downloads from as a
second source. ASiT has released no checkpoint. Sizes and sha256 digests are filled in once known from a
verified download (the command prints both); ``None`` means not yet recorded, never a guess.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.files import locked

from .registry import families

__all__ = ["DownloadError", "OfficialCheckpoint", "checkpoint_dir", "download", "download_hint",
           "dropbox_url", "find", "released"]


@dataclass(frozen=True)
class OfficialCheckpoint:
    """One released checkpoint.

    Attributes:
        name: the upstream that loads it (``upstream.list_upstreams()``), or for SSAST's ablation models the
            published row label whose pretraining it is.
        file: the local file name (the one the registry looks up); the download is saved under it.
        urls: where to download it, as published; later ones are tried when an earlier one fails.
        published: where the first URL is published.
        size_bytes: the file size once recorded from a verified download, else None.
        sha256: the file's sha256 once recorded, else None (then only the size is checked).
        note: anything a user should know (e.g. a file published under another name).
    """

    name: str
    file: str
    urls: tuple[str, ...]
    published: str
    size_bytes: int | None = None
    sha256: str | None = None
    note: str = ""


def dropbox_url(key: str, name: str) -> str:
    """A Dropbox share as the direct link SSAST's README publishes (``?dl=1``)."""
    return f"https://www.dropbox.com/s/{key}/{name}?dl=1"


def released() -> tuple[OfficialCheckpoint, ...]:
    """The download table: every family's released checkpoints (``FamilySpec.releases``), families by name."""
    return tuple(entry for family in families() for entry in family.releases)


def checkpoint_dir() -> Path:
    """Where official checkpoints are looked up by file name: ``$ASTBENCH_CHECKPOINTS`` or
    ``~/.cache/astbench/checkpoints``."""
    return Path(os.environ.get("ASTBENCH_CHECKPOINTS", Path.home() / ".cache" / "astbench" / "checkpoints"))


class DownloadError(RuntimeError):
    """A download that failed or did not verify; the message names the checkpoint, the URL and what to do."""


def find(name: str) -> OfficialCheckpoint:
    """The entry called ``name`` (or whose file is ``name``); ValueError listing the known names."""
    for entry in released():
        if name in (entry.name, entry.file):
            return entry
    known = ", ".join(e.name for e in released())
    raise ValueError(f"no released checkpoint called {name!r}; known: {known} "
                     f"(`python -m benchmark download --list`)")


def download_hint(file: str) -> str:
    """``"; download it with `python -m benchmark download NAME`"`` when ``file`` is in the table, else
    ``""``: the tail of a missing-checkpoint error."""
    for entry in released():
        if entry.file == file:
            return f"; download it with `python -m benchmark download {entry.name}`"
    return ""


# ------------------------------------------------------------------------------------------ download
def download(entry: OfficialCheckpoint, dest_dir: str | os.PathLike | None = None, *, force: bool = False,
             urls: tuple[str, ...] | None = None, timeout_s: float = 60.0, attempts: int = 3,
             log: Callable[[str], None] | None = None) -> Path:
    """Download ``entry`` into ``dest_dir`` (default ``$ASTBENCH_CHECKPOINTS``), verified; returns its path.

    Args:
        entry: a row of :func:`released`.
        dest_dir: target folder (created).
        force: download again even when a verified file is there.
        urls: download from these instead of ``entry.urls`` (a mirror); the size and sha256 still apply.
        timeout_s: per network operation.
        attempts: tries per URL; each retry resumes where the last stopped.
        log: progress lines (default: stderr).
    Raises:
        DownloadError: every URL failed (the ``.part`` file is kept, so running again resumes), or the file
            does not verify (a wrong download is deleted, never renamed into place).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    folder = Path(dest_dir) if dest_dir is not None else checkpoint_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"{entry.name}: cannot create the checkpoint folder {folder}: "
                            f"{err.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise DownloadError(f"{entry.name}: the checkpoint folder {folder} is not writable")
    dest, part = folder / entry.file, folder / (entry.file + ".part")
    with locked(folder / f".{entry.file}.lock"):  # two downloads of one file: the second finds it done
        if dest.is_file() and not force:
            problem = _verify(dest, entry, None)
            if problem:
                raise DownloadError(f"{entry.name}: {dest} is there but {problem}; delete it or pass --force")
            log(f"{entry.name}: {dest} is already there and verified")
            return dest
        errors = []
        for url in urls or entry.urls:
            try:
                total = _fetch(url, part, entry, timeout_s, attempts, log)
                break
            except DownloadError as err:
                errors.append(f"{url}: {err}")
                log(f"{entry.name}: {url} failed: {err}")
        else:
            kept = f"; {part.stat().st_size} bytes kept in {part}, run the command again to resume" \
                if part.is_file() and part.stat().st_size else ""
            raise DownloadError(f"{entry.name}: download failed ({'; '.join(errors)}){kept}")
        problem = _verify(part, entry, total)
        if problem:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{entry.name}: the download {problem}; it was deleted")
        os.replace(part, dest)
    sha = _sha256(dest)
    pinned = "verified" if entry.sha256 else "not recorded: add it to the family's RELEASES to pin the file"
    log(f"{entry.name}: saved {dest} ({dest.stat().st_size} bytes, sha256 {sha}, {pinned})")
    return dest


def _verify(path: Path, entry: OfficialCheckpoint, server_size: int | None) -> str:
    """What is wrong with ``path`` as ``entry`` ("" when nothing is): size first (cheap), then sha256."""
    size = path.stat().st_size
    want = entry.size_bytes if entry.size_bytes is not None else server_size
    if want is not None and size != want:
        return f"has {size} bytes, expected {want}"
    if entry.sha256 and _sha256(path) != entry.sha256.lower():
        return f"has sha256 {_sha256(path)}, expected {entry.sha256}"
    return ""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, part: Path, entry: OfficialCheckpoint, timeout_s: float, attempts: int,
           log: Callable[[str], None]) -> int | None:
    """Bring ``part`` to the whole file at ``url``, resuming what is there; returns the server's total size
    (None when it gives none). A connection lost mid-file is retried from where it stopped."""
    last = ""
    for attempt in range(1, attempts + 1):
        try:
            return _fetch_once(url, part, entry, timeout_s, log)
        except _Interrupted as err:
            last = str(err)
            log(f"{entry.name}: {last}; resuming (attempt {attempt + 1} of {attempts})" if attempt < attempts
                else f"{entry.name}: {last}")
    raise DownloadError(last)


class _Interrupted(Exception):
    """The connection stopped before the whole file arrived; what arrived is on disk."""


def _fetch_once(url: str, part: Path, entry: OfficialCheckpoint, timeout_s: float,
                log: Callable[[str], None]) -> int | None:
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "astbench-download"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing after what we have: whole already, or the file changed
            total = _content_range_total(err.headers.get("Content-Range", ""))
            if total == have:
                return total
            part.unlink()  # longer than the file on the server: start over
            return _fetch_once(url, part, entry, timeout_s, log)
        raise DownloadError(f"HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"cannot connect: {reason}") from None
    with resp:
        resumed = have and resp.status == 206
        if have and not resumed:
            log(f"{entry.name}: the server does not resume downloads; starting again from byte 0")
            have = 0
        if resumed:
            start = _content_range_start(resp.headers.get("Content-Range", ""))
            if start != have:
                raise DownloadError(f"asked for bytes from {have}, the server sent from {start}")
        length = resp.headers.get("Content-Length")
        total = _content_range_total(resp.headers.get("Content-Range", "")) if resumed else None
        if total is None and length is not None and length.isdigit():
            total = have + int(length)
        if entry.size_bytes is not None and total is not None and total != entry.size_bytes:
            raise DownloadError(f"the server offers {total} bytes, the table records {entry.size_bytes}")
        got = have
        next_report, t0 = time.monotonic() + 5.0, time.monotonic()
        with open(part, "ab" if resumed else "wb") as f:
            while True:
                try:
                    block = resp.read(1 << 20)
                except (TimeoutError, http.client.IncompleteRead, ConnectionError, OSError) as err:
                    f.flush()
                    raise _Interrupted(f"connection lost after {got} of {total or '?'} bytes "
                                       f"({err!r})") from None
                if not block:
                    break
                f.write(block)
                got += len(block)
                if time.monotonic() >= next_report:
                    rate = (got - have) / max(1e-9, time.monotonic() - t0) / 2**20
                    log(f"{entry.name}: {got / 2**20:.0f} of {(total or 0) / 2**20:.0f} MiB "
                        f"({rate:.1f} MiB/s)")
                    next_report = time.monotonic() + 5.0
        if total is not None and got < total:
            raise _Interrupted(f"connection closed after {got} of {total} bytes")
        return total


def _content_range_total(value: str) -> int | None:
    """``bytes 100-199/1000`` or ``bytes */1000`` -> 1000; None when absent or ``*``."""
    total = value.rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None


def _content_range_start(value: str) -> int | None:
    first = value.removeprefix("bytes").strip().partition("-")[0]
    return int(first) if first.isdigit() else None


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m benchmark download``."""
    p.add_argument("names", nargs="*", metavar="NAME", help="checkpoint names (see --list) or file names")
    p.add_argument("--list", action="store_true", help="list the released checkpoints and which are here")
    p.add_argument("--dir", default=None, help="target folder (default $ASTBENCH_CHECKPOINTS or "
                   "~/.cache/astbench/checkpoints)")
    p.add_argument("--url", default=None, help="download from this URL instead (a mirror; one NAME only); "
                   "the table's size and sha256 still apply")
    p.add_argument("--force", action="store_true", help="download again even when the file is there")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per network operation")


def run(args: argparse.Namespace) -> int:
    """Exit code 0, 2 for a bad name or argument, 1 for a failed download (one ``error:`` line each)."""
    folder = Path(args.dir) if args.dir else checkpoint_dir()
    if args.list or not args.names:
        print(f"released checkpoints (folder: {folder}):")
        for e in released():
            here = "here" if (folder / e.file).is_file() else "-"
            size = f"{e.size_bytes / 2**20:.0f} MiB" if e.size_bytes else "size ?"
            print(f"  {e.name:28s} {e.file:34s} {size:>9s}  sha256 {(e.sha256 or '?')[:12]:12s}  {here}")
        return 0
    try:
        entries = [find(n) for n in args.names]
        if args.url and len(entries) != 1:
            raise ValueError("--url takes exactly one NAME")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = 0
    for entry in entries:
        try:
            download(entry, folder, force=args.force, urls=(args.url,) if args.url else None,
                     timeout_s=args.timeout)
        except DownloadError as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0
