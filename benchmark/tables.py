"""Tables rebuilt from result records, next to the published numbers: ``python -m benchmark tables``.

Nobody edits a table by hand: ``results/results.jsonl`` (:mod:`downstream.results`) is the source of truth
and :mod:`benchmark.published` holds the papers' numbers. Each cell reads ``ours (paper)``, e.g.
``71.3 ± 0.4 (72.6)``, as markdown, CSV and LaTeX. Which records fill a cell and how they are aggregated is
:mod:`benchmark.cells`; which records are a row's own is :mod:`benchmark.provenance`. Every other record of a
row's label or upstream is listed under *Other runs* with what differs (or left out with ``--strict``), so a
toy run never passes for a paper row.

User rows (``--rows FILE``, ``--row LABEL``) sit beside the papers' rows with the same statistics and flags.

Flags: a cell with a seed missing folds shows the mean of what is there marked ``*`` with ``[k/n folds]``;
records from several checkpoints are flagged ``†``; ESC-50 with only each fold's own best step (no
fold-averaged selection records) is flagged ``‡``. Each flag has a footnote.

With ``intervals`` (the demo's table), each accuracy cell reads ``mean [lo, hi]``, its 95% interval over
test clips (:mod:`benchmark.stats`), and ``pairs`` (:class:`RowPair`) add a section that gives, per pair of
rows and column, the difference of ``a`` minus ``b`` on the same clips with its interval and says in words
whether it is significant; a seed-spread section gives the per-seed accuracies (min-max).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from common.files import write_atomic
from downstream import results

from .cells import (
    Cell,
    PairCell,
    RowPair,
    cell_stats,
    differences,
    has_paper_numbers,
    other_runs,
    table_cells,
)
from .plots import PlotsUnavailable, write_plots
from .provenance import Provenance, load_user_rows, user_rows_from_labels
from .published import PaperTable, PublishedError, select_tables
from .stats import POOLED, UNPAIRED, Difference
from .suites import SuiteOptions

__all__ = ["RowPair", "add_arguments", "differences", "main_tables", "run", "to_csv", "to_latex",
           "to_markdown", "write_tables"]

DEFAULT_OUT = Path("results") / "tables"
FORMATS = {"md": "to_markdown", "csv": "to_csv", "tex": "to_latex"}
MISSING = "—"


def _fmt(x: float | None, decimals: int) -> str | None:
    return None if x is None else f"{x:.{decimals}f}"


def _signed(x: float, decimals: int) -> str:
    return f"{x:+.{decimals}f}".replace("-", "−")


def interval_text(c: Cell, decimals: int) -> str:
    """``mean [lo, hi]`` of a cell with an interval (column scale), else its usual ``mean ± std``."""
    iv = c.stats.interval
    if iv is None:
        return c.ours(decimals)
    k = c.scale
    return f"{iv.mean * k:.{decimals}f} [{iv.lo * k:.{decimals}f}, {iv.hi * k:.{decimals}f}]"


def difference_words(pc: PairCell) -> str:
    """The plain verdict of one pair cell: significant or not, and which row is better."""
    d = pc.difference
    if d is None:
        return "no interval (a cell is missing or incomplete)"
    return d.verdict(pc.pair.a_word, pc.pair.b_word)


def _seed_words(d: Difference, scale: float, decimals: int) -> str:
    if not d.per_seed:
        return ""
    values = ", ".join(_signed(v * scale, decimals) for _, v in d.per_seed)
    if len(d.per_seed) == 1:
        return values
    agree = d.seeds_agree
    return f"{values} ({'all seeds agree' if agree else 'seeds disagree in sign'})"


def _difference_section(table: PaperTable, pcs: list[PairCell], decimals: int, esc) -> list[str]:
    titles = {c.key: c.title or c.key for c in table.columns}
    scales = {c.key: c.scale for c in table.columns}
    lines = ["", "### Pretrained − scratch, on the same test clips", "",
             "The difference of the two rows' accuracies, its 95% interval over test clips (clip by clip: "
             "both rows scored the same clips), and whether the interval excludes 0 (significant).", "",
             "| Method | Column | difference | 95% interval | verdict | per seed |",
             "|---|---|---|---|---|---|"]
    for pc in pcs:
        d, k = pc.difference, scales[pc.column_key]
        name = f"{pc.pair.title}: {pc.pair.a_word} − {pc.pair.b_word}"
        if d is None:
            cells = [MISSING, MISSING, difference_words(pc), ""]
        else:
            verdict = difference_words(pc)
            verdict = f"**{verdict}**" if d.significant else verdict
            if d.method == UNPAIRED:
                verdict += " (unpaired: records without per-clip results)"
            if d.mcnemar_p is not None:
                verdict += f"; McNemar p = {d.mcnemar_p:.3g}"
            cells = [_signed(d.mean * k, decimals),
                     f"[{_signed(d.lo * k, decimals)}, {_signed(d.hi * k, decimals)}]", verdict,
                     _seed_words(d, k, decimals)]
        lines.append(f"| {esc(name)} | {esc(titles[pc.column_key])} | " + " | ".join(cells) + " |")
    significant = [pc for pc in pcs if pc.difference is not None and pc.difference.significant]
    lines.append("")
    if significant:
        lines.append("Significant: " + "; ".join(
            f"{pc.pair.title}, {titles[pc.column_key]} ({pc.pair.a_word} "
            f"{'better' if pc.difference.mean > 0 else 'worse'})" for pc in significant)
            + ". Every other difference is not significant.")
    else:
        measured = sum(pc.difference is not None for pc in pcs)
        lines.append(f"None of the {measured} differences with results in both rows is significant."
                     if measured else "No pair has results in both rows yet.")
    return lines


def _seed_section(table: PaperTable, cells: list[list[Cell]], decimals: int, esc) -> list[str]:
    """Per row and column, the per-seed accuracies' min-max: the spread over training runs, which the
    intervals (over test clips) do not cover."""
    if not any(c.stats.interval is not None and c.stats.interval.seed_range for line in cells for c in line):
        return []
    lines = ["", "### Spread over seeds", "",
             "Each seed's accuracy (min–max over seeds): what another training run could give, which the "
             "intervals above (over test clips, for these seeds) do not cover.", "",
             "| Row | " + " | ".join(esc(c.title or c.key) for c in table.columns) + " |",
             "|---|" + "---|" * len(table.columns)]
    for row, line in zip(table.rows, cells):
        texts = []
        for c in line:
            iv = c.stats.interval
            rng = iv.seed_range if iv is not None else None
            texts.append(MISSING if rng is None else
                         f"{rng[0] * c.scale:.{decimals}f}–{rng[1] * c.scale:.{decimals}f} "
                         f"({iv.n_seeds} seeds)")
        # named apart from the main table's row, so that a line is found by its row label once
        lines.append(f"| {esc(row.paper_label)} (per seed) | " + " | ".join(texts) + " |")
    return lines


def _sizes_note(table: PaperTable, cells: list[list[Cell]]) -> str:
    """Test clips and seeds per column, as the cells with an interval have them."""
    parts = []
    for j, col in enumerate(table.columns):
        ivs = [line[j].stats.interval for line in cells if line[j].stats.interval is not None]
        if not ivs:
            continue
        clips = sorted({iv.n_clips for iv in ivs})
        seeds = sorted({iv.n_seeds for iv in ivs})
        folds = max(line[j].stats.expected_folds for line in cells)
        where = f" over {folds} folds" if folds else ""
        parts.append(f"{col.title or col.key}: {'/'.join(map(str, clips))} test clips{where}, "
                     f"{'/'.join(map(str, seeds))} seed(s)")
    return "; ".join(parts)


def _footnotes(table: PaperTable, cells: list[list[Cell]]) -> list[str]:
    """The flag notes (each starts with its mark) of the cells shown, ours and other runs'."""
    notes = []
    stats = [c.stats for line in cells for c in line]
    if any(s.n_runs and not s.complete for s in stats):
        notes.append("* incomplete: k/n folds present (the seed with fewest folds); the mean of what is "
                     "there.")
    if any(s.mixed_ckpts for s in stats):
        notes.append("† the records of this cell come from more than one checkpoint (ckpt_sha256).")
    if any(s.fold_best for s in stats):
        notes.append("‡ ESC-50: each fold at its own best step, not one step chosen on the fold-averaged "
                     "curve (optimistic; `python -m benchmark run` writes the selected records once all "
                     "folds ran).")
    return notes


def _cell_text(c: Cell, decimals: int, missing: str, pm: str, star: str, dagger: str, fold_fmt: str,
               with_paper: bool = True, ddagger: str = "‡", intervals: bool = False) -> str:
    s = c.stats
    ours = (interval_text(c, decimals) if intervals and s.interval is not None else c.ours(decimals, pm)) \
        or missing
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
                provenance: Provenance | None = None, intervals: bool = False,
                pairs: Sequence[RowPair] = ()) -> str:
    """The table as GitHub markdown: title, source, one ``ours (paper)`` cell per row and column, the other
    runs with what differs, footnotes (the provenance rule among them).

    ``intervals``: accuracy cells as ``mean [lo, hi]`` (95% over test clips), the clips and seeds in the
    notes, and the per-seed spread; ``pairs``: a section with each pair's difference and verdict."""
    prov = provenance if provenance is not None else Provenance()
    table = prov.with_user_rows(table)
    cells = table_cells(table, records, prov)
    others = other_runs(table, records, prov)
    other_cells = [o.cells(table, records) for o in others]
    paper = has_paper_numbers(table)
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    cells_are = "ours (paper); " if paper else ""
    if intervals:
        how = ("ours = mean [95% interval over test clips] of the accuracy averaged over seeds (a cell "
               "without per-clip records: mean ± std over seeds, or over folds with one seed)")
    else:
        how = "ours = mean ± std (ddof=1) over seeds, or over folds with one seed"
    lines = [f"## {esc(table.title)}", "", f"Source: {esc(table.source)}. Cells: {cells_are}{how}; "
             f"{MISSING} = no result.", ""]
    lines.append("| Row | " + " | ".join(esc(c.title or c.key) for c in table.columns) + " |")
    lines.append("|---|" + "---|" * len(table.columns))
    for row, line in zip(table.rows, cells):
        texts = [_cell_text(c, decimals, MISSING, " ± ", "*", "†", " [{k}/{n} folds]", paper,
                            intervals=intervals) for c in line]
        lines.append(f"| {esc(row.paper_label)} | " + " | ".join(texts) + " |")
    if pairs:
        lines += _difference_section(table, differences(table, cells, pairs), decimals, esc)
    if intervals:
        lines += _seed_section(table, cells, decimals, esc)
    if others:
        lines += ["", "### Other runs (not counted as ours)", "",
                  "Records of these rows' labels or upstreams that are not the row's run; `--strict` leaves "
                  "them out.", "", "| Run | " + " | ".join(esc(c.title or c.key) for c in table.columns)
                  + " | differs from the row's specification |", "|---|" + "---|" * (len(table.columns) + 1)]
        for o, line in zip(others, other_cells):
            texts = [_cell_text(c, decimals, MISSING, " ± ", "*", "†", " [{k}/{n} folds]", False,
                                intervals=intervals) for c in line]
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
    sizes = _sizes_note(table, cells) if intervals else ""
    if sizes:
        lines += ["", f"Test clips and seeds: {esc(sizes)}. {_INTERVAL_NOTE}"]
        if any(c.stats.interval is not None and c.stats.interval.method == POOLED for line in cells
               for c in line):
            lines.append(f"{_POOLED_NOTE}")
    for r in extra:
        lines.append(f"- {esc(r.paper_label)}: {esc(r.source)}")
    return "\n".join(lines) + "\n"


_INTERVAL_NOTE = ("Intervals: 95% over test clips, with each clip's correctness averaged over the seeds "
                  "(mean ± 1.96 sd / sqrt(clips); Wilson for one seed). They cover the sampling of test "
                  "clips for these trained models, not the spread over pretraining or training runs (see the "
                  "seeds' min–max).")
_POOLED_NOTE = ("Cells whose records carry no per-clip results use the Wilson interval of the pooled "
                "accuracy, which is wider (conservative) with several seeds.")

CSV_FIELDS = ["table", "row", "paper_label", "column", "task", "mode", "metric", "ours_mean", "ours_std", "n",
              "n_seeds", "n_folds", "expected_folds", "complete", "mixed_ckpts", "fold_best", "paper",
              "provenance", "differs", "ci_mean", "ci_lo", "ci_hi", "n_clips", "ci_method", "seed_min",
              "seed_max", "significant", "mcnemar_p"]


def to_csv(table: PaperTable, records: Sequence[results.ResultRecord], decimals: int = 1,
           provenance: Provenance | None = None, pairs: Sequence[RowPair] = ()) -> str:
    """One line per (row, column), then per (other run, column), then per (pair, column); numbers on the
    paper's scale, empty where there is none; ``provenance`` is ``ours``, ``other`` (with ``differs``) or
    ``difference`` (row ``<a> - <b>``: the mean difference, its interval, ``significant``). ``ours_std`` is
    the std over seeds (over folds with one seed); ``ci_*`` the 95% interval over test clips."""
    prov = provenance if provenance is not None else Provenance()
    table = prov.with_user_rows(table)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    digits = decimals + 3  # keep more than the display precision: CSV is for further processing
    ours = table_cells(table, records, prov)
    lines = [(row.label, row.paper_label, line, "ours", "") for row, line in zip(table.rows, ours)]
    lines += [(o.title, f"{o.title} (row {o.row.paper_label})", o.cells(table, records), "other",
               "; ".join(o.differs)) for o in other_runs(table, records, prov)]
    num = lambda x, k: "" if x is None else round(x * k, digits)  # noqa: E731
    for label, paper_label, line, kind, differs in lines:
        for col, c in zip(table.columns, line):
            s, iv = c.stats, c.stats.interval
            ci = [""] * 7 if iv is None else [
                num(iv.mean, col.scale), num(iv.lo, col.scale), num(iv.hi, col.scale), iv.n_clips, iv.method,
                num(min(iv.seed_values), col.scale), num(max(iv.seed_values), col.scale)]
            writer.writerow([table.id, label, paper_label, col.key, col.task, col.mode, col.metric,
                             num(s.mean, col.scale), num(s.std, col.scale), s.n_runs, s.n_seeds, s.n_folds,
                             s.expected_folds, str(s.complete).lower() if s.n_runs else "",
                             str(s.mixed_ckpts).lower(), str(s.fold_best).lower(),
                             "" if c.paper is None else c.paper, kind, differs, *ci, "", ""])
    columns = {c.key: c for c in table.columns}
    for pc in differences(table, ours, pairs):
        col, d = columns[pc.column_key], pc.difference
        line = {"table": table.id, "row": f"{pc.pair.a} - {pc.pair.b}",
                "paper_label": f"{pc.pair.title}: {pc.pair.a_word} - {pc.pair.b_word}", "column": col.key,
                "task": col.task, "mode": col.mode, "metric": col.metric, "n": pc.a.n_runs + pc.b.n_runs,
                "provenance": "difference"}
        if d is not None:
            seeds = [v for _, v in d.per_seed]
            line.update(ours_mean=num(d.mean, col.scale), ci_mean=num(d.mean, col.scale),
                        ci_lo=num(d.lo, col.scale), ci_hi=num(d.hi, col.scale), n_clips=d.n_clips,
                        ci_method=d.method, seed_min=num(min(seeds), col.scale) if seeds else "",
                        seed_max=num(max(seeds), col.scale) if seeds else "",
                        significant=str(d.significant).lower(),
                        mcnemar_p="" if d.mcnemar_p is None else round(d.mcnemar_p, 6))
        writer.writerow([line.get(f, "") for f in CSV_FIELDS])
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
    cells = table_cells(table, records, prov)
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
        span = len(table.columns) + 1
        lines += [r"\midrule", rf"\multicolumn{{{span}}}{{l}}{{\emph{{Other runs (not ours)}}}} \\"]
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
        lines.append(rf"\par\footnotesize{{({chr(97 + i % 26)}) row {latex_escape(o.row.paper_label)}: "
                     rf"differs in {latex_escape('; '.join(o.differs))}}}")
    if prov.rule():
        lines.append(rf"\par\footnotesize{{{latex_escape(prov.rule())}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ files
def write_tables(records_path: str | os.PathLike, out_dir: str | os.PathLike,
                 table_ids: Sequence[str] | None = None, formats: Sequence[str] = ("md", "csv", "tex"),
                 tables: Sequence[PaperTable] | None = None, decimals: int = 1,
                 provenance: Provenance | None = None) -> list[Path]:
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
    out.mkdir(parents=True, exist_ok=True)
    written = []
    render = {"md": to_markdown, "csv": to_csv, "tex": to_latex}
    source = f"`{Path(records_path).name}` ({len(records)} records)"
    index = ["# Result tables", "", f"Generated from {source} and the published numbers in "
             "`benchmark/published/`; do not edit by hand (`python -m benchmark tables`). Cells count only "
             "records that are the row's run (checkpoint and configuration); other runs are listed in each "
             "table.", "",
             "| table | paper | title | cells with results | other runs |", "|---|---|---|---|---|"]
    for table in tables:
        for fmt in formats:
            path = out / f"{table.id}.{fmt}"
            write_atomic(path, render[fmt](table, records, decimals=decimals, provenance=prov))
            written.append(path)
        full = prov.with_user_rows(table)
        filled = sum(cell_stats(records, full, r, c, prov).n_runs > 0 for r in full.rows
                     for c in full.columns)
        link = f"[{table.id}]({table.id}.md)" if "md" in formats else table.id
        cells = len(full.rows) * len(full.columns)
        index.append(f"| {link} | {table.paper} | {table.title.replace('|', '/')} | {filled}/{cells} | "
                     f"{len(other_runs(full, records, prov))} |")
    write_atomic(out / "README.md", "\n".join(index) + "\n")
    written.append(out / "README.md")
    return written


def _check_user_tables(prov: Provenance, tables: Sequence[PaperTable]) -> None:
    """A user row naming a table that is not rendered, or joining none, is an error (not silently absent)."""
    ids = {t.id for t in tables}
    for user in prov.user_rows.values():
        unknown = sorted(set(user.tables) - ids)
        if unknown:
            raise ValueError(f"user row {user.label!r} ({user.source}): table(s) {unknown} are not rendered; "
                             f"rendered: {', '.join(sorted(ids))}")
        if not any(user.joins(t) for t in tables):
            raise ValueError(f"user row {user.label!r} ({user.source}): no rendered table has a column of "
                             f"its tasks {list(user.tasks)}")


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
    parser.add_argument("--print", action="store_true", dest="print_md",
                        help="also print the markdown tables")
    parser.add_argument("--plots", action="store_true", help="also draw PNG plots (needs matplotlib)")
    parser.add_argument("--rows", default=None, metavar="FILE", help="your own rows (YAML: label, upstream, "
                        "checkpoint, tasks), shown beside the papers' rows")
    parser.add_argument("--row", action="append", default=[], metavar="LABEL", dest="row_labels",
                        help="a row of the records labelled LABEL (run_downstream.py --label), any "
                             "checkpoint; repeatable")
    parser.add_argument("--strict", action="store_true",
                        help="leave out the other runs instead of listing them")
    sweep = parser.add_argument_group("the sweep the records came from (when `benchmark run` was given them)")
    sweep.add_argument("--expdir", default="exp/suites", help="benchmark run --expdir (pretraining runs)")
    sweep.add_argument("-o", "--override", action="append", default=[], help="benchmark run -o")
    sweep.add_argument("--pretrain-override", action="append", default=[],
                       help="benchmark run --pretrain-override")
    sweep.add_argument("--config-dir", default=None,
                       help="benchmark run's <config_dir>/<task>[_finetune].yaml")


def provenance_from_args(args: argparse.Namespace, records: Sequence[results.ResultRecord]) -> Provenance:
    """The :class:`Provenance` of ``benchmark tables``' arguments (user rows, --strict, the sweep's
    settings)."""
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
        paths = write_tables(args.results, args.out, args.tables, formats, decimals=args.decimals,
                             provenance=prov)
        if args.print_md:
            for table in select_tables(args.tables):
                print(to_markdown(table, records, decimals=args.decimals, provenance=prov))
    except (ValueError, PublishedError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} files to {args.out}", file=sys.stderr)
    if getattr(args, "plots", False):
        try:
            plots = write_plots(args.results, args.out, args.tables, provenance=prov)
            print(f"wrote {len(plots)} plots to {args.out}", file=sys.stderr)
        except PlotsUnavailable as err:
            print(f"plots skipped: {err}", file=sys.stderr)
    return 0


def main_tables(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmark tables [--results F] [--out D] [--table ID ...] [--rows FILE] ...``."""
    parser = argparse.ArgumentParser(prog="python -m benchmark tables", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main_tables())
