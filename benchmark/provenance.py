"""Which result records are a table row's own ("ours"), and what differs for the others; user rows.

A record counts for row ``r`` of a table only when it is the run ``r`` specifies (``RunSpec`` in
``benchmark/published``, or a user row):

* **label**: the record's ``label`` is the row's (``benchmark run`` sets it), or the record carries no label
  of its own (``label == upstream``, a plain ``run_downstream.py -u NAME`` run) and its upstream is the row's;
* **checkpoint**: the record's ``ckpt_sha256`` is the sha256 of the row's checkpoint: the official file in
  ``$ASTBENCH_CHECKPOINTS`` (or the digest recorded in ``upstream.download.released()`` when the file is not
  here), the ``upstream.pt`` of the row's pretraining run under the sweep's ``--expdir``, or none for a
  random-init row. A checkpoint that cannot be identified here matches no record;
* **protocol**: the record's resolved downstream configuration equals the one ``benchmark run`` resolves for
  the row's job (task config, the row's overrides, the sweep's ``-o`` and ``--config-dir``), key by key.
  Seed, fold, label, run-folder name, paths and the keys that do not change results
  (``runner.num_workers``, ``runner.log_step``, ``runner.feature_cache``) are left out. A key missing from the
  record (written by older code) is a difference.

Every other record of the table's columns whose label or upstream is a row's is an *other run*: the tables
list it apart, with what differs, or leave it out with ``--strict``.

**User rows** put a user's upstream beside the papers' rows, with the same statistics and flags: a YAML file
(``--rows FILE``, see :func:`load_user_rows`) or ``--row LABEL`` (the records labelled ``LABEL``, any
checkpoint).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import downstream
from common.config import config_to_dict, flatten_config
from common.yamlfile import read_yaml, require_keys
from downstream import results

from .pretrain_runs import pretrain_dir
from .published import PaperTable, Row, RunSpec
from .suites import Job, SuiteOptions, downstream_job, task_folds

__all__ = ["NOT_PROTOCOL", "Expected", "Provenance", "UserRow", "Verdict", "load_user_rows",
           "user_rows_from_labels"]

# config keys that are not part of a run's protocol: which seed / fold / row / folder / machine paths, and
# settings that change only speed or logging
NOT_PROTOCOL = ("run.expname", "run.data_root", "run.ckpt", "run.seed", "run.fold", "run.label",
                "runner.num_workers", "runner.log_step", "runner.feature_cache")


@dataclass(frozen=True)
class Expected:
    """The checkpoint a row's records must come from."""

    sha256: str | None  # what records must carry; None: no checkpoint (random init)
    known: bool  # False: the row's checkpoint cannot be identified here, so no record matches
    describe: str  # for "what differs" lines, e.g. "SSAST-Base-Patch-400.pth" or "none (random init)"
    any: bool = False  # a --row LABEL row: any checkpoint (a cell mixing several is flagged †)


@dataclass(frozen=True)
class Verdict:
    ours: bool
    differs: tuple[str, ...] = ()  # what differs from the row's specification, one item each


@dataclass(frozen=True)
class UserRow:
    """A row of the user's own runs (``--rows FILE`` / ``--row LABEL``)."""

    label: str  # shown in the Row column; records labelled so (run_downstream.py --label) belong to it
    upstream: str  # registered name or package.module:builder
    checkpoint: str | None = None  # file path or "sha256:<hex>"; None: no checkpoint
    any_checkpoint: bool = False  # --row LABEL: whatever checkpoint its records carry
    tasks: tuple[str, ...] = ()  # only these tasks' columns (empty: all)
    tables: tuple[str, ...] = ()  # only these tables (empty: every table with one of its tasks)
    overrides: tuple[str, ...] = ()  # the run_downstream.py -o its runs used
    layer: int | None = None  # run_downstream.py -l its runs used
    source: str = ""  # where it was defined

    def row(self, columns: Iterable) -> Row:
        ckpt = "any" if self.any_checkpoint else (self.checkpoint or "none")
        source = f"your row ({self.source}): upstream {self.upstream}, checkpoint {ckpt}"
        return Row(self.label, self.label, source, {c.key: None for c in columns},
                   RunSpec(self.upstream, overrides=self.overrides, layer=self.layer))

    def joins(self, table: PaperTable) -> bool:
        if self.tables and table.id not in self.tables:
            return False
        return not self.tasks or any(c.task in self.tasks for c in table.columns)


class Provenance:
    """The specification every row's records are checked against (module docstring).

    Args:
        opts: the sweep's settings the records were produced with (``--expdir``, ``-o``, ``--config-dir``,
            ``--pretrain-override`` of ``benchmark run``); default: ``benchmark run``'s defaults.
        user_rows: rows of the user's own runs, added to every table they join (:meth:`with_user_rows`).
        strict: leave other runs out instead of listing them.
        check: False only for tables built in code whose records carry no configuration to check: then the
            record's label alone decides, as before provenance existed. The ``tables`` command always checks.
        checkpoints: row label -> the sha256 of its pretraining run's ``upstream.pt``, for records published
            without their pretraining runs (``results/demo``): taken instead of hashing the file under
            ``opts.expdir``.
    """

    def __init__(self, opts: SuiteOptions | None = None, user_rows: Sequence[UserRow] = (),
                 strict: bool = False, check: bool = True, checkpoints: Mapping[str, str] | None = None):
        self.opts = opts if opts is not None else SuiteOptions()
        self.user_rows = {u.label: u for u in user_rows}
        self.strict, self.check_enabled = strict, check
        self.pinned = dict(checkpoints or {})
        self._protocols: dict[tuple, dict[str, Any]] = {}
        self._checkpoints: dict[str, Expected] = {}

    @classmethod
    def off(cls) -> Provenance:
        """Label matching only (``check=False``)."""
        return cls(check=False)

    # -------------------------------------------------------------------------------------- rows
    def with_user_rows(self, table: PaperTable) -> PaperTable:
        """``table`` with the user rows that join it appended (a label clash with a paper row is an error);
        a table that has them already is returned as it is."""
        extra = [u.row(table.columns) for u in self.user_rows.values() if u.joins(table)]
        extra = [r for r in extra if r not in table.rows]
        clash = sorted({r.label for r in extra} & {r.label for r in table.rows})
        if clash:
            raise ValueError(f"user row label(s) {clash} are rows of table {table.id!r}; choose another "
                             f"label")
        return replace(table, rows=table.rows + tuple(extra)) if extra else table

    # -------------------------------------------------------------------------------------- matching
    def candidate(self, record: results.ResultRecord, row: Row) -> bool:
        """Whether ``record`` is labelled for ``row`` (module docstring), before any check."""
        user = self.user_rows.get(row.label)
        if user is not None and user.tasks and record.task not in user.tasks:
            return False
        if record.label == row.label:
            return True
        if not self.check_enabled:  # Provenance.off(): the label alone, as before provenance existed
            return False
        return record.label == record.upstream and row.run is not None and record.upstream == row.run.upstream

    def verdict(self, record: results.ResultRecord, row: Row) -> Verdict:
        """Whether a candidate ``record`` is ``row``'s own, and if not what differs."""
        if not self.check_enabled:
            return Verdict(True)
        if row.run is None:
            return Verdict(False, ("the row has no run specification (published numbers only)",))
        differs = []
        want = self.expected_checkpoint(row)
        got = _short(record.ckpt_sha256)
        if not want.any:
            if not want.known:
                differs.append(f"checkpoint {got} cannot be checked: {want.describe}")
            elif record.ckpt_sha256 != want.sha256:
                differs.append(f"checkpoint {got} (row: {want.describe})")
        if not record.config:
            differs.append("no configuration recorded")
        else:
            try:
                expected = self.expected_protocol(row, record.task, record.mode)
            except ValueError as err:  # e.g. a task this project has no config for: nothing can match
                why = f"the row's configuration cannot be resolved: {err}"
                return Verdict(False, tuple(differs) + (why,))
            actual = protocol(record.config)
            for key in sorted(set(expected) | set(actual)):
                a, e = actual.get(key, _MISSING), expected.get(key, _MISSING)
                if a is _MISSING:
                    differs.append(f"{key} not recorded (row: {_fmt(e)})")
                elif _canon(a) != _canon(e):
                    differs.append(f"{key}={_fmt(a)} (row: {'absent' if e is _MISSING else _fmt(e)})")
        return Verdict(not differs, tuple(differs))

    def ours(self, record: results.ResultRecord, row: Row) -> bool:
        return self.candidate(record, row) and self.verdict(record, row).ours

    # -------------------------------------------------------------------------------------- expectations
    def expected_protocol(self, row: Row, task: str, mode: str) -> dict[str, Any]:
        """The flattened protocol ``benchmark run`` resolves for ``row``'s job on ``task`` / ``mode``."""
        user = row.label in self.user_rows  # a user's runs were not made by the sweep: its -o do not apply
        key = (row.run, task, mode, user)
        if key not in self._protocols:
            self._protocols[key] = protocol(self._resolve(row.run, task, mode, user))
        return self._protocols[key]

    def _resolve(self, run: RunSpec, task: str, mode: str, user: bool) -> dict:
        job = Job("provenance", "row", run, task, mode, 1337, task_folds(task)[0])
        opts = SuiteOptions() if user else self.opts  # a user's runs were not made by the sweep
        cfg, _ = downstream.resolve(downstream_job(job, None, opts, "provenance"))
        return config_to_dict(cfg)

    def expected_checkpoint(self, row: Row) -> Expected:
        user = self.user_rows.get(row.label)
        if user is not None:
            return self._user_checkpoint(user)
        run = row.run
        if run.pretrain and row.label in self.pinned:
            sha = self.pinned[row.label]
            return Expected(sha, True, f"the published pretraining run of {row.label} {_short(sha)}")
        if run.pretrain:
            path = pretrain_dir(run, self.opts.expdir, self.opts.pretrain_overrides) / "upstream.pt"
            where = f"pretraining run {path.parent}"
            missing = f"{where}: not found (run the suite, or give the sweep's --expdir)"
            return self._file_checkpoint(path, where, missing)
        if run.ckpt:
            from upstream.download import checkpoint_dir

            path = Path(run.ckpt).expanduser()
            path = path if path.is_absolute() or path.exists() else checkpoint_dir() / run.ckpt
            published = _published_sha256(Path(run.ckpt).name)
            if not path.is_file() and published:
                return Expected(published, True, f"{run.ckpt} {_short(published)}")
            from upstream.download import download_hint

            where = "$ASTBENCH_CHECKPOINTS" if path.parent == checkpoint_dir() else str(path.parent)
            return self._file_checkpoint(path, run.ckpt, f"{run.ckpt} is not in {where} and has no published "
                                                         f"sha256{download_hint(Path(run.ckpt).name)}")
        return Expected(None, True, "none (random init)")

    def _user_checkpoint(self, user: UserRow) -> Expected:
        if user.any_checkpoint:
            return Expected(None, True, "any", any=True)
        if user.checkpoint is None:
            return Expected(None, True, "none")
        if user.checkpoint.startswith("sha256:"):
            sha = user.checkpoint.split(":", 1)[1].lower()
            return Expected(sha, True, f"sha256 {_short(sha)}")
        path = Path(user.checkpoint).expanduser()
        return self._file_checkpoint(path, str(path), f"{path} not found")

    def _file_checkpoint(self, path: Path, describe: str, missing: str) -> Expected:
        key = str(path)
        if key not in self._checkpoints:
            if path.is_file():
                from downstream.rundir import checkpoint_sha256

                sha = checkpoint_sha256(str(path))
                self._checkpoints[key] = Expected(sha, True, f"{describe} {_short(sha)}")
            else:
                self._checkpoints[key] = Expected(None, False, missing)
        return self._checkpoints[key]

    def rule(self) -> str:
        """The footnote every table carries."""
        if not self.check_enabled:
            return ""
        fate = "left out (--strict)" if self.strict else "listed under 'Other runs' with what differs"
        return ("Ours counts only records that are the row's run: its checkpoint (sha256 of the official "
                "file or of the row's pretraining run) and its downstream configuration (resolved config; "
                "seed and fold aside) as the row specifies; other records of these rows' labels or upstreams "
                f"are {fate}.")


# ------------------------------------------------------------------------------------------ helpers
_MISSING = object()


def protocol(config: Mapping) -> dict[str, Any]:
    """A resolved config flattened to dotted keys, without :data:`NOT_PROTOCOL`."""
    flat = flatten_config(json.loads(json.dumps(config, default=str)))
    return {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in NOT_PROTOCOL)}


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _fmt(value: Any) -> str:
    return "absent" if value is _MISSING else json.dumps(value, default=str)


def _short(sha: str | None) -> str:
    return sha[:8] if sha else "none"


def _published_sha256(file: str) -> str | None:
    from upstream.download import released

    return next((e.sha256 for e in released() if e.file == file and e.sha256), None)


# ------------------------------------------------------------------------------------------ user rows
USER_ROW_KEYS = ("label", "upstream", "checkpoint", "tasks", "tables", "overrides", "layer")


def load_user_rows(path: str | Path) -> list[UserRow]:
    """Read a rows file; ValueError naming the file and key of anything wrong::

        rows:
          - label: TinyCNN (mine)             # the Row text; runs labelled so (--label) are its records
            upstream: tinycnn:builder         # records of this upstream without a label of their own too
            checkpoint: exp/tinycnn.pt        # optional: a file (relative to this YAML) or sha256:<hex>
            tasks: [esc50, speech_commands_v2]   # optional: only these columns
            tables: [ssast_main]              # optional: only these tables
            overrides: [runner.total_steps=2000]   # optional: the -o its runs used (its protocol)
            layer: 3                          # optional: the -l its runs used
    """
    path = Path(path)
    data = read_yaml(path, f"rows file {path}")
    if not isinstance(data, Mapping) or set(data) != {"rows"} or not isinstance(data["rows"], list) \
            or not data["rows"]:
        raise ValueError(f"rows file {path}: must be a mapping with one key 'rows', a non-empty list of rows")
    rows, seen = [], set()
    for i, item in enumerate(data["rows"]):
        where = f"rows file {path}: rows[{i}]"
        item = require_keys(item, where, (), USER_ROW_KEYS)  # label and upstream: checked with their types
        for key in ("label", "upstream"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise ValueError(f"{where}: '{key}' must be a non-empty string, got {item.get(key)!r}")
        label = item["label"]
        if label in seen:
            raise ValueError(f"{where}: duplicate label {label!r}")
        seen.add(label)
        lists = {}
        for key in ("tasks", "tables", "overrides"):
            value = item.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value) or \
                    (key == "overrides" and not all("=" in v for v in value)):
                kind = "'key=value' strings" if key == "overrides" else "names"
                raise ValueError(f"{where}: '{key}' must be a list of {kind}, got {value!r}")
            lists[key] = tuple(value)
        ckpt = item.get("checkpoint")
        if ckpt is not None:
            if not isinstance(ckpt, str) or not ckpt:
                raise ValueError(f"{where}: 'checkpoint' must be a file path or sha256:<hex>, got {ckpt!r}")
            if ckpt.startswith("sha256:"):
                if len(ckpt) != 71 or any(c not in "0123456789abcdef" for c in ckpt[7:].lower()):
                    raise ValueError(f"{where}: 'checkpoint' {ckpt!r} is not sha256: and 64 hex digits")
            else:
                local = Path(ckpt).expanduser()
                local = local if local.is_absolute() else path.parent / local
                if not local.is_file():
                    raise ValueError(f"{where}: checkpoint {ckpt!r} not found (looked at {local})")
                ckpt = str(local)
        layer = item.get("layer")
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
            raise ValueError(f"{where}: 'layer' must be an int >= 0, got {layer!r}")
        rows.append(UserRow(label, item["upstream"], ckpt, False, lists["tasks"], lists["tables"],
                            lists["overrides"], layer, source=path.name))
    return rows


def user_rows_from_labels(labels: Sequence[str], records: Sequence[results.ResultRecord]) -> list[UserRow]:
    """``--row LABEL``: the records labelled ``LABEL`` (or of upstream ``LABEL`` without a label of their
    own), any checkpoint, the default protocol; ValueError when none or several upstreams have such
    records."""
    rows = []
    for label in labels:
        ups = sorted({r.upstream for r in records if r.label == label})
        if not ups:
            raise ValueError(f"--row {label!r}: no result record is labelled {label!r} (run_downstream.py "
                             f"--label {label}, or the upstream name of a run without --label)")
        if len(ups) > 1:
            raise ValueError(f"--row {label!r}: records labelled so come from several upstreams {ups}; "
                             f"use a rows file (--rows) to say which")
        rows.append(UserRow(label, ups[0], any_checkpoint=True, source="--row"))
    return rows
