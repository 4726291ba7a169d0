"""Probe accuracy against pretraining steps, one curve per run, read from the runs' ``losses.jsonl``.

``run_pretrain.py --probe TASK`` appends a ``{"step": S, "probe": {"task", "knn_accuracy", "majority",
"chance", ...}}`` line to ``<run>/losses.jsonl`` at step 0 (the random initialisation) and every
``probe_every`` steps, between the per-step loss lines. This module reads only those files, so it works on
runs copied from another machine and needs nothing of the training code::

    python -m benchmark probe-curves exp/pretrain/ssast_demo exp/pretrain/mae_ast_demo --out exp/probe_curves
    python -m benchmark probe-curves SSAST=exp/pretrain/a/losses.jsonl MAE-AST=exp/pretrain/b --metric NAME

Each argument is a run folder or a jsonl file, optionally prefixed ``LABEL=``; the default label is the run
folder's name. The markdown table (always written) has one row per probed step and one column per run, in
percent, followed by each column's majority-class and chance baselines and the change since step 0.
``<name>.png`` (accuracy against step, one panel per task, the baselines dotted) needs matplotlib and is
skipped with a note without it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.files import tmp_path, write_atomic

__all__ = ["ProbeCurve", "ProbePoint", "read_probe_curves", "curves_table", "plot_curves", "write_report",
           "add_arguments", "run", "main"]

LOSSES = "losses.jsonl"


@dataclass(frozen=True)
class ProbePoint:
    """One probe of one run: the score (a fraction; NaN for a diverged encoder) and its baselines."""

    step: int
    value: float
    majority: float | None = None
    chance: float | None = None
    n_clips: int | None = None  # clips scored, where the probe says (downstream.knn.KnnProbe does)
    ci95: float | None = None  # half-width of the score's 95 % interval (a fraction), where the probe says


@dataclass(frozen=True)
class ProbeCurve:
    """A run's probe scores on one task, by increasing step."""

    label: str
    task: str
    metric: str
    points: tuple[ProbePoint, ...]
    source: str = ""

    def at(self, step: int) -> float | None:
        """The score at ``step``, or None where the run did not probe."""
        return next((p.value for p in self.points if p.step == step), None)

    @property
    def majority(self) -> float | None:
        """The majority-class baseline (the first probe's that gives one: a run probes the same clips)."""
        return next((p.majority for p in self.points if p.majority is not None), None)

    @property
    def chance(self) -> float | None:
        return next((p.chance for p in self.points if p.chance is not None), None)

    @property
    def gain(self) -> float | None:
        """Last score minus the step-0 score (the random initialisation); None without a step-0 probe."""
        first, last = self.at(0), self.points[-1].value if self.points else None
        return None if first is None or last is None else last - first


def _number(value, where: str, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: probe {key!r} must be a number, got {value!r}")
    return float(value)


def _split_label(arg: str) -> tuple[str | None, Path]:
    """``LABEL=PATH`` -> (LABEL, PATH); a bare path (even one holding '=') -> (None, PATH)."""
    if "=" in arg and not Path(arg).exists():
        label, path = arg.split("=", 1)
        if label and path:
            return label, Path(path)
    return None, Path(arg)


def read_probe_curves(path: str | os.PathLike, label: str | None = None,
                      metric: str = "knn_accuracy") -> list[ProbeCurve]:
    """The probe curves (one per probed task) of one run.

    Args:
        path: a run folder (its ``losses.jsonl`` is read) or a jsonl file.
        label: the curves' name; default: the run folder's name.
        metric: the probe record's key to read (``knn_accuracy``, or another number the probe wrote).

    Returns:
        One :class:`ProbeCurve` per task, in the order the tasks first appear. Where a step was probed twice
        (a run resumed from an earlier checkpoint without truncation), the later record wins.

    Raises:
        FileNotFoundError: no such file, or a folder without ``losses.jsonl``.
        ValueError: a line that is not JSON (naming file and line; an unterminated last line, a write under
            way, is ignored), a probe record without ``metric`` or with a non-number, or no probe record.
    """
    p = Path(path)
    file = p / LOSSES if p.is_dir() else p
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file (give a run folder holding {LOSSES} or a jsonl file)")
    label = label or (p.name if p.is_dir() else file.parent.name)
    text = file.read_text(encoding="utf-8")
    lines = text.split("\n")
    by_task: dict[str, dict[int, ProbePoint]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) and not text.endswith("\n"):  # the last line of a run still writing
                continue
            raise ValueError(f"{file} line {n}: not a JSON object") from None
        if not isinstance(row, dict) or "probe" not in row:
            continue  # a loss line
        probe, where = row["probe"], f"{file} line {n}"
        step = row.get("step")
        if not isinstance(probe, dict) or not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(f"{where}: a probe record needs an integer 'step' and a 'probe' object")
        if metric not in probe:
            raise ValueError(f"{where}: the probe record has no {metric!r}; it has {sorted(probe)}")
        value = _number(probe[metric], where, metric)
        if value is None:
            raise ValueError(f"{where}: probe {metric!r} is null; a diverged encoder's score is NaN")
        n_clips = _number(probe.get("n_clips"), where, "n_clips")
        point = ProbePoint(step, value,
                           _number(probe.get("majority"), where, "majority"),
                           _number(probe.get("chance"), where, "chance"),
                           None if n_clips is None else int(n_clips),
                           _number(probe.get("ci95"), where, "ci95") if metric == "knn_accuracy" else None)
        by_task.setdefault(str(probe.get("task", "?")), {})[point.step] = point
    if not by_task:
        raise ValueError(f"{file}: no probe records (was the run started with --probe TASK?)")
    return [ProbeCurve(label, task, metric, tuple(pts[s] for s in sorted(pts)), str(file))
            for task, pts in by_task.items()]


def _pct(value: float | None) -> str:
    if value is None:
        return "–"
    return "diverged" if math.isnan(value) else f"{100 * value:.1f}"


def _spread(curve: ProbeCurve) -> str:
    """``N, +-W`` (the largest half-width over the curve's probes, in points), or ``–``."""
    clips = {p.n_clips for p in curve.points if p.n_clips}
    widths = [p.ci95 for p in curve.points if p.ci95 is not None and math.isfinite(p.ci95)]
    if not clips:
        return "–"
    return "/".join(map(str, sorted(clips))) + (f", ±{100 * max(widths):.1f}" if widths else "")


def curves_table(curves: Sequence[ProbeCurve]) -> str:
    """Markdown: per task, rows = probed steps, columns = runs, cells = score in %; then the majority and
    chance baselines and the change since step 0 (in points). A step a run did not probe shows ``–``."""
    out = []
    for task in dict.fromkeys(c.task for c in curves):
        group = [c for c in curves if c.task == task]
        steps = sorted({p.step for c in group for p in c.points})
        metric = ", ".join(dict.fromkeys(c.metric for c in group))
        out.append(f"**{task}**, {metric} (%) by pretraining step (step 0 = random initialisation)\n")
        out.append("| step | " + " | ".join(c.label for c in group) + " |")
        out.append("|---:|" + "---:|" * len(group))
        for s in steps:
            out.append(f"| {s} | " + " | ".join(_pct(c.at(s)) for c in group) + " |")
        out.append("| majority class | " + " | ".join(_pct(c.majority) for c in group) + " |")
        out.append("| chance | " + " | ".join(_pct(c.chance) for c in group) + " |")
        if any(p.n_clips for c in group for p in c.points):
            out.append("| clips scored, 95% interval | " + " | ".join(_spread(c) for c in group) + " |")
        gains = ["–" if c.gain is None else ("diverged" if math.isnan(c.gain) else f"{100 * c.gain:+.1f}")
                 for c in group]
        out.append("| last - step 0 (points) | " + " | ".join(gains) + " |")
        out.append("")
    return "\n".join(out)


def plot_curves(curves: Sequence[ProbeCurve], path: str | os.PathLike) -> Path:
    """``path`` (png): score against step, one panel per task, one line per run, baselines dotted.

    Raises:
        ImportError: matplotlib is not installed (nothing is written).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(c.task for c in curves))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.0 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        group = [c for c in curves if c.task == task]
        for k, c in enumerate(group):
            ax.plot([p.step for p in c.points], [100 * p.value for p in c.points], "-o", color=f"C{k % 10}",
                    markersize=4, label=c.label)
            band = [p for p in c.points if p.ci95 is not None and math.isfinite(p.ci95)]
            if band:  # the 95 % interval over the probe's clips
                ax.fill_between([p.step for p in band], [100 * (p.value - p.ci95) for p in band],
                                [100 * (p.value + p.ci95) for p in band], color=f"C{k % 10}", alpha=0.15,
                                linewidth=0)
        baselines = [(group[0].majority, "majority class", ":"), (group[0].chance, "chance", "--")]
        if baselines[0][0] is not None and baselines[0][0] == baselines[1][0]:  # balanced classes: one line
            baselines = [(baselines[0][0], "majority class = chance", "--")]
        for value, name, style in baselines:
            if value is not None:
                ax.axhline(100 * value, color="grey", linestyle=style, linewidth=1, label=name)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("pretraining step (0 = random init)")
        ax.set_ylabel(f"{', '.join(dict.fromkeys(c.metric for c in group))} (%)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    tmp = tmp_path(path)
    try:  # written under a temporary name, renamed into place: a reader never sees half a png
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def write_report(curves: Sequence[ProbeCurve], out_dir: str | os.PathLike,
                 name: str = "probe_curves") -> dict[str, Path | str]:
    """``<out_dir>/<name>.md`` (always) and ``<name>.png`` (with matplotlib). Returns ``{"markdown": path,
    "png": path}``, or ``"png": "<why it was skipped>"``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path | str] = {"markdown": out / f"{name}.md"}
    write_atomic(written["markdown"], curves_table(curves))
    try:
        written["png"] = plot_curves(curves, out / f"{name}.png")
    except ImportError:
        written["png"] = "matplotlib is not installed (pip install matplotlib): no plot"
    return written


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="[LABEL=]RUN",
                   help="run folders (holding losses.jsonl) or jsonl files, each optionally named LABEL=")
    p.add_argument("--metric", default="knn_accuracy",
                   help="the probe record's key to plot (default knn_accuracy)")
    p.add_argument("--out", default="exp/probe_curves", help="folder for <name>.md and <name>.png")
    p.add_argument("--name", default="probe_curves", help="file name stem (default probe_curves)")


def run(args: argparse.Namespace) -> int:
    """Read every run, print the table, write the report; 2 with one ``error:`` line on a bad input."""
    try:
        curves = []
        for arg in args.runs:
            label, path = _split_label(arg)
            curves += read_probe_curves(path, label, args.metric)
    except (OSError, ValueError) as err:
        print(f"probe_curves: error: {err}", file=sys.stderr)
        return 2
    written = write_report(curves, args.out, args.name)
    print(curves_table(curves))
    for kind, where in written.items():
        print(f"{kind}: {where}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark probe-curves", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
