"""Plots of our results against the published numbers (``python -m benchmark tables --plots``).

matplotlib is optional (``pip install matplotlib``, or the package's ``plot`` extra); it is imported only
inside :func:`write_plots`, with the non-interactive Agg backend. Without it :class:`PlotsUnavailable` is
raised and the tables are written all the same.

* every table: ``<id>.png``, one panel per column, grouped bars per row: ours (mean, std error bar) and the
  paper's number;
* tables whose rows are a numeric sweep (≥ 2 rows whose paper label starts with a number, e.g. SSAST's
  100 / 250 / 400 masked patches): ``<id>_line.png``, score against that number, ours and paper.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from . import results
from .published import PaperTable
from .tables import cell_stats, select_tables

__all__ = ["PlotsUnavailable", "sweep_value", "write_plots"]


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


def _values(table: PaperTable, records, col):
    ours, err, paper = [], [], []
    for row in table.rows:
        s = cell_stats(records, table, row, col)
        ours.append(float("nan") if s.mean is None else s.mean * col.scale)
        err.append(float("nan") if s.std is None else s.std * col.scale)  # no bar without a spread
        p = row.values.get(col.key)
        paper.append(float("nan") if p is None else p)
    return ours, err, paper


def _bars(plt, table: PaperTable, records, path: Path) -> Path:
    from .tables import has_paper_numbers

    paper_too = has_paper_numbers(table)
    n = len(table.columns)
    ncols = n if n <= 3 else 2
    nrows = -(-n // ncols)
    width = max(4.0, 0.6 * len(table.rows) + 1.5)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 4.2 * nrows), squeeze=False)
    x = list(range(len(table.rows)))
    for ax, col in zip(axes.flat, table.columns):
        ours, err, paper = _values(table, records, col)
        if paper_too:
            ax.bar([i - 0.2 for i in x], ours, 0.4, yerr=err, capsize=3, label="ours")
            ax.bar([i + 0.2 for i in x], paper, 0.4, label="paper", alpha=0.7)
        else:  # nothing published to compare with: one bar per row, its value written on it
            bars = ax.bar(x, ours, 0.6, yerr=err, capsize=3)
            ax.bar_label(bars, labels=["" if v != v else f"{v:.1f}" for v in ours], fontsize=7, label_type="center")
        ax.set_title(col.title or col.key, fontsize=9)
        ax.set_xticks(x)
        ax.set_xticklabels([r.paper_label for r in table.rows], rotation=60, ha="right", fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if paper_too:
        axes[0][0].legend(fontsize=8)
    fig.suptitle(table.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _line(plt, table: PaperTable, records, path: Path) -> Path | None:
    rows = [(sweep_value(r.paper_label), i) for i, r in enumerate(table.rows)]
    rows = sorted((v, i) for v, i in rows if v is not None)
    if len(rows) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [v for v, _ in rows]
    for col in table.columns:
        ours, err, paper = _values(table, records, col)
        line = ax.plot(xs, [paper[i] for _, i in rows], "--o", label=f"{col.title or col.key} (paper)")[0]
        ax.errorbar(xs, [ours[i] for _, i in rows], yerr=[err[i] for _, i in rows], fmt="-s",
                    color=line.get_color(), capsize=3, label=f"{col.title or col.key} (ours)")
    ax.set_xlabel("masked patches" if "masked" in table.id else "setting")
    ax.set_ylabel("score (%)")
    ax.set_title(table.title, fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(records_path: str | os.PathLike, out_dir: str | os.PathLike, table_ids: Sequence[str] | None = None,
                tables: Sequence[PaperTable] | None = None) -> list[Path]:
    """Write ``<id>.png`` (and ``<id>_line.png`` for sweeps) per table; returns the paths.

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
    for table in tables:
        written.append(_bars(plt, table, records, out / f"{table.id}.png"))
        line = _line(plt, table, records, out / f"{table.id}_line.png")
        if line is not None:
            written.append(line)
    return written
