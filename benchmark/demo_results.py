"""The demo's records in the repository's ``results/`` folder, and the table and plot generated from them.

``python -m benchmark demo`` writes everything to an experiment folder (``exp/demo``), which is not kept.
What this project reports of it lives in ``results/demo``, as records plus what is generated from them::

    python -m benchmark demo --publish results/demo    # copy the records of the demo in --out (exp/demo) here
    python -m benchmark demo --render results/demo     # regenerate the table and plot from them alone

``results/demo`` then holds ``results.jsonl`` (the records, byte for byte), ``demo.json`` (the setting, the
corpus seed, each invocation's time and machine, and the sha256 of each pretraining run's ``upstream.pt``),
``demo_table.md``, ``demo_table.csv``, ``demo.png``, ``probes/<row>.jsonl`` (the k-NN probe records each
pretraining run wrote to its ``losses.jsonl``) with ``probe_curves.md`` and ``probe_curves.png`` drawn from
them, and a ``README.md`` with the table and how it was made.
The table gives each cell's 95% interval over test clips and, per family, pretrained minus scratch on the same
clips with whether it is significant (:mod:`benchmark.stats`); the plot pairs the two rows of each family.
Both come from the per-clip correctness in the records, so rendering needs nothing else.
The table counts only records that are the demo's own runs (:mod:`benchmark.provenance`): the pretraining
checkpoints are checked when publishing, against the files in ``exp/demo``, and pinned in ``demo.json`` so
that rendering needs neither the pretraining runs nor anything else outside the folder.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from common.files import tmp_path, write_atomic
from downstream import results

from .cells import RowPair
from .demo_spec import FAMILIES, Setting, demo_options, demo_table, setting_from_dict
from .plots import PlotsUnavailable, write_pair_plot
from .pretrain_runs import pretrain_dir
from .probe_curves import read_probe_curves, write_report
from .provenance import Provenance
from .published import PaperTable
from .tables import to_csv, to_markdown

__all__ = ["DemoResultsError", "demo_pairs", "publish", "render", "write_table"]

META = "demo.json"
RECORDS = "results.jsonl"
PROBES = "probes"  # <folder>/probes/<row label>.jsonl: the probe lines of the row's pretraining run


class DemoResultsError(ValueError):
    """A demo folder that cannot be published or rendered; the message names the folder and what lacks."""


def publish(src: Path, dest: Path, setting: Setting | None = None, seed: int = 0) -> list[Path]:
    """Copy the records of the demo run in ``src`` to ``dest``, pin its pretraining checkpoints and render.

    Args:
        src: the demo's folder (``--out``).
        dest: the published folder (e.g. ``results/demo``).
        setting, seed: what the demo in ``src`` ran with, for a folder without ``demo_run.json`` (which the
            demo writes, and which then decides).

    Returns:
        The files written, the records first.

    Raises:
        DemoResultsError: ``src`` holds no records, neither ``demo_run.json`` nor ``setting`` says how they
            were made, or ``dest`` is ``src``.
    """
    src, dest = Path(src), Path(dest)
    if not (src / RECORDS).is_file():
        raise DemoResultsError(f"{src} has no {RECORDS}: run `python -m benchmark demo --out {src}` first")
    if dest.resolve() == src.resolve():
        raise DemoResultsError(f"--publish {dest} is the demo's own folder (--out); publish to another one")
    if (src / "demo_run.json").is_file():
        run = json.loads((src / "demo_run.json").read_text(encoding="utf-8"))
    elif setting is not None:  # a demo folder of an older version: the caller says which setting it ran
        run = {"setting": asdict(setting), "seed": seed, "invocations": []}
    else:
        raise DemoResultsError(f"{src} has no demo_run.json: give the setting it ran with")
    setting = setting_from_dict(run["setting"])
    prov = Provenance(demo_options(src, setting))
    pinned = {}
    for row in demo_table(setting).rows:
        if row.run is not None and row.run.pretrain:
            expected = prov.expected_checkpoint(row)  # the sha256 of src's pretraining run, when it ran
            if expected.known and expected.sha256:
                pinned[row.label] = expected.sha256
    dest.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(dest / RECORDS)
    try:
        shutil.copyfile(src / RECORDS, tmp)
        tmp.replace(dest / RECORDS)
    finally:
        tmp.unlink(missing_ok=True)
    write_atomic(dest / META, json.dumps({**run, "checkpoints": pinned}, indent=1) + "\n")
    probes = _publish_probes(src, dest, setting)
    return [dest / RECORDS, dest / META, *probes, *render(dest)]


def _publish_probes(src: Path, dest: Path, setting: Setting) -> list[Path]:
    """Copy the probe lines (``{"step", "probe"}``) of each pretraining run's ``losses.jsonl`` in ``src`` to
    ``dest/probes/<row>.jsonl``; rows whose run wrote no probe line are left out."""
    opts = demo_options(src, setting)
    written = []
    for row in demo_table(setting).rows:
        if row.run is None or not row.run.pretrain:
            continue
        losses = pretrain_dir(row.run, opts.expdir, opts.pretrain_overrides) / "losses.jsonl"
        try:
            lines = losses.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        probe_lines = [line for line in lines if line.strip().startswith("{") and '"probe"' in line]
        if probe_lines:
            path = dest / PROBES / f"{row.label}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, "\n".join(probe_lines) + "\n")
            written.append(path)
    return written


def render(folder: Path) -> list[Path]:
    """Regenerate ``demo_table.md``, ``demo_table.csv``, the plot and ``README.md`` of a published demo folder
    from its ``results.jsonl`` and ``demo.json`` alone; returns the files written."""
    folder = Path(folder)
    for name in (RECORDS, META):
        if not (folder / name).is_file():
            raise DemoResultsError(f"{folder} has no {name}: not a published demo folder (see --publish)")
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    setting = setting_from_dict(meta["setting"])
    table = demo_table(setting)
    prov = Provenance(demo_options(folder, setting), checkpoints=meta.get("checkpoints", {}))
    markdown, plot = write_table(folder, table, folder / RECORDS, prov)
    curves = []
    for row in table.rows:  # the probe curves, in the table's row order
        if (folder / PROBES / f"{row.label}.jsonl").is_file():
            curves += read_probe_curves(folder / PROBES / f"{row.label}.jsonl",
                                        row.paper_label.removesuffix(", pretrained"))
    report = write_report(curves, folder, "probe_curves") if curves else {}
    write_atomic(folder / "README.md", _readme(folder, markdown, meta, plot, report))
    written = [folder / "demo_table.md", folder / "demo_table.csv"]
    written += [p for p in report.values() if isinstance(p, Path)]
    return written + ([plot] if plot else []) + [folder / "README.md"]


def demo_pairs(table: PaperTable) -> list[RowPair]:
    """The rows compared clip by clip: per family (``demo_spec.FAMILIES``), each of its pretrained rows
    (``<family>_pretrained``, and e.g. ``ssast_discriminative`` in the large setting) against
    ``<family>_scratch``."""
    labels = {row.label: row for row in table.rows}
    pairs = []
    for fam in FAMILIES:
        scratch = f"{fam.name}_scratch"
        if scratch not in labels:
            continue
        for row in table.rows:
            if row.label.startswith(f"{fam.name}_") and row.label != scratch:
                pairs.append(RowPair(row.label, scratch, row.paper_label.removesuffix(", pretrained")))
    return pairs


def write_table(out: Path, table: PaperTable, records_path: Path, provenance: Provenance
                ) -> tuple[str, Path | None]:
    """``demo_table.md``, ``demo_table.csv`` and the plot ``<table id>.png`` (without matplotlib: none) in
    ``out``, from the records of ``records_path`` checked by ``provenance``; returns the markdown and the
    plot. Cells carry their 95% intervals, and each family's pretrained - scratch difference is given with
    its verdict (:func:`demo_pairs`)."""
    records = results.load(records_path)
    pairs = demo_pairs(table)
    markdown = to_markdown(table, records, provenance=provenance, intervals=True, pairs=pairs)
    write_atomic(out / "demo_table.md", markdown)
    write_atomic(out / "demo_table.csv", to_csv(table, records, provenance=provenance, pairs=pairs))
    return markdown, _plot(table, records_path, out, provenance, pairs)


def _plot(table: PaperTable, records_path: Path, out: Path, provenance: Provenance,
          pairs: list[RowPair]) -> Path | None:
    try:
        return write_pair_plot(records_path, out / f"{table.id}.png", table, pairs, provenance)
    except PlotsUnavailable as err:  # matplotlib is an optional extra
        print(f"no plot: {err}")
        return None


def _readme(folder: Path, markdown: str, meta: dict, plot: Path | None, probes: dict | None = None) -> str:
    """The folder's index: how the records were made, the table, the plot and how to regenerate them."""
    try:  # the commands name the folder as seen from the checkout (e.g. results/demo), not a machine path
        folder = folder.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        pass
    lines = [f"# `python -m benchmark demo`: {folder.name}", "",
             "Records of the built-in demo as this project ran it, and the table and plot generated from "
             "them; do not edit by hand. Regenerate the table and plot from the records here:", "", "```bash",
             f"python -m benchmark demo --render {folder.as_posix()}", "```", "",
             "After running the demo again (`python -m benchmark demo`), publish its records here with "
             f"`python -m benchmark demo --publish {folder.as_posix()}`.", "",
             f"Setting: demo corpus size `{_size_name(meta['setting'])}`, corpus seed {meta['seed']}; "
             f"downstream seeds {_seeds(meta['setting'])}.", ""]
    invocations = meta.get("invocations", [])
    if invocations:
        lines += ["Minutes: wall time of each stage summed over the demo's worker processes; `total` is the "
                  "invocation's wall time.", "",
                  "| date | jobs run | skipped | failed | minutes | device | CPU cores | torch |",
                  "|---|---|---|---|---|---|---|---|"]
        for inv in invocations:
            minutes = ", ".join(f"{k} {v:.1f}" for k, v in inv["minutes"].items())
            cells = [inv["date"], inv["jobs_run"], inv["jobs_skipped"], inv["jobs_failed"], minutes,
                     inv["device"], inv["cpu_cores"], inv["torch"]]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        lines.append("")
    lines.append(markdown.rstrip("\n"))
    if plot is not None:
        lines += ["", f"![{plot.stem}]({plot.name})"]
    if probes:
        lines += ["", "## Probe curves during pretraining", "",
                  "k-NN accuracy of each pretraining run's encoder (step 0 = its random initialisation), "
                  f"from `{PROBES}/`:", "", Path(probes["markdown"]).read_text(encoding="utf-8").rstrip("\n")]
        if isinstance(probes.get("png"), Path):
            lines += ["", f"![probe curves]({probes['png'].name})"]
    return "\n".join(lines) + "\n"


def _seeds(setting: dict) -> str:
    """The downstream seeds of a ``demo_run.json`` setting, e.g. ``1337, 1338, 1339 (fine-tuned: 1337)``."""
    seeds = setting.get("seeds") or [1337]  # written before seeds were a setting: s3prl's one seed
    text = ", ".join(str(s) for s in seeds)
    ft = setting.get("finetune_seeds")
    if not ft or list(ft) == list(seeds):
        return text
    return text + f" (fine-tuned: {', '.join(str(s) for s in ft)})"


def _size_name(setting: dict) -> str:
    size = setting["data_size"]
    return size["name"] if isinstance(size, dict) else str(size)
