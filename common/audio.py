"""Audio file listing and manifests: which files a folder or a manifest names, without opening any of them.

One list of extensions, one directory walk and one manifest reader serve pretraining (unlabelled corpora)
and downstream tasks (the ``folder`` and ``manifest`` readers). Decoding, probing and resampling are
``upstream.frontend``'s; this module never opens an audio file, so unusable files are found (and skipped or
refused) by whoever reads them.

Manifest formats (:func:`read_manifest`), chosen by the file's suffix:

* ``.jsonl``: one JSON object per line with ``path`` (or ``wav``) and any other keys (``label``, ``split``,
  ``id``, ``duration``), as lhotse writes them.
* ``.csv``: a header naming a ``path`` column, then one row per file.
* ``.json``: an AST/SSAST/ASiT datafile ``{"data": [{"wav": ..., "labels": ...}, ...]}``; a ``.json`` file
  that is not such an object is read as JSONL (one object per line).
* ``.tsv``: fairseq's (MAE-AST) list: a root folder on the first line, then ``relative/path<TAB>samples``.

Relative audio paths are taken relative to the manifest's folder (the fairseq root's, for ``.tsv``), so a
manifest can travel with its audio.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["AUDIO_EXTENSIONS", "ManifestError", "ManifestRow", "is_audio_file", "list_audio_files",
           "read_manifest"]

# What the project's one decoder (libsndfile via soundfile, in upstream.frontend) reads: the union of the
# lists pretraining and the downstream readers kept apart before. mp3 needs libsndfile >= 1.1.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".caf",
                    ".w64", ".rf64")

MANIFEST_SUFFIXES = (".jsonl", ".csv", ".json", ".tsv")


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the file (and the line) and the problem."""


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One file listed in a manifest.

    Attributes:
        line: 1-based line of the row in the file (CSV, JSONL, TSV), or for a JSON datafile the 0-based index
            of the entry in its ``data`` list.
        path: the audio file; a relative path is resolved against the manifest's folder.
        fields: the row as written (every column or key; CSV values are strings).
        duration: the row's ``duration`` in seconds, checked to be a number >= 0; None when not given.
    """

    line: int
    path: Path
    fields: dict[str, Any] = field(default_factory=dict)
    duration: float | None = None  # seconds, when the row gives ``duration`` (short clips left out unopened)


def is_audio_file(path: Path) -> bool:
    """The name ends in one of ``AUDIO_EXTENSIONS`` (any case); the file is not opened."""
    return path.suffix.lower() in AUDIO_EXTENSIONS


def list_audio_files(directory: str | os.PathLike) -> list[Path]:
    """Audio files under ``directory``, recursively, sorted by their path string.

    Hidden files and anything inside a hidden folder (a name starting with ``.``, below ``directory``) are
    skipped: editors, notebooks and OS tools keep copies and metadata there, never data. The sort is on
    ``str(path)``, so the order (which seeded draws index into) is the same on every machine.

    Returns:
        An empty list when nothing matches; the caller says what it expected.
    """
    root = Path(directory)
    return sorted(
        (p for p in root.rglob("*")
         if is_audio_file(p) and not any(part.startswith(".") for part in p.relative_to(root).parts)
         and p.is_file()),
        key=str,
    )


def read_manifest(path: str | os.PathLike, columns: Sequence[str] = ("path",)) -> list[ManifestRow]:
    """Rows of an audio manifest (formats in the module docstring), in file order.

    Args:
        path: the manifest file.
        columns: keys every row must have (``path``, which JSONL/JSON rows may spell ``wav``, always is);
            for CSV the header must name them.

    Raises:
        ManifestError: an unknown suffix, invalid JSON, a missing header column or row key; the message names
            the file and line.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ManifestError(f"manifest '{path}' must end in {', '.join(MANIFEST_SUFFIXES)}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(f"manifest '{path}' cannot be read: {err}") from None
    required = ["path", *(c for c in columns if c != "path")]
    datafile = None
    if suffix == ".csv":
        raw = _csv_rows(path, text, required)
    elif suffix == ".tsv":
        raw = _tsv_rows(path, text)
    else:
        datafile = _datafile(text) if suffix == ".json" else None
        raw = _datafile_rows(path, datafile) if datafile is not None else _jsonl_rows(path, text)
    unit = "entry" if datafile is not None else "line"
    rows = []
    for line, fields in raw:
        where = f"manifest '{path}' {unit} {line}"
        audio = fields.get("path") or fields.get("wav")
        if not audio or not isinstance(audio, str):
            raise ManifestError(f"{where}: no audio path ('path'), got {fields}")
        missing = [c for c in required[1:] if c not in fields]
        if missing:
            raise ManifestError(f"{where}: {', '.join(map(repr, missing))} required, got {fields}")
        audio_path = Path(audio)
        rows.append(ManifestRow(line, audio_path if audio_path.is_absolute() else path.parent / audio_path,
                                fields, _duration(fields.get("duration"), where)))
    return rows


def _duration(value: Any, where: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        secs = float(value)
    except (TypeError, ValueError):
        secs = math.nan
    if not math.isfinite(secs) or secs < 0:
        raise ManifestError(f"{where}: duration must be a number of seconds >= 0, got {value!r}")
    return secs


def _csv_rows(path: Path, text: str, required: Sequence[str]) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or not set(required) <= set(reader.fieldnames):
        raise ManifestError(f"manifest '{path}' needs a header naming the columns {','.join(required)}; "
                            f"got {reader.fieldnames}")
    return [(reader.line_num, dict(row)) for row in reader]


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ManifestError(f"manifest '{path}' line {line_no}: invalid JSON: {err}") from None
        if not isinstance(row, dict):
            raise ManifestError(f"manifest '{path}' line {line_no}: expected a JSON object, got {row!r}")
        rows.append((line_no, row))
    return rows


def _datafile(text: str) -> dict | None:
    """The parsed AST/SSAST datafile, or None when the text is not one (then it is read as JSONL)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("data"), list) else None


def _datafile_rows(path: Path, data: dict) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for i, entry in enumerate(data["data"]):
        if not isinstance(entry, dict):
            raise ManifestError(f"manifest '{path}' entry {i}: expected an object with 'wav', got {entry!r}")
        rows.append((i, entry))
    return rows


def _tsv_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    """fairseq: the root folder, then 'relative/path<TAB>samples' lines.

    The rows' paths are ``root/relative``; a relative root is resolved (once) by ``read_manifest`` against
    the manifest's folder, like every other relative path.
    """
    lines = [(n, ln) for n, ln in enumerate(text.splitlines(), start=1) if ln.strip()]
    if not lines:
        return []
    root = Path(lines[0][1].strip())
    rows = []
    for n, ln in lines[1:]:
        rel, *rest = ln.split("\t")
        row: dict[str, Any] = {"path": str(root / rel)}
        if rest:
            row["samples"] = rest[0].strip()
        rows.append((n, row))
    return rows
