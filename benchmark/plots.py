"""Plots of our results against the published numbers (``python -m benchmark tables --plots``).

matplotlib is optional (``pip install matplotlib``, or the package's ``plot`` extra); it is imported only
inside :func:`write_plots`, with the non-interactive Agg backend. Without it :class:`PlotsUnavailable` is
raised and the tables are written all the same.

* every table: ``<id>.png``, one panel per column, grouped bars per row: ours (mean, std error bar) and the
  paper's number; a cell that is incomplete or flagged in the table (``*`` missing folds, ``†`` mixed
  checkpoints, ``‡`` ESC-50 per-fold best) is drawn hatched and lighter, with its own legend entry;
* tables whose rows are a numeric sweep (≥ 2 rows whose paper label starts with a number, e.g. SSAST's
  100 / 250 / 400 masked patches): ``<id>_line.png``, score against that number, ours and paper; flagged
  points are hollow. The legend sits outside the axes so it never covers a line.

Ours is what the tables count (:mod:`benchmark.provenance`): other runs are not plotted. User rows are.

Tables of row pairs (the demo's pretrained and from-scratch rows, :class:`benchmark.cells.RowPair`):
:func:`write_pair_plot`, one panel per column, per pair a bar of each row in two colours (the same two for
every pair), the 95% interval over test clips on every bar, and ``*`` over a pair whose paired difference is
significant (its interval excludes 0).
"""
from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

from downstream import results

from .cells import CellStats, RowPair, cell_stats, differences, has_paper_numbers, table_cells
from .provenance import Provenance
from .published import Column, PaperTable, select_tables

__all__ = ["PlotsUnavailable", "flagged", "sweep_value", "write_pair_plot", "write_plots"]

PAIR_COLOURS = ("#1f77b4", "#ff7f0e")  # row a (pretrained), row b (scratch): the same in every panel


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable("matplotlib is not installed; pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sweep_value(paper_label: str) -> float | None:
    """The number a sweep row's paper label starts with ("400 (Default)" -> 400.0), else None."""
    m = re.match(r"\s*(\d+(?:\.\d+)?)\b", paper_label)
    return float(m.group(1)) if m else None


def flagged(stats: CellStats) -> bool:
    """Whether the table marks the cell (incomplete ``*``, mixed checkpoints ``†``, ESC-50 per-fold best
    ``‡``)."""
    return stats.n_runs > 0 and (not stats.complete or stats.mixed_ckpts or stats.fold_best)


def _values(table: PaperTable, records, col: Column, prov: Provenance):
    ours, err, paper, marks = [], [], [], []
    for row in table.rows:
        s = cell_stats(records, table, row, col, prov)
        ours.append(float("nan") if s.mean is None else s.mean * col.scale)
        err.append(float("nan") if s.std is None else s.std * col.scale)  # no bar without a spread
        p = row.values.get(col.key)
        paper.append(float("nan") if p is None else p)
        marks.append(flagged(s))
    return ours, err, paper, marks


def _ylabel(col: Column) -> str:
    return f"{col.metric} (%)" if col.scale == 100 else col.metric


def _bars(plt, table: PaperTable, records, path: Path, prov: Provenance) -> Path:
    from matplotlib.patches import Patch

    paper_too = has_paper_numbers(table)
    n = len(table.columns)
    ncols = n if n <= 3 else 2
    nrows = -(-n // ncols)
    width = max(4.0, 0.6 * len(table.rows) + 1.5)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 4.4 * nrows), squeeze=False)
    x = list(range(len(table.rows)))
    any_flag = False
    for ax, col in zip(axes.flat, table.columns):
        ours, err, paper, marks = _values(table, records, col, prov)
        any_flag |= any(marks)
        pos = [i - 0.2 for i in x] if paper_too else x
        bars = ax.bar(pos, ours, 0.4 if paper_too else 0.6, yerr=err, capsize=3, color="C0")
        for bar, mark in zip(bars, marks):  # the table's * † ‡ cells: hatched and lighter than complete ones
            if mark:
                bar.set_alpha(0.45)
                bar.set_hatch("//")
        if paper_too:
            ax.bar([i + 0.2 for i in x], paper, 0.4, color="C1", alpha=0.7)
        else:  # nothing published to compare with: the value written on each bar
            ax.bar_label(bars, labels=["" if v != v else f"{v:.1f}" for v in ours], fontsize=7,
                         label_type="center")
        ax.set_title(col.title or col.key, fontsize=9)
        ax.set_ylabel(_ylabel(col), fontsize=8)
        ax.set_xticks(x)
        ax.set_xticklabels([r.paper_label for r in table.rows], rotation=60, ha="right", fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles = [Patch(color="C0", label="ours")]
    if any_flag:
        handles.append(Patch(facecolor="C0", alpha=0.45, hatch="//",
                             label="ours, incomplete or flagged (* † ‡)"))
    if paper_too:
        handles.append(Patch(color="C1", alpha=0.7, label="paper"))
    if len(handles) > 1:
        axes[0][0].legend(handles=handles, fontsize=7)
    fig.suptitle(textwrap.fill(table.title, 40 * ncols), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _line(plt, table: PaperTable, records, path: Path, prov: Provenance) -> Path | None:
    rows = [(sweep_value(r.paper_label), i) for i, r in enumerate(table.rows)]
    rows = sorted((v, i) for v, i in rows if v is not None)
    if len(rows) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    xs = [v for v, _ in rows]
    metrics = sorted({_ylabel(c) for c in table.columns})
    any_flag = False
    for k, col in enumerate(table.columns):
        ours, err, paper, marks = _values(table, records, col, prov)
        name = col.title or col.key
        line = ax.plot(xs, [paper[i] for _, i in rows], "--o", color=f"C{k % 10}", label=f"{name} (paper)")[0]
        ax.errorbar(xs, [ours[i] for _, i in rows], yerr=[err[i] for _, i in rows], fmt="-s",
                    color=line.get_color(), capsize=3, label=f"{name} (ours)")
        hollow = [(x, ours[i]) for x, (_, i) in zip(xs, rows) if marks[i]]
        any_flag |= bool(hollow)
        if hollow:  # flagged cells: hollow markers over the filled ones
            ax.plot([h[0] for h in hollow], [h[1] for h in hollow], "s", markersize=7,
                    markerfacecolor="white", markeredgecolor=line.get_color(), markeredgewidth=1.5,
                    linestyle="none", zorder=3)
    ax.set_xlabel("masked patches" if "masked" in table.id else "setting")
    ax.set_ylabel(" / ".join(metrics))
    ax.set_xticks(xs)
    ax.set_title(textwrap.fill(table.title, 60), fontsize=9)
    # outside the axes: a legend inside covered the lowest line (AS-20K mAP)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              title="hollow: incomplete or flagged (* † ‡)" if any_flag else None, title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def write_plots(records_path: str | os.PathLike, out_dir: str | os.PathLike,
                table_ids: Sequence[str] | None = None, tables: Sequence[PaperTable] | None = None,
                provenance: Provenance | None = None) -> list[Path]:
    """Write ``<id>.png`` (and ``<id>_line.png`` for sweeps) per table; returns the paths. ``provenance``: as
    for the tables (which records are ours, user rows).

    Raises:
        PlotsUnavailable: matplotlib is not installed (nothing is written).
        ValueError: a corrupt records file or an unknown table id.
    """
    plt = _pyplot()
    records = results.load(records_path)
    tables = list(tables) if tables is not None else select_tables(table_ids)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    prov = provenance if provenance is not None else Provenance()
    for table in tables:
        table = prov.with_user_rows(table)
        written.append(_bars(plt, table, records, out / f"{table.id}.png", prov))
        line = _line(plt, table, records, out / f"{table.id}_line.png", prov)
        if line is not None:
            written.append(line)
    return written


def _bar_value(stats: CellStats, scale: float) -> tuple[float, float, float]:
    """(height, below, above) of a bar: the interval's mean and its distances to lo and hi; a cell without an
    interval draws its mean and no error bar, one without a result nothing."""
    iv = stats.interval
    if iv is not None:
        return iv.mean * scale, (iv.mean - iv.lo) * scale, (iv.hi - iv.mean) * scale
    if stats.mean is None:
        return float("nan"), 0.0, 0.0
    return stats.mean * scale, 0.0, 0.0


def write_pair_plot(records_path: str | os.PathLike, path: str | os.PathLike, table: PaperTable,
                    pairs: Sequence[RowPair], provenance: Provenance | None = None) -> Path:
    """Draw ``table``'s row pairs to ``path`` (PNG): one panel per column, per pair two bars (row ``a`` and
    row ``b``, one colour each across all pairs) with their 95% intervals, ``*`` over significant differences.

    Raises:
        PlotsUnavailable: matplotlib is not installed (nothing is written).
        ValueError: a corrupt records file, or a pair naming a row the table lacks.
    """
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    prov = provenance if provenance is not None else Provenance()
    table = prov.with_user_rows(table)
    records = results.load(records_path)
    cells = table_cells(table, records, prov)
    pcs = differences(table, cells, pairs)
    index = {row.label: i for i, row in enumerate(table.rows)}
    n = len(table.columns)
    ncols = n if n <= 3 else 2
    nrows = -(-n // ncols)
    width = max(4.0, 1.1 * len(pairs) + 1.5)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 4.0 * nrows), squeeze=False)
    x = list(range(len(pairs)))
    any_significant = False
    for j, (ax, col) in enumerate(zip(axes.flat, table.columns)):
        tops = []
        for side, (offset, colour) in enumerate(zip((-0.2, 0.2), PAIR_COLOURS)):
            vals = [_bar_value(cells[index[p.a if side == 0 else p.b]][j].stats, col.scale) for p in pairs]
            bars = ax.bar([i + offset for i in x], [v[0] for v in vals], 0.4, color=colour,
                          yerr=[[v[1] for v in vals], [v[2] for v in vals]], capsize=3, ecolor="black",
                          error_kw={"elinewidth": 1})
            for bar, v in zip(bars, vals):  # the value inside the bar, or above its base when it is too short
                if v[0] == v[0]:
                    tall = v[0] >= 8
                    ax.text(bar.get_x() + bar.get_width() / 2, v[0] / 2 if tall else 0.5, f"{v[0]:.1f}",
                            ha="center", va="center" if tall else "bottom", fontsize=7,
                            color="white" if tall else "black")
            tops.append([v[0] + v[2] for v in vals])
        for i, pair in enumerate(pairs):
            pc = next(p for p in pcs if p.pair == pair and p.column_key == col.key)
            if pc.difference is not None and pc.difference.significant:
                any_significant = True
                top = max(t for t in (tops[0][i], tops[1][i]) if t == t)
                ax.text(i, top + 2.0, "*", ha="center", va="bottom", fontsize=14, fontweight="bold")
            for side, offset in enumerate((-0.2, 0.2)):
                if tops[side][i] != tops[side][i]:  # NaN: the row has no result in this column
                    ax.text(i + offset, 1.0, "no result", ha="center", va="bottom", rotation=90, fontsize=7,
                            color="grey")
        finite = [t for side in tops for t in side if t == t]
        ax.set_ylim(0, max(finite + [1.0]) * 1.15 + 3.0)
        ax.set_xlim(-0.6, len(pairs) - 0.4)
        ax.set_title(col.title or col.key, fontsize=9)
        ax.set_ylabel(_ylabel(col), fontsize=8)
        ax.set_xticks(x)
        ax.set_xticklabels([p.title for p in pairs], fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    words = (pairs[0].a_word, pairs[0].b_word) if pairs else ("a", "b")
    handles = [Patch(color=PAIR_COLOURS[0], label=words[0]), Patch(color=PAIR_COLOURS[1], label=words[1]),
               Line2D([], [], color="black", marker="|", linestyle="none", markersize=10,
                      label="95% interval over test clips")]
    handles.append(Line2D([], [], color="black", marker="*", linestyle="none", markersize=9,
                          label=f"{words[0]} − {words[1]} significant (paired 95% interval excludes 0)"
                          + ("" if any_significant else ": none here")))
    fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=2, bbox_to_anchor=(0.5, -0.04),
               frameon=False)
    fig.suptitle(textwrap.fill(table.title, 45 * ncols), fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out
