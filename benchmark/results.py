"""Results are data: every evaluation appends one :class:`ResultRecord` as a JSON line to
``results/results.jsonl``; tables are generated from it, never edited by hand.

Appends are atomic across processes: the line is written with a single ``os.write`` on an ``O_APPEND``
descriptor while holding an exclusive ``fcntl`` lock (where available), then fsynced, so two runs finishing
together never interleave or tear lines.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import os_reason

try:
    import fcntl
except ImportError:  # Windows: O_APPEND single writes are still atomic for small lines on local disks
    fcntl = None

DEFAULT_PATH = Path("results") / "results.jsonl"
# ESC-50 fold runs re-scored at the one step chosen on the fold-averaged test curve (SSAST get_esc_result.py;
# ``downstream.metrics.esc50_select_runs``), written by the suites once all five folds of a run are done.
ESC50_SELECTED_SPLIT = "test@fold-avg-step"


@dataclass
class ResultRecord:
    upstream: str
    task: str
    split: str
    metric: str
    value: float
    ckpt_sha256: str | None = None
    fold: int | None = None
    mode: str = "frozen"  # 'frozen' | 'finetune'
    layer: int | None = None  # -l k, None = weighted sum
    seed: int = 1337
    config: dict = field(default_factory=dict)  # resolved run config
    config_hash: str = ""
    code_version: str = ""
    timestamp: str = ""
    expname: str = ""
    step: int | None = None  # training step of the evaluated checkpoint
    label: str = ""  # the row this run belongs to in a table (a suite sets it; default: the upstream name)
    # the data scored (downstream.datasets.TaskData.identity): name, root, file-list and split hashes, native
    # sample rates, skipped files, training crop; {} in records written before it existed
    dataset: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.mode not in ("frozen", "finetune"):
            raise ValueError(f"mode must be 'frozen' or 'finetune', got {self.mode!r}")
        if not self.label:
            self.label = self.upstream
        if not self.config_hash:
            self.config_hash = config_hash(self.config)
        if not self.code_version:
            self.code_version = code_version()
        if not self.timestamp:
            self.timestamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")


def config_hash(config: dict) -> str:
    """First 16 hex digits of the sha256 of the canonical JSON of ``config``."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_CODE_VERSION: str | None = None


def code_version() -> str:
    """The git commit of this checkout if it is one, else the installed package version."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                 capture_output=True, text=True, timeout=5)
            _CODE_VERSION = out.stdout.strip() if out.returncode == 0 else ""
        except (OSError, subprocess.SubprocessError):
            _CODE_VERSION = ""
        if not _CODE_VERSION:
            try:
                from importlib.metadata import version

                _CODE_VERSION = "astbench-" + version("astbench")
            except Exception:  # noqa: BLE001  (not installed)
                _CODE_VERSION = "unknown"
    return _CODE_VERSION


def check_writable(path: str | os.PathLike = DEFAULT_PATH) -> None:
    """Raise ``ValueError`` naming ``path`` unless records can be appended to it (its folder is created).

    Called before a run trains, so that an unwritable ``--results`` fails at once instead of after training
    and evaluation, with the records lost. Leaves no empty file behind.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"results file {path} is a folder; give a file path such as {path / 'results.jsonl'}")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    except OSError as err:
        raise ValueError(f"results file {path} cannot be written: {os_reason(err)}") from None
    if not existed:
        path.unlink(missing_ok=True)


# fields that differ between two records of one evaluation made at different times
_NOT_IDENTITY = ("value", "timestamp", "code_version")


def _same_evaluation(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in set(a) | set(b) if k not in _NOT_IDENTITY)


def append(record: ResultRecord, path: str | os.PathLike = DEFAULT_PATH, unique: bool = False) -> bool:
    """Append ``record`` as one JSON line, atomically with respect to other writers.

    With ``unique``, a record of the same evaluation (every field equal but the time stamp and code version)
    with the same value is not written again, e.g. when ``-m evaluate`` re-scores a run already recorded;
    one with another value (the data changed) is written. Returns whether a line was written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dataclasses.asdict(record)
    line = (json.dumps(data, default=str, allow_nan=True) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        if unique and _recorded(fd, json.loads(line)):  # read under the lock: no writer slips in between
            return False
        view = memoryview(line)
        while view:  # one write in practice; loop only guards against a short write
            view = view[os.write(fd, view):]
        os.fsync(fd)
        return True
    finally:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _recorded(fd: int, new: dict) -> bool:
    """Whether the file open as ``fd`` already holds ``new`` (same evaluation, same value)."""
    with os.fdopen(os.dup(fd), "rb") as f:
        f.seek(0)
        for raw in f:
            try:
                old = json.loads(raw)
            except ValueError:
                continue  # a corrupt line is load()'s to report
            if isinstance(old, dict) and _same_evaluation(old, new) and old.get("value") == new["value"]:
                return True
    return False


def load(path: str | os.PathLike = DEFAULT_PATH, skip_corrupt: bool = False) -> list[ResultRecord]:
    """All records in ``path`` (empty list if the file does not exist).

    Raises ``ValueError`` naming the file and line number of a corrupt line, unless ``skip_corrupt``.
    """
    path = Path(path)
    if not path.exists():
        return []
    names = {f.name for f in dataclasses.fields(ResultRecord)}
    records = []
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data: Any = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError(f"expected a JSON object, got {type(data).__name__}")
                unknown = set(data) - names
                if unknown:
                    raise ValueError(f"unknown field(s) {sorted(unknown)}")
                records.append(ResultRecord(**data))
            except (ValueError, TypeError) as err:
                if skip_corrupt:
                    continue
                raise ValueError(f"{path} line {no} is not a valid result record: {err}") from None
    return records
