"""Which result records fill a table cell, and their statistics: the aggregation behind tables and plots.

Which records fill a cell (row ``r``, column ``c``): ``task == c.task``, ``mode == c.mode``,
``metric == c.metric``, ``split == "test"``, and the record is ``r``'s own run (:mod:`benchmark.provenance`):
labelled for ``r``, from the checkpoint ``r`` specifies (sha256) and with the downstream configuration ``r``'s
job resolves to. Every other record of a row's label or upstream is an *other run* (:func:`other_runs`),
listed apart with what differs. Records of the same (seed, fold) are duplicates: the newest ``timestamp``
wins (the later line on a tie).

Aggregation (std is the sample std, ``ddof=1``):

* tasks without folds: mean ± std over seeds (one seed: the value, no std);
* fold tasks (esc50, iemocap: the folds of ``downstream.tasks``; an unregistered task's folds are those seen
  in the column): per seed the mean over folds, then mean ± std over seeds; with one seed, mean ± std over
  its folds. A seed without every fold makes the cell *incomplete* (:attr:`CellStats.complete`): the mean of
  what is there, never shown as if complete;
* records of one cell from several checkpoints (``ckpt_sha256``) are flagged (:attr:`CellStats.mixed_ckpts`);
* ESC-50 follows SSAST's selection: one step for all five folds, chosen on the fold-averaged test curve. The
  suites write those values as records of the task's ``TaskSpec.selected_split``; a cell that has them uses
  only them. A cell with only the per-fold ``test`` records (each fold at its own best step, which is
  optimistic) is flagged (:attr:`CellStats.fold_best`).

Confidence intervals (:mod:`benchmark.stats`), for complete accuracy cells: the per-clip correctness of the
records (``downstream.results.per_clip``), folds side by side and seeds stacked (:class:`ClipSet`), gives
:attr:`CellStats.interval`, the 95% interval over test clips of the seed-averaged accuracy. Records without
per-clip bits (older ones) give a conservative interval from their values and clip counts. Two rows scored on
the same clips (same ``clip_ids_sha1`` per fold) are compared clip by clip (:func:`pair_difference`).
"""
from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from downstream.results import ResultRecord, per_clip
from downstream.tasks import TASKS, TaskSpec

from .provenance import Provenance
from .published import Column, PaperTable, Row
from .stats import (
    Difference,
    Interval,
    accuracy_interval,
    paired_difference,
    pooled_interval,
    unpaired_difference,
)

__all__ = ["CellStats", "Cell", "ClipSet", "OtherRun", "PairCell", "RowPair", "cell_stats", "differences",
           "table_cells", "has_paper_numbers", "other_runs", "pair_difference"]


@dataclass(frozen=True)
class ClipSet:
    """The per-clip correctness of a complete cell: one line per seed, the folds' clips side by side."""

    correct: np.ndarray  # (seeds, clips) bool
    seeds: tuple[int, ...]  # the seed of each line
    digests: tuple[tuple[int | None, str], ...]  # (fold, clip_ids_sha1) in column order: what was scored


@dataclass(frozen=True)
class CellStats:
    """Our result for one (row, column), in record units (fractions; multiply by ``Column.scale``)."""

    n_runs: int  # records used, after removing duplicates
    mean: float | None  # None when there is no record
    std: float | None  # sample std (ddof=1) over seeds, or over folds with one seed; None when undefined
    n_seeds: int
    n_folds: int  # folds present in the seed with fewest (0 for tasks without folds)
    expected_folds: int  # folds a complete cell needs per seed (0 for tasks without folds)
    ckpts: frozenset[str]  # distinct ckpt_sha256 of the records used (None counts as "")
    fold_best: bool = False  # ESC-50 without fold-averaged selection records: each fold at its own best step
    seeds: tuple[int, ...] = ()  # the seeds of a complete cell, in order
    # the 95% interval over test clips (benchmark.stats) of a complete accuracy cell; None without clip data
    interval: Interval | None = field(default=None, compare=False)
    clips: ClipSet | None = field(default=None, compare=False, repr=False)

    @property
    def complete(self) -> bool:
        return self.n_runs > 0 and self.n_folds >= self.expected_folds

    @property
    def mixed_ckpts(self) -> bool:
        return len(self.ckpts) > 1


def _time_key(stamp: str) -> tuple[int, float | str]:
    for fmt in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"):
        try:
            t = datetime.strptime(stamp, fmt)
        except (TypeError, ValueError):
            continue
        return 1, (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()
    return 0, str(stamp)


def _task(name: str) -> TaskSpec | None:
    """The registered task, or None (a task this project does not know: its folds come from the records)."""
    return TASKS.get(name)


def _column_records(records: Iterable[ResultRecord], column: Column) -> list[ResultRecord]:
    spec = _task(column.task)
    splits = spec.result_splits if spec is not None else ("test",)
    return [r for r in records if r.split in splits and r.task == column.task and r.mode == column.mode
            and r.metric == column.metric]


def cell_stats(records: Sequence[ResultRecord], table: PaperTable, row: Row, column: Column,
               provenance: Provenance | None = None) -> CellStats:
    """Aggregate the records of one cell that are ``row``'s own (see the module docstring for the rules).

    ``provenance``: the specification the records are checked against (default: ``benchmark run``'s defaults).
    """
    prov = provenance if provenance is not None else Provenance()
    col_records = _column_records(records, column)
    mine = [r for r in col_records if prov.ours(r, row)]
    return _aggregate(mine, column, col_records)


def _aggregate(mine: Sequence[ResultRecord], column: Column,
               col_records: Sequence[ResultRecord]) -> CellStats:
    """The statistics of the records ``mine`` of one cell; ``col_records`` (the whole column) give the folds
    of a task that is not registered."""
    spec = _task(column.task)
    selecting = spec is not None and spec.select_runs is not None  # ESC-50: one step for all folds
    selected = selecting and any(r.split == spec.selected_split for r in mine)
    split = spec.selected_split if selected else "test"
    fold_best = selecting and bool(mine) and not selected
    latest: dict[tuple[int, int | None], ResultRecord] = {}
    for rec in mine:
        if rec.split != split:
            continue
        key = (rec.seed, rec.fold)
        if key not in latest or _time_key(rec.timestamp) >= _time_key(latest[key].timestamp):
            latest[key] = rec
    folds = spec.folds if spec is not None else None
    if folds is None:  # not a registered task: folds are those any row of this column has
        folds = tuple(sorted({r.fold for r in col_records if r.fold is not None}))
    # in a fold task, a record without a valid fold number cannot be placed and is left out
    used = [r for r in latest.values() if not folds or r.fold in folds]
    ckpts = frozenset(r.ckpt_sha256 or "" for r in used)
    if not used:
        return CellStats(0, None, None, 0, 0, len(folds), frozenset())
    by_seed: dict[int, list[float]] = {}
    seed_records: dict[int, list[ResultRecord]] = {}
    for r in used:
        by_seed.setdefault(r.seed, []).append(float(r.value))
        seed_records.setdefault(r.seed, []).append(r)
    n_folds = min(len(v) for v in by_seed.values()) if folds else 0
    if folds and n_folds < len(folds):  # incomplete: the mean of what is there, no spread
        mean = statistics.fmean(float(r.value) for r in used)
        return CellStats(len(used), mean, None, len(by_seed), n_folds, len(folds), ckpts, fold_best)
    seeds = tuple(sorted(by_seed))
    clips = _clip_set(seed_records) if column.metric == "accuracy" else None
    interval = _interval(seed_records, clips) if column.metric == "accuracy" else None
    seed_means = [statistics.fmean(v) for v in by_seed.values()]
    if len(seed_means) > 1:
        mean, std = statistics.fmean(seed_means), statistics.stdev(seed_means)
    elif folds and len(folds) > 1:
        values = next(iter(by_seed.values()))
        mean, std = statistics.fmean(values), statistics.stdev(values)
    else:
        mean, std = seed_means[0], None
    return CellStats(len(used), mean, std, len(by_seed), n_folds, len(folds), ckpts, fold_best, seeds,
                     interval, clips)


def _in_fold_order(records: Sequence[ResultRecord]) -> list[ResultRecord]:
    return sorted(records, key=lambda r: (r.fold is None, r.fold or 0))


def _clip_set(seed_records: dict[int, list[ResultRecord]]) -> ClipSet | None:
    """The cell's per-clip correctness, or None when a record has none or the seeds scored different clips
    (then they cannot be averaged clip by clip)."""
    lines, digests = [], None
    for seed in sorted(seed_records):
        recs = _in_fold_order(seed_records[seed])
        parts = [per_clip(r) for r in recs]
        if any(p is None for p in parts):
            return None
        these = tuple((r.fold, p.clip_ids_sha1) for r, p in zip(recs, parts))
        if digests is not None and these != digests:
            return None
        digests = these
        lines.append(np.concatenate([p.correct for p in parts]))
    return ClipSet(np.stack(lines), tuple(sorted(seed_records)), digests or ())


def _interval(seed_records: dict[int, list[ResultRecord]], clips: ClipSet | None) -> Interval | None:
    """The cell's interval: from the clips, else (records without per-clip bits) from each seed's pooled
    accuracy and the clip counts, else None."""
    if clips is not None:
        return accuracy_interval(clips.correct)
    counts, values = set(), []
    for seed in sorted(seed_records):
        recs = seed_records[seed]
        n = [(r.predictions or {}).get("clips") for r in recs]
        if not all(isinstance(k, int) and k > 0 for k in n):
            return None
        counts.add(sum(n))
        values.append(sum(k * float(r.value) for k, r in zip(n, recs)) / sum(n))  # pooled over folds
    return pooled_interval(values, min(counts)) if len(counts) == 1 else None


def pair_difference(a: CellStats, b: CellStats) -> Difference | None:
    """Row ``a``'s cell minus row ``b``'s (same column): clip by clip when both carry per-clip correctness of
    the same clips, else the conservative unpaired interval; None when either has no interval."""
    if a.clips is not None and b.clips is not None and a.clips.digests == b.clips.digests:
        return paired_difference(a.clips.correct, b.clips.correct, a.clips.seeds, b.clips.seeds)
    if a.interval is not None and b.interval is not None:
        return unpaired_difference(a.interval, b.interval, a.seeds, b.seeds)
    return None


# ------------------------------------------------------------------------------------------ cells
@dataclass(frozen=True)
class Cell:
    """One rendered cell: our statistics and the paper's number (percent), on the column's scale."""

    stats: CellStats
    paper: float | None
    scale: float

    def ours(self, decimals: int, pm: str = " ± ") -> str:
        s = self.stats
        if s.mean is None:
            return ""
        text = f"{s.mean * self.scale:.{decimals}f}"
        if s.std is not None:
            text += f"{pm}{s.std * self.scale:.{decimals}f}"
        return text


def table_cells(table: PaperTable, records: Sequence[ResultRecord], prov: Provenance
                ) -> list[list[Cell]]:
    """The cells of every row (outer list) and column (inner list)."""
    return [[Cell(cell_stats(records, table, row, col, prov), row.values.get(col.key), col.scale)
             for col in table.columns] for row in table.rows]


# ------------------------------------------------------------------------------------------ row pairs
@dataclass(frozen=True)
class RowPair:
    """Two rows of a table compared clip by clip: ``a`` minus ``b`` (row labels), e.g. a family pretrained
    against the same architecture from scratch; ``a_word`` / ``b_word`` name them in the verdicts."""

    a: str
    b: str
    title: str  # e.g. "SSAST"
    a_word: str = "pretrained"
    b_word: str = "scratch"


@dataclass(frozen=True)
class PairCell:
    """One pair in one column: the two cells and their difference (None without intervals)."""

    pair: RowPair
    column_key: str
    a: CellStats
    b: CellStats
    difference: Difference | None


def differences(table: PaperTable, cells: list[list[Cell]], pairs: Sequence[RowPair]) -> list[PairCell]:
    """Per pair (in order) and column, the difference of the two rows' cells; pairs naming a row the table
    does not have are an error."""
    index = {row.label: i for i, row in enumerate(table.rows)}
    out = []
    for pair in pairs:
        missing = [x for x in (pair.a, pair.b) if x not in index]
        if missing:
            raise ValueError(f"row pair {pair.title!r}: table {table.id!r} has no row(s) {missing}")
        for j, col in enumerate(table.columns):
            a, b = cells[index[pair.a]][j].stats, cells[index[pair.b]][j].stats
            out.append(PairCell(pair, col.key, a, b, pair_difference(a, b)))
    return out


# ------------------------------------------------------------------------------------------ other runs
@dataclass(frozen=True)
class OtherRun:
    """Records of a row's label or upstream that are not the row's run, grouped by what differs."""

    title: str  # the records' label (their upstream when they carry no label of their own)
    row: Row  # the row they were compared with
    differs: tuple[str, ...]  # what differs from that row's specification
    records: tuple[ResultRecord, ...]

    def cells(self, table: PaperTable, all_records: Sequence[ResultRecord]) -> list[Cell]:
        out = []
        for col in table.columns:
            col_records = _column_records(all_records, col)
            ids = {id(r) for r in self.records}
            out.append(Cell(_aggregate([r for r in col_records if id(r) in ids], col, col_records), None,
                             col.scale))
        return out


def other_runs(table: PaperTable, records: Sequence[ResultRecord], provenance: Provenance | None = None
               ) -> list[OtherRun]:
    """The records of ``table``'s columns labelled for one of its rows (or of a row's upstream without a label
    of their own) that are no row's run, grouped by label, checkpoint and what differs; none with
    ``strict``."""
    prov = provenance if provenance is not None else Provenance()
    if prov.strict or not prov.check_enabled:
        return []
    seen: set[int] = set()
    groups: dict[tuple, list] = {}
    for col in table.columns:
        for r in _column_records(records, col):
            if id(r) in seen:
                continue
            seen.add(id(r))
            rows = [row for row in table.rows if prov.candidate(r, row)]
            verdicts = [(row, prov.verdict(r, row)) for row in rows]
            if not verdicts or any(v.ours for _, v in verdicts):
                continue
            row, verdict = next(((row, v) for row, v in verdicts if row.label == r.label), verdicts[0])
            # the row's side of a difference may depend on the task (e.g. total_steps): group without it
            what = tuple(d.split(" (row: ")[0] for d in verdict.differs)
            key = (r.label, r.upstream, r.ckpt_sha256, row.label, what)
            groups.setdefault(key, [row, {}, []])
            groups[key][2].append(r)
            for short, full in zip(what, verdict.differs):
                groups[key][1].setdefault(short, set()).add(full)
    out = []
    for (label, _upstream, _, _, what), (row, fulls, recs) in groups.items():
        differs = tuple(next(iter(fulls[w])) if len(fulls[w]) == 1 else f"{w} (row: differs by task)"
                        for w in what)
        out.append(OtherRun(label, row, differs, tuple(recs)))
    return out


def has_paper_numbers(table: PaperTable) -> bool:
    """False for tables with no published number at all (the demo's): their cells show ours only."""
    return any(v is not None for row in table.rows for v in row.values.values())
