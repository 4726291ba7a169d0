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
"""
from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

from downstream import results

from .cells import CellStats, cell_stats, has_paper_numbers
from .provenance import Provenance
from .published import Column, PaperTable, select_tables

__all__ = ["PlotsUnavailable", "flagged", "sweep_value", "write_plots"]


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
