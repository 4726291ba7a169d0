"""Tables rebuilt from result records, next to the published numbers: ``python -m benchmark tables``.

Nobody edits a table by hand: ``results/results.jsonl`` (:mod:`benchmark.results`) is the source of truth and
:mod:`benchmark.published` holds the papers' numbers. Each cell reads ``ours (paper)``, e.g. ``71.3 ± 0.4 (72.6)``.

Which records fill a cell (row ``r``, column ``c``): ``task == c.task``, ``mode == c.mode``,
``metric == c.metric``, ``split == "test"``, and the record is ``r``'s own run (:mod:`benchmark.provenance`):
labelled for ``r``, from the checkpoint ``r`` specifies (sha256) and with the downstream configuration ``r``'s
job resolves to. Every other record of a row's label or upstream is listed under *Other runs* with what differs
(or left out with ``--strict``), so a toy run never passes for a paper row. Records of the same (seed, fold)
are duplicates: the newest ``timestamp`` wins (the later line on a tie).

User rows (``--rows FILE``, ``--row LABEL``) sit beside the papers' rows with the same statistics and flags.

Aggregation (std is the sample std, ``ddof=1``):

* tasks without folds: mean ± std over seeds (one seed: the value, no std);
* fold tasks (esc50, iemocap: the folds of ``downstream.tasks``; an unregistered task's folds are those seen
  in the column): per seed the mean over folds, then mean ± std over seeds; with one seed, mean ± std over
  its folds. A seed without every fold makes the cell *incomplete*: it shows the mean of what is there
  marked ``*`` with ``[k/n folds]`` (k = folds of the seed with fewest), never as if complete;
* records of one cell from several checkpoints (``ckpt_sha256``) are flagged ``†`` with a footnote;
* ESC-50 follows SSAST's selection: one step for all five folds, chosen on the fold-averaged test curve. The
  suites write those values as records of split ``results.ESC50_SELECTED_SPLIT``; a cell that has them uses
  only them. A cell with only the per-fold ``test`` records (each fold at its own best step, which is
  optimistic) is flagged ``‡`` with a footnote.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import results
from .provenance import Provenance, load_user_rows, user_rows_from_labels
from .published import Column, PaperTable, PublishedError, Row, load_tables

__all__ = ["CellStats", "OtherRun", "add_arguments", "cell_stats", "main_tables", "other_runs", "run", "to_csv",
           "to_latex", "to_markdown", "write_tables"]

DEFAULT_OUT = Path("results") / "tables"
FORMATS = {"md": "to_markdown", "csv": "to_csv", "tex": "to_latex"}
MISSING = "—"


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
        return 1, (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()
    return 0, str(stamp)


def _task_folds(task: str) -> tuple[int, ...] | None:
    """The task's registered folds, or None when the task is not registered."""
    try:
        from downstream.tasks import TASKS
    except ImportError:  # the downstream package (torch) is not importable: infer folds from the records
        return None
    spec = TASKS.get(task)
    return None if spec is None else tuple(spec.folds)


def _column_records(records: Iterable[results.ResultRecord], column: Column) -> list[results.ResultRecord]:
    splits = ("test", results.ESC50_SELECTED_SPLIT) if column.task == "esc50" else ("test",)
    return [r for r in records if r.split in splits and r.task == column.task and r.mode == column.mode
            and r.metric == column.metric]


def cell_stats(records: Sequence[results.ResultRecord], table: PaperTable, row: Row, column: Column,
               provenance: Provenance | None = None) -> CellStats:
    """Aggregate the records of one cell that are ``row``'s own (see the module docstring for the rules).

    ``provenance``: the specification the records are checked against (default: ``benchmark run``'s defaults).
    """
    prov = provenance if provenance is not None else Provenance()
    col_records = _column_records(records, column)
    mine = [r for r in col_records if prov.ours(r, row)]
    return _aggregate(mine, column, col_records)


def _aggregate(mine: Sequence[results.ResultRecord], column: Column,
               col_records: Sequence[results.ResultRecord]) -> CellStats:
    """The statistics of the records ``mine`` of one cell; ``col_records`` (the whole column) give the folds of a
    task that is not registered."""
    selected = any(r.split == results.ESC50_SELECTED_SPLIT for r in mine)
    split = results.ESC50_SELECTED_SPLIT if selected else "test"
    fold_best = column.task == "esc50" and bool(mine) and not selected
    latest: dict[tuple[int, int | None], results.ResultRecord] = {}
    for rec in mine:
        if rec.split != split:
            continue
        key = (rec.seed, rec.fold)
        if key not in latest or _time_key(rec.timestamp) >= _time_key(latest[key].timestamp):
            latest[key] = rec
    folds = _task_folds(column.task)
    if folds is None:  # not a registered task: folds are those any row of this column has
        folds = tuple(sorted({r.fold for r in col_records if r.fold is not None}))
    # in a fold task, a record without a valid fold number cannot be placed and is left out
    used = [r for r in latest.values() if not folds or r.fold in folds]
    ckpts = frozenset(r.ckpt_sha256 or "" for r in used)
    if not used:
        return CellStats(0, None, None, 0, 0, len(folds), frozenset())
    by_seed: dict[int, list[float]] = {}
    for r in used:
        by_seed.setdefault(r.seed, []).append(float(r.value))
    n_folds = min(len(v) for v in by_seed.values()) if folds else 0
    if folds and n_folds < len(folds):  # incomplete: the mean of what is there, no spread
        mean = statistics.fmean(float(r.value) for r in used)
        return CellStats(len(used), mean, None, len(by_seed), n_folds, len(folds), ckpts, fold_best)
    seed_means = [statistics.fmean(v) for v in by_seed.values()]
    if len(seed_means) > 1:
        mean, std = statistics.fmean(seed_means), statistics.stdev(seed_means)
    elif folds and len(folds) > 1:
        values = next(iter(by_seed.values()))
        mean, std = statistics.fmean(values), statistics.stdev(values)
    else:
        mean, std = seed_means[0], None
    return CellStats(len(used), mean, std, len(by_seed), n_folds, len(folds), ckpts, fold_best)


# ------------------------------------------------------------------------------------------ cells
@dataclass(frozen=True)
class _Cell:
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


def _cells(table: PaperTable, records: Sequence[results.ResultRecord], prov: Provenance) -> list[list[_Cell]]:
    return [[_Cell(cell_stats(records, table, row, col, prov), row.values.get(col.key), col.scale)
             for col in table.columns] for row in table.rows]


# ------------------------------------------------------------------------------------------ other runs
@dataclass(frozen=True)
class OtherRun:
    """Records of a row's label or upstream that are not the row's run, grouped by what differs."""

    title: str  # the records' label (their upstream when they carry no label of their own)
    row: Row  # the row they were compared with
    differs: tuple[str, ...]  # what differs from that row's specification
    records: tuple[results.ResultRecord, ...]

    def cells(self, table: PaperTable, all_records: Sequence[results.ResultRecord]) -> list[_Cell]:
        out = []
        for col in table.columns:
            col_records = _column_records(all_records, col)
            ids = {id(r) for r in self.records}
            out.append(_Cell(_aggregate([r for r in col_records if id(r) in ids], col, col_records), None,
                             col.scale))
        return out


def other_runs(table: PaperTable, records: Sequence[results.ResultRecord], provenance: Provenance | None = None
               ) -> list[OtherRun]:
    """The records of ``table``'s columns labelled for one of its rows (or of a row's upstream without a label of
    their own) that are no row's run, grouped by label, checkpoint and what differs; none with ``strict``."""
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
    for (label, upstream, _, _, what), (row, fulls, recs) in groups.items():
        differs = tuple(next(iter(fulls[w])) if len(fulls[w]) == 1 else f"{w} (row: differs by task)" for w in what)
        out.append(OtherRun(label, row, differs, tuple(recs)))
    return out


def _fmt(x: float | None, decimals: int) -> str | None:
    return None if x is None else f"{x:.{decimals}f}"


def _footnotes(table: PaperTable, cells: list[list[_Cell]]) -> list[str]:
    """The flag notes (each starts with its mark) of the cells shown, ours and other runs'."""
    notes = []
    stats = [c.stats for line in cells for c in line]
    if any(s.n_runs and not s.complete for s in stats):
        notes.append("* incomplete: k/n folds present (the seed with fewest folds); the mean of what is there.")
    if any(s.mixed_ckpts for s in stats):
        notes.append("† the records of this cell come from more than one checkpoint (ckpt_sha256).")
    if any(s.fold_best for s in stats):
        notes.append("‡ ESC-50: each fold at its own best step, not one step chosen on the fold-averaged curve "
                     "(optimistic; `python -m benchmark run` writes the selected records once all folds ran).")
    return notes


def has_paper_numbers(table: PaperTable) -> bool:
    """False for tables with no published number at all (the demo's): their cells show ours only."""
    return any(v is not None for row in table.rows for v in row.values.values())


def _cell_text(c: _Cell, decimals: int, missing: str, pm: str, star: str, dagger: str, fold_fmt: str,
               with_paper: bool = True, ddagger: str = "‡") -> str:
    s = c.stats
    ours = c.ours(decimals, pm) or missing
    if s.n_runs and not s.complete:
        ours += star + fold_fmt.format(k=s.n_folds, n=s.expected_folds)
    if s.mixed_ckpts:
        ours += dagger
    if s.fold_best:
        ours += ddagger
    if not with_paper:
        return ours
    paper = _fmt(c.paper, decimals)
    if s.n_runs == 0 and paper is None:
        return missing
    return f"{ours} ({paper if paper is not None else missing})"


# ------------------------------------------------------------------------------------------ renderers
def to_markdown(table: PaperTable, records: Sequence[results.ResultRecord], decimals: int = 1,
                provenance: Provenance | None = None) -> str:
    """The table as GitHub markdown: title, source, one ``ours (paper)`` cell per row and column, the other runs
    with what differs, footnotes (the provenance rule among them)."""
    prov = provenance if provenance is not None else Provenance()
    table = prov.with_user_rows(table)
    cells = _cells(table, records, prov)
    others = other_runs(table, records, prov)
    other_cells = [o.cells(table, records) for o in others]
    paper = has_paper_numbers(table)
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = [f"## {esc(table.title)}", "", f"Source: {esc(table.source)}. Cells: {'ours (paper); ' if paper else ''}"
             f"ours = mean ± std (ddof=1) over seeds, or over folds with one seed; {MISSING} = no result.", ""]
    lines.append("| Row | " + " | ".join(esc(c.title or c.key) for c in table.columns) + " |")
    lines.append("|---|" + "---|" * len(table.columns))
    for row, line in zip(table.rows, cells):
        texts = [_cell_text(c, decimals, MISSING, " ± ", "*", "†", " [{k}/{n} folds]", paper) for c in line]
        lines.append(f"| {esc(row.paper_label)} | " + " | ".join(texts) + " |")
    if others:
        lines += ["", "### Other runs (not counted as ours)", "",
                  "Records of these rows' labels or upstreams that are not the row's run; `--strict` leaves them out.",
                  "", "| Run | " + " | ".join(esc(c.title or c.key) for c in table.columns)
                  + " | differs from the row's specification |", "|---|" + "---|" * (len(table.columns) + 1)]
        for o, line in zip(others, other_cells):
            texts = [_cell_text(c, decimals, MISSING, " ± ", "*", "†", " [{k}/{n} folds]", False) for c in line]
            lines.append(f"| {esc(o.title)} (row {esc(o.row.paper_label)}) | " + " | ".join(texts)
                         + f" | {esc('; '.join(o.differs))} |")
    foot = _footnotes(table, cells + other_cells)
    if prov.rule():
        foot.append(prov.rule())
    if foot:
        lines += [""] + [f"{n}  " for n in foot]
    extra = [r for r in table.rows if not r.source.startswith(table.source)]
    if table.notes or extra:
        lines.append("")
    if table.notes:
        lines.append(f"Notes: {esc(table.notes)}")
    for r in extra:
        lines.append(f"- {esc(r.paper_label)}: {esc(r.source)}")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["table", "row", "paper_label", "column", "task", "mode", "metric", "ours_mean", "ours_std", "n",
              "n_seeds", "n_folds", "expected_folds", "complete", "mixed_ckpts", "fold_best", "paper", "provenance",
              "differs"]


def to_csv(table: PaperTable, records: Sequence[results.ResultRecord], decimals: int = 1,
           provenance: Provenance | None = None) -> str:
    """One line per (row, column), then per (other run, column); numbers on the paper's scale, empty where there
    is none; ``provenance`` is ``ours`` or ``other`` (with ``differs``)."""
    prov = provenance if provenance is not None else Provenance()
    table = prov.with_user_rows(table)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    digits = decimals + 3  # keep more than the display precision: CSV is for further processing
    lines = [(row.label, row.paper_label, line, "ours", "") for row, line in zip(table.rows, _cells(table, records,
                                                                                                     prov))]
    lines += [(o.title, f"{o.title} (row {o.row.paper_label})", o.cells(table, records), "other", "; ".join(o.differs))
              for o in other_runs(table, records, prov)]
    for label, paper_label, line, kind, differs in lines:
        for col, c in zip(table.columns, line):
            s = c.stats
            mean = "" if s.mean is None else round(s.mean * col.scale, digits)
            std = "" if s.std is None else round(s.std * col.scale, digits)
            writer.writerow([table.id, label, paper_label, col.key, col.task, col.mode, col.metric, mean,
                             std, s.n_runs, s.n_seeds, s.n_folds, s.expected_folds,
                             str(s.complete).lower() if s.n_runs else "", str(s.mixed_ckpts).lower(),
                             str(s.fold_best).lower(), "" if c.paper is None else c.paper, kind, differs])
    return out.getvalue()


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (``\\ & % $ # _ { } ~ ^``)."""
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "—": "--", "±": r"$\pm$",
            "→": r"$\rightarrow$"}
    return "".join(repl.get(ch, ch) for ch in text)


def to_latex(table: PaperTable, records: Sequence[results.ResultRecord], decimals: int = 1,
             provenance: Provenance | None = None) -> str:
    """A booktabs ``table`` environment with the same cells as :func:`to_markdown`."""
    prov = provenance if provenance is not None else Provenance()
    table = prov.with_user_rows(table)
    cells = _cells(table, records, prov)
    others = other_runs(table, records, prov)
    other_cells = [o.cells(table, records) for o in others]
    head = " & ".join(["Row"] + [latex_escape(c.title or c.key) for c in table.columns])
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{latex_escape(table.title)} (ours (paper); source: {latex_escape(table.source)})}}",
             rf"\label{{tab:{table.id.replace('_', '-')}}}",
             r"\begin{tabular}{l" + "c" * len(table.columns) + "}", r"\toprule", head + r" \\", r"\midrule"]
    for row, line in zip(table.rows, cells):
        texts = [_cell_text(c, decimals, "--", r" $\pm$ ", r"$^{*}$", r"$^{\dag}$", " [{k}/{n} folds]",
                            ddagger=r"$^{\ddag}$") for c in line]
        lines.append(" & ".join([latex_escape(row.paper_label)] + texts) + r" \\")
    if others:
        lines += [r"\midrule", rf"\multicolumn{{{len(table.columns) + 1}}}{{l}}{{\emph{{Other runs (not ours)}}}} \\"]
    for i, (o, line) in enumerate(zip(others, other_cells)):
        texts = [_cell_text(c, decimals, "--", r" $\pm$ ", r"$^{*}$", r"$^{\dag}$", " [{k}/{n} folds]", False,
                            ddagger=r"$^{\ddag}$") for c in line]
        lines.append(" & ".join([latex_escape(o.title) + f" ({chr(97 + i % 26)})"] + texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    marks = {"*": r"$^{*}$", "†": r"$^{\dag}$", "‡": r"$^{\ddag}$"}
    for note in _footnotes(table, cells + other_cells):
        mark, note = marks[note[0]], latex_escape(note[2:])
        lines.append(rf"\par\footnotesize{{{mark} {note}}}")
    for i, o in enumerate(others):
        lines.append(rf"\par\footnotesize{{({chr(97 + i % 26)}) row {latex_escape(o.row.paper_label)}: differs in "
                     rf"{latex_escape('; '.join(o.differs))}}}")
    if prov.rule():
        lines.append(rf"\par\footnotesize{{{latex_escape(prov.rule())}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ files
def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def select_tables(table_ids: Sequence[str] | None = None) -> list[PaperTable]:
    """The published tables, or those named (in the order given); ValueError naming unknown ids."""
    tables = load_tables()
    if not table_ids:
        return tables
    by_id = {t.id: t for t in tables}
    unknown = [t for t in table_ids if t not in by_id]
    if unknown:
        raise ValueError(f"unknown table id(s) {unknown}; known: {', '.join(by_id)}")
    return [by_id[t] for t in table_ids]


def write_tables(records_path: str | os.PathLike, out_dir: str | os.PathLike, table_ids: Sequence[str] | None = None,
                 formats: Sequence[str] = ("md", "csv", "tex"), tables: Sequence[PaperTable] | None = None,
                 decimals: int = 1, provenance: Provenance | None = None) -> list[Path]:
    """Write ``<out_dir>/<table id>.<format>`` for each table and format, plus an index ``README.md``.

    Args:
        records_path: the results JSONL (a missing file means no results yet: every "ours" is missing).
        out_dir: output folder (created).
        table_ids: published table ids (default: all); ignored when ``tables`` is given.
        formats: any of ``md``, ``csv``, ``tex``.
        tables: tables to render instead of the published ones (e.g. a demo table).
        provenance: what the records are checked against, and the user rows (default: ``benchmark run``'s
            settings, no user rows).
    Returns:
        The paths written, the index last.
    Raises:
        ValueError: a corrupt records file (naming the line), an unknown table id or format.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown format(s) {bad}; choose from {list(FORMATS)}")
    prov = provenance if provenance is not None else Provenance()
    records = results.load(records_path)
    tables = list(tables) if tables is not None else select_tables(table_ids)
    _check_user_tables(prov, tables)
    out = Path(out_dir)
    written = []
    render = {"md": to_markdown, "csv": to_csv, "tex": to_latex}
    index = ["# Result tables", "", f"Generated from `{Path(records_path).name}` ({len(records)} records) and the "
             "published numbers in `benchmark/published/`; do not edit by hand "
             "(`python -m benchmark tables`). Cells count only records that are the row's run (checkpoint and "
             "configuration); other runs are listed in each table.", "",
             "| table | paper | title | cells with results | other runs |", "|---|---|---|---|---|"]
    for table in tables:
        for fmt in formats:
            path = out / f"{table.id}.{fmt}"
            atomic_write(path, render[fmt](table, records, decimals=decimals, provenance=prov))
            written.append(path)
        full = prov.with_user_rows(table)
        filled = sum(cell_stats(records, full, r, c, prov).n_runs > 0 for r in full.rows for c in full.columns)
        link = f"[{table.id}]({table.id}.md)" if "md" in formats else table.id
        index.append(f"| {link} | {table.paper} | {table.title.replace('|', '/')} | "
                     f"{filled}/{len(full.rows) * len(full.columns)} | {len(other_runs(full, records, prov))} |")
    atomic_write(out / "README.md", "\n".join(index) + "\n")
    written.append(out / "README.md")
    return written


def _check_user_tables(prov: Provenance, tables: Sequence[PaperTable]) -> None:
    """A user row naming a table that is not rendered, or joining none, is an error rather than silently absent."""
    ids = {t.id for t in tables}
    for user in prov.user_rows.values():
        unknown = sorted(set(user.tables) - ids)
        if unknown:
            raise ValueError(f"user row {user.label!r} ({user.source}): table(s) {unknown} are not rendered; "
                             f"rendered: {', '.join(sorted(ids))}")
        if not any(user.joins(t) for t in tables):
            raise ValueError(f"user row {user.label!r} ({user.source}): no rendered table has a column of its "
                             f"tasks {list(user.tasks)}")


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m benchmark tables``."""
    parser.add_argument("--results", default=str(results.DEFAULT_PATH), help="result records (JSONL)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    parser.add_argument("--table", nargs="+", action="extend", metavar="ID", dest="tables",
                        help="published table ids (default: all)")
    parser.add_argument("--format", nargs="+", choices=list(FORMATS), default=None, dest="formats",
                        help="output formats (default: md csv tex)")
    parser.add_argument("--decimals", type=int, default=1, help="digits after the decimal point")
    parser.add_argument("--print", action="store_true", dest="print_md", help="also print the markdown tables")
    parser.add_argument("--plots", action="store_true", help="also draw PNG plots (needs matplotlib)")
    parser.add_argument("--rows", default=None, metavar="FILE", help="your own rows (YAML: label, upstream, "
                        "checkpoint, tasks), shown beside the papers' rows")
    parser.add_argument("--row", action="append", default=[], metavar="LABEL", dest="row_labels",
                        help="a row of the records labelled LABEL (run_downstream.py --label), any checkpoint; "
                             "repeatable")
    parser.add_argument("--strict", action="store_true", help="leave out the other runs instead of listing them")
    sweep = parser.add_argument_group("the sweep the records came from (when `benchmark run` was given them)")
    sweep.add_argument("--expdir", default="exp/suites", help="benchmark run --expdir (pretraining runs)")
    sweep.add_argument("-o", "--override", action="append", default=[], help="benchmark run -o")
    sweep.add_argument("--pretrain-override", action="append", default=[], help="benchmark run --pretrain-override")
    sweep.add_argument("--config-dir", default=None, help="benchmark run's <config_dir>/<task>[_finetune].yaml")


def provenance_from_args(args: argparse.Namespace, records: Sequence[results.ResultRecord]) -> Provenance:
    """The :class:`Provenance` of ``benchmark tables``' arguments (user rows, --strict, the sweep's settings)."""
    from .suites import SuiteOptions

    opts = SuiteOptions(expdir=args.expdir, downstream_overrides=tuple(args.override),
                        pretrain_overrides=tuple(args.pretrain_override), config_dir=args.config_dir)
    users = load_user_rows(args.rows) if args.rows else []
    users += user_rows_from_labels(args.row_labels, records)
    labels = [u.label for u in users]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"user row label(s) {dup} given twice (--rows / --row)")
    return Provenance(opts, users, strict=args.strict)


def run(args: argparse.Namespace) -> int:
    """Write the tables (and plots with ``--plots``). Exit code 0, or 2 with one error line on stderr."""
    formats = args.formats or ["md", "csv", "tex"]
    try:
        records = results.load(args.results)
        prov = provenance_from_args(args, records)
        paths = write_tables(args.results, args.out, args.tables, formats, decimals=args.decimals, provenance=prov)
        if args.print_md:
            for table in select_tables(args.tables):
                print(to_markdown(table, records, decimals=args.decimals, provenance=prov))
    except (ValueError, PublishedError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} files to {args.out}", file=sys.stderr)
    if getattr(args, "plots", False):
        from .plots import PlotsUnavailable, write_plots

        try:
            plots = write_plots(args.results, args.out, args.tables, provenance=prov)
            print(f"wrote {len(plots)} plots to {args.out}", file=sys.stderr)
        except PlotsUnavailable as err:
            print(f"plots skipped: {err}", file=sys.stderr)
    return 0


def main_tables(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmark tables [--results ...] [--out ...] [--table ID ...] [--rows FILE] [--strict] ...``."""
    parser = argparse.ArgumentParser(prog="python -m benchmark tables", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main_tables())
