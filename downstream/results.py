"""Results are data: every evaluation appends one :class:`ResultRecord` as a JSON line to
``results/results.jsonl``; tables are generated from it, never edited by hand.

Appends are atomic across processes: the line is written with a single ``os.write`` on an ``O_APPEND``
descriptor while holding an exclusive ``fcntl`` lock (where available), then fsynced, so two runs finishing
together never interleave or tear lines. A downstream run (``downstream.run``) keeps one record per run, split
and step: a re-evaluation with another value replaces the earlier record (the file is rewritten under the same
lock and renamed into place), one with the same value is not written again.

Per-clip correctness: a single-label evaluation's record carries, in ``predictions``, which clips it got
right (``"correct"``, :func:`encode_correct`) and which clips those are (``"clip_ids_sha1"``,
:func:`clip_ids_sha1`), with the clips in the order of their sorted uids. Paired statistics between two rows
(``benchmark.stats``) then need nothing but the records; :func:`per_clip` reads them back.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.files import tmp_path
from common.rundir import os_reason

try:
    import fcntl
except ImportError:  # Windows: O_APPEND single writes are still atomic for small lines on local disks
    fcntl = None

DEFAULT_PATH = Path("results") / "results.jsonl"


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
    # what the score means (downstream.metrics.evaluation_report); {} in records written before they existed:
    # {"majority", "majority_class", "chance"}: always answering the most common train class, and 1/C
    baselines: dict = field(default_factory=dict)
    # class name -> accuracy of its clips (single-label) or its AP (multi-label); None where it has none
    per_class: dict = field(default_factory=dict)
    # how the top-1 predictions spread: {"clips", "distinct", "top_class", "top_share", "target_share",
    # "collapsed"}; single-label records also {"correct", "clip_ids_sha1"}: which clips were right (per_clip)
    predictions: dict = field(default_factory=dict)
    # every score of the evaluation (the task's Metric.report), the metric's own included: AS-20K's
    # {"mAP", "mAUC", "d_prime", "num_classes", "num_classes_skipped_ap"}; {} in records older than the field
    scores: dict = field(default_factory=dict)

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


@dataclass(frozen=True)
class PerClip:
    """Which clips one evaluation got right: ``correct[i]`` for the i-th clip in sorted-uid order."""

    correct: np.ndarray  # (N,) bool
    clip_ids_sha1: str  # the clips scored (clip_ids_sha1 of their uids): two evaluations pair only if equal


def encode_correct(correct: Any) -> str:
    """One bit per clip (1 = right), packed most significant bit first, as base64: about 170 characters for
    1,000 clips."""
    bits = np.asarray(correct, dtype=bool).reshape(-1)
    return base64.b64encode(np.packbits(bits, bitorder="big").tobytes()).decode("ascii")


def decode_correct(text: str, n: int) -> np.ndarray:
    """The ``n`` booleans :func:`encode_correct` packed into ``text``.

    Raises:
        ValueError: ``text`` is not base64 or holds fewer than ``n`` bits.
    """
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, AttributeError) as err:
        raise ValueError(f"per-clip correctness is not base64: {err}") from None
    if n < 0 or len(raw) * 8 < n or len(raw) > (n + 7) // 8:
        raise ValueError(f"per-clip correctness holds {len(raw) * 8} bits (padded), not {n} clips")
    return np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n, bitorder="big").astype(bool)


def clip_ids_sha1(uids: Any) -> str:
    """The sha1 (hex) of the sorted clip uids, one per line: names the set of clips scored, in the order
    ``predictions["correct"]`` lists them."""
    return hashlib.sha1("\n".join(sorted(str(u) for u in uids)).encode("utf-8")).hexdigest()


def per_clip(record: ResultRecord) -> PerClip | None:
    """Which clips ``record`` got right, or None: a record without them (multi-label, older than the fields,
    not an accuracy) or whose bits do not give its value (e.g. a copy of a record made for another step)."""
    pred = record.predictions or {}
    text, digest, n = pred.get("correct"), pred.get("clip_ids_sha1"), pred.get("clips")
    if not isinstance(text, str) or not isinstance(digest, str) or not isinstance(n, int) or n <= 0:
        return None
    try:
        correct = decode_correct(text, n)
    except ValueError:
        return None
    # half a clip of slack: the value is the same fraction, computed in float32 or float64
    if record.metric != "accuracy" or abs(float(correct.mean()) - float(record.value)) > 0.5 / n:
        return None
    return PerClip(correct, digest)


def config_hash(config: dict) -> str:
    """First 16 hex digits of the sha256 of the canonical JSON of ``config``."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_CODE_VERSION: str | None = None


def code_version() -> str:
    """The git commit of this checkout if it is one (``+dirty`` when tracked files differ from it), else the
    installed package version."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        try:
            here = Path(__file__).resolve().parent
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                 timeout=5)
            _CODE_VERSION = out.stdout.strip() if out.returncode == 0 else ""
            if _CODE_VERSION:  # a record must not claim a commit whose tracked files were edited since
                status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                        capture_output=True, text=True, timeout=5)
                if status.returncode != 0 or status.stdout.strip():
                    _CODE_VERSION += "+dirty"
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
        raise ValueError(f"results file {path} is a folder; give a file path such as "
                         f"{path / 'results.jsonl'}")
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
# what names one evaluation of one run: a later record with these equal replaces the earlier one (``unique``)
_RUN_SPLIT_STEP = ("expname", "upstream", "label", "task", "split", "metric", "fold", "mode", "layer", "seed",
                   "step", "ckpt_sha256")


def _same_evaluation(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in set(a) | set(b) if k not in _NOT_IDENTITY)


def _same_run_split_step(a: dict, b: dict) -> bool:
    return bool(a.get("expname")) and all(a.get(k) == b.get(k) for k in _RUN_SPLIT_STEP)


def append(record: ResultRecord, path: str | os.PathLike = DEFAULT_PATH, unique: bool = False) -> bool:
    """Append ``record`` as one JSON line, atomically with respect to other writers.

    With ``unique`` (a downstream run sets it), the file keeps one record per run, split and step:

    * a record of the same evaluation (every field equal but the time stamp and code version) with the same
      value is not written again, e.g. when ``-m evaluate`` re-scores a run already recorded;
    * a record of the same run folder (``expname``), split and step (and upstream, label, task, metric, fold,
      mode, layer, seed, checkpoint) with another value or data, e.g. a re-evaluation after the code or the
      data changed, replaces it: the file is rewritten without the old line (atomically, under the lock).

    Returns whether a line was written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dataclasses.asdict(record)
    line = (json.dumps(data, default=str, allow_nan=True) + "\n").encode()
    fd = _open_locked(path)
    try:
        if unique:  # read under the lock: no writer slips in between
            new = json.loads(line)
            lines = _read_lines(fd)
            parsed = [_parse(raw) for raw in lines]
            if any(old is not None and _same_evaluation(old, new) and old.get("value") == new["value"]
                   for old in parsed):
                return False
            stale = [i for i, old in enumerate(parsed) if old is not None and _same_run_split_step(old, new)]
            if stale:
                keep = [raw for i, raw in enumerate(lines) if i not in set(stale)]
                _rewrite(path, b"".join(keep) + line)
                return True
        view = memoryview(line)
        while view:  # one write in practice; loop only guards against a short write
            view = view[os.write(fd, view):]
        os.fsync(fd)
        return True
    finally:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _open_locked(path: Path) -> int:
    """An ``O_APPEND`` descriptor of ``path`` holding its exclusive lock. A writer that replaced the file
    while this one waited (:func:`_rewrite`) leaves the lock on the old inode: then open the new file and lock
    again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        if fcntl is None:
            return fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        mine = os.fstat(fd)
        if now is not None and (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
            return fd
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_lines(fd: int) -> list[bytes]:
    with os.fdopen(os.dup(fd), "rb") as f:
        f.seek(0)
        lines = f.readlines()
    if lines and not lines[-1].endswith(b"\n"):  # a torn last line stays a line of its own
        lines[-1] += b"\n"
    return lines


def _parse(raw: bytes) -> dict | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None  # a corrupt line is load()'s to report; it is kept as it is
    return value if isinstance(value, dict) else None


def _rewrite(path: Path, content: bytes) -> None:
    """Replace ``path`` by ``content``: a temporary file next to it, fsynced, renamed over it."""
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
