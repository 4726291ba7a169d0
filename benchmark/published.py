"""Published paper numbers as data, one YAML file per paper: the tables of the texts at hand (SSAST's AAAI
2022 poster; ASiT's arXiv v1; the MAE-AST text at hand prints no numbers, so its file holds the row ASiT cites
and its variants with empty cells).

``benchmark/published/<paper>.yaml`` holds the tables; this module loads them into frozen dataclasses and
validates them strictly, so a typo fails loudly instead of producing a wrong comparison::

    tables:
      - id: ssast_main                      # unique across all files
        paper: ssast
        title: ...
        source: SSAST (AAAI 2022) poster, table 'Main Results'
        notes: ...                          # optional
        columns:
          - {key: as20k, task: as20k, mode: finetune, metric: mAP, title: AS-20K mAP}   # scale: 100 default
        rows:
          - label: ssast_patch_400          # also the result-record label a suite writes for this row
            paper_label: SSAST 400          # as printed in the paper
            source: ...                     # optional; default "<table source>, row '<paper_label>'"
            values: {as20k: 31.0}           # every column key, null where the paper gives no number
            run: {upstream: ssast_patch_400, ckpt: SSAST-Base-Patch-400.pth}   # or null

Numbers are transcribed as printed (percent); nothing is derived or filled in. A row's ``run`` says how this
project produces it (:class:`RunSpec`); rows it cannot produce (other papers' supervised baselines, data it
has no recipe for) have ``run: null``. One label means one run: a label used in several tables must carry
the same ``run`` everywhere, so one set of result records fills every table it appears in.
"""
from __future__ import annotations

import math
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.resources import config_path, published_dir, shipped_path
from common.yamlfile import read_yaml, require_keys

__all__ = ["Column", "PaperTable", "PublishedError", "Row", "RunSpec", "PUBLISHED_DIR", "get_table",
           "load_tables", "select_tables"]

PUBLISHED_DIR = published_dir()
PRETRAIN_DIR = config_path("pretrain")  # rows name recipes as configs/pretrain/<file>.yaml
MODES = ("finetune", "frozen")
METRICS = ("mAP", "accuracy")


class PublishedError(ValueError):
    """A published-table file that does not validate; the message names the file and the offending key."""


# ------------------------------------------------------------------------------------------ schema
@dataclass(frozen=True)
class Column:
    """One result column of a table."""

    key: str  # unique within the table, e.g. "as20k", "ks2"
    task: str  # downstream task name (downstream.tasks), e.g. "speech_commands_v2"
    mode: str  # "finetune" or "frozen" (as in result records)
    metric: str  # "mAP" or "accuracy" (as in result records)
    scale: float = 100.0  # record values are fractions; the paper prints percent
    title: str = ""  # header text, e.g. "AS-20K mAP"


@dataclass(frozen=True)
class RunSpec:
    """How this project produces a row: which upstream, from which weights, with which overrides."""

    upstream: str  # registered upstream name used for the downstream runs
    ckpt: str | None = None  # checkpoint file name, looked up in $ASTBENCH_CHECKPOINTS
    pretrain: str | None = None  # configs/pretrain/*.yaml recipe to pretrain first (its output is the ckpt)
    pretrain_upstream: str | None = None  # run_pretrain.py -u value
    pretrain_overrides: tuple[str, ...] = ()  # run_pretrain.py -o key=value
    overrides: tuple[str, ...] = ()  # run_downstream.py -o key=value
    layer: int | None = None  # run_downstream.py -l (None = weighted sum)
    # named pretraining corpora (e.g. ["librispeech"]), given to a sweep as --pretrain-data NAME=DIR; several
    # are pretrained on together; empty = the sweep's default --pretrain-data
    pretrain_data: tuple[str, ...] = ()


@dataclass(frozen=True)
class Row:
    label: str  # unique within the table; the result-record label
    paper_label: str  # the row's name as printed in the paper
    source: str  # provenance: paper, table, row text
    values: Mapping[str, float | None]  # column key -> published number (percent) or None
    run: RunSpec | None  # None: this project cannot produce the row


@dataclass(frozen=True)
class PaperTable:
    id: str
    paper: str
    title: str
    source: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    notes: str = ""

    def column(self, key: str) -> Column:
        for col in self.columns:
            if col.key == key:
                return col
        raise KeyError(f"table {self.id!r} has no column {key!r}; columns: {[c.key for c in self.columns]}")


# ------------------------------------------------------------------------------------------ loading
def load_tables(paths: Iterable[str | Path] | None = None, check_runs: bool = True) -> list[PaperTable]:
    """Load and validate published tables.

    Args:
        paths: YAML files; default every ``benchmark/published/*.yaml``, sorted by file name.
        check_runs: also check each :class:`RunSpec` against this project (registered upstreams, pretrain
            recipes and their overrides, downstream overrides). Needs torch; off only for quick inspection.

    Returns:
        The tables, by file then in file order.

    Raises:
        PublishedError: naming the file and the key (unknown or missing keys, duplicate table ids or row
            labels, a value key that is not a column, a bad mode/metric/number, an invalid run).
    """
    files = sorted(PUBLISHED_DIR.glob("*.yaml")) if paths is None else [Path(p) for p in paths]
    tables: list[PaperTable] = []
    seen: dict[str, Path] = {}
    runs: dict[str, tuple[RunSpec | None, str]] = {}  # label -> (run, where first seen)
    for path in files:
        for table in _load_file(path):
            if table.id in seen:
                raise PublishedError(f"{path}: duplicate table id {table.id!r} (also in {seen[table.id]})")
            seen[table.id] = path
            for row in table.rows:
                where = f"{path}: table {table.id!r} row {row.label!r}"
                if row.label in runs and runs[row.label][0] != row.run:
                    raise PublishedError(f"{where}: 'run' differs from the same label in "
                                         f"{runs[row.label][1]}; one label is one run (use another label for "
                                         f"another run)")
                runs.setdefault(row.label, (row.run, where))
                if check_runs and row.run is not None:
                    _check_run(row.run, where)
            tables.append(table)
    return tables


def get_table(table_id: str, paths: Iterable[str | Path] | None = None) -> PaperTable:
    """The table ``table_id``; ``ValueError`` listing the known ids when there is none."""
    tables = load_tables(paths)
    for table in tables:
        if table.id == table_id:
            return table
    raise ValueError(f"unknown published table {table_id!r}; known: {', '.join(t.id for t in tables)}")


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


def _load_file(path: Path) -> list[PaperTable]:
    top = _fields(read_yaml(path, error=PublishedError), path, "the file", required=("tables",))
    if not isinstance(top["tables"], list) or not top["tables"]:
        raise PublishedError(f"{path}: 'tables' must be a non-empty list")
    return [_table(item, path, i) for i, item in enumerate(top["tables"])]


def _fields(data: Any, path: Path, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
            ) -> dict[str, Any]:
    """``data`` as a mapping holding every ``required`` key and no key outside ``required + optional``."""
    return require_keys(data, f"{path}: {where}", required, optional, error=PublishedError)


def _text(value: Any, path: Path, where: str, key: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise PublishedError(f"{path}: {where}: '{key}' must be a non-empty string, got {value!r}")
    return value


def _table(data: Any, path: Path, index: int) -> PaperTable:
    where = f"tables[{index}]"
    d = _fields(data, path, where, ("id", "paper", "title", "source", "columns", "rows"), ("notes",))
    tid = _text(d["id"], path, where, "id")
    where = f"table {tid!r}"
    if not isinstance(d["columns"], list) or not d["columns"]:
        raise PublishedError(f"{path}: {where}: 'columns' must be a non-empty list")
    columns = tuple(_column(c, path, f"{where} columns[{i}]") for i, c in enumerate(d["columns"]))
    keys = [c.key for c in columns]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise PublishedError(f"{path}: {where}: duplicate column key(s) {dup}")
    if not isinstance(d["rows"], list) or not d["rows"]:
        raise PublishedError(f"{path}: {where}: 'rows' must be a non-empty list")
    source = _text(d["source"], path, where, "source")
    rows = tuple(_row(r, path, f"{where} rows[{i}]", columns, source) for i, r in enumerate(d["rows"]))
    labels = [r.label for r in rows]
    dup = sorted({k for k in labels if labels.count(k) > 1})
    if dup:
        raise PublishedError(f"{path}: {where}: duplicate row label(s) {dup}")
    return PaperTable(id=tid, paper=_text(d["paper"], path, where, "paper"),
                      title=_text(d["title"], path, where, "title"), source=source, columns=columns,
                      rows=rows,
                      notes=_text(d.get("notes", ""), path, where, "notes", allow_empty=True).strip())


def _column(data: Any, path: Path, where: str) -> Column:
    d = _fields(data, path, where, ("key", "task", "mode", "metric"), ("scale", "title"))
    for key in ("key", "task"):
        _text(d[key], path, where, key)
    if d["mode"] not in MODES:
        raise PublishedError(f"{path}: {where}: 'mode' must be one of {list(MODES)}, got {d['mode']!r}")
    if d["metric"] not in METRICS:
        raise PublishedError(f"{path}: {where}: 'metric' must be one of {list(METRICS)}, got {d['metric']!r}")
    scale = d.get("scale", 100.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise PublishedError(f"{path}: {where}: 'scale' must be a positive number, got {scale!r}")
    return Column(key=d["key"], task=d["task"], mode=d["mode"], metric=d["metric"], scale=float(scale),
                  title=_text(d.get("title", ""), path, where, "title", allow_empty=True))


def _row(data: Any, path: Path, where: str, columns: tuple[Column, ...], table_source: str) -> Row:
    d = _fields(data, path, where, ("label", "paper_label", "values", "run"), ("source",))
    label = _text(d["label"], path, where, "label")
    where = f"{where.rsplit(' ', 1)[0]} row {label!r}"
    paper_label = _text(d["paper_label"], path, where, "paper_label")
    values = d["values"]
    if not isinstance(values, Mapping):
        raise PublishedError(f"{path}: {where}: 'values' must be a mapping of column key to number or null")
    by_key = {c.key: c for c in columns}
    unknown = [k for k in values if k not in by_key]
    if unknown:
        raise PublishedError(f"{path}: {where}: 'values' key(s) {unknown} are not columns; columns: "
                             f"{list(by_key)}")
    missing = [k for k in by_key if k not in values]
    if missing:  # explicit nulls keep every transcription auditable
        raise PublishedError(f"{path}: {where}: 'values' lacks column(s) {missing} (write null if not "
                             f"reported)")
    clean: dict[str, float | None] = {}
    for key, col in by_key.items():
        v = values[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                              or not 0 <= v <= col.scale):
            raise PublishedError(f"{path}: {where}: values.{key} must be null or a number in "
                                 f"[0, {col.scale:g}], got {v!r}")
        clean[key] = None if v is None else float(v)
    source = d.get("source") or f"{table_source}, row '{paper_label}'"
    return Row(label=label, paper_label=paper_label, source=_text(source, path, where, "source"),
               values=types.MappingProxyType(clean), run=_run(d["run"], path, where))


def _run(data: Any, path: Path, where: str) -> RunSpec | None:
    if data is None:
        return None
    where = f"{where} run"
    d = _fields(data, path, where, ("upstream",),
                ("ckpt", "pretrain", "pretrain_upstream", "pretrain_overrides", "overrides", "layer",
                 "pretrain_data"))
    for key in ("ckpt", "pretrain", "pretrain_upstream"):
        if d.get(key) is not None:
            _text(d[key], path, where, key)
    corpora = d.get("pretrain_data", [])
    if not isinstance(corpora, list) or not all(isinstance(c, str) and c.isidentifier() for c in corpora):
        raise PublishedError(f"{path}: {where}: 'pretrain_data' must be a list of corpus names "
                             f"(identifiers), got {corpora!r}")
    for key in ("pretrain_overrides", "overrides"):
        items = d.get(key, [])
        if not isinstance(items, list) or not all(isinstance(s, str) and "=" in s for s in items):
            raise PublishedError(f"{path}: {where}: '{key}' must be a list of 'key=value' strings, got "
                                 f"{items!r}")
    layer = d.get("layer")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
        raise PublishedError(f"{path}: {where}: 'layer' must be null or an int >= 0, got {layer!r}")
    spec = RunSpec(upstream=_text(d["upstream"], path, where, "upstream"), ckpt=d.get("ckpt"),
                   pretrain=d.get("pretrain"), pretrain_upstream=d.get("pretrain_upstream"),
                   pretrain_overrides=tuple(d.get("pretrain_overrides", [])),
                   overrides=tuple(d.get("overrides", [])), layer=layer, pretrain_data=tuple(corpora))
    if spec.pretrain is None and (spec.pretrain_upstream or spec.pretrain_overrides or spec.pretrain_data):
        raise PublishedError(f"{path}: {where}: 'pretrain_upstream' / 'pretrain_overrides' / 'pretrain_data' "
                             f"need 'pretrain'")
    if spec.pretrain is not None and spec.pretrain_upstream is None:
        raise PublishedError(f"{path}: {where}: 'pretrain_upstream' is required when 'pretrain' is set")
    if spec.pretrain is not None and spec.ckpt is not None:
        raise PublishedError(f"{path}: {where}: give 'ckpt' or 'pretrain', not both (pretraining makes the "
                             f"ckpt)")
    return spec


# ------------------------------------------------------------------------------------------ run checks
def _check_run(spec: RunSpec, where: str) -> None:
    """Check ``spec`` against the project: upstream registered, recipe present, every override known."""
    import upstream
    from common.config import load_config
    from downstream.config import DownstreamConfig

    names = upstream.list_upstreams()
    if spec.upstream not in names:
        raise PublishedError(f"{where}: run.upstream {spec.upstream!r} is not a registered upstream; "
                             f"registered: {', '.join(names)}")
    try:
        load_config(DownstreamConfig, None, spec.overrides)
    except (ValueError, TypeError) as err:  # ConfigError is a ValueError
        raise PublishedError(f"{where}: run.overrides: {err}") from None
    if spec.pretrain is not None:
        _check_pretrain(spec, where)


def _check_pretrain(spec: RunSpec, where: str) -> None:
    """The row's pretraining resolves as the sweep will run it, and its encoder is the row's upstream."""
    import pretrain
    from upstream.registry import get_family

    recipe = shipped_path(spec.pretrain, prefer_shipped=True).resolve()
    if recipe.parent != PRETRAIN_DIR or recipe.suffix != ".yaml" or not recipe.is_file():
        raise PublishedError(f"{where}: run.pretrain {spec.pretrain!r} is not a recipe file under "
                             f"configs/pretrain/")
    shortcuts = pretrain.shortcuts()
    if spec.pretrain_upstream not in shortcuts:
        raise PublishedError(f"{where}: run.pretrain_upstream {spec.pretrain_upstream!r} is not one of "
                             f"{sorted(shortcuts)}")
    try:  # what the sweep's pretraining (= run_pretrain.py -u <pretrain_upstream> -c <pretrain> -o ...) runs
        cfg = pretrain.resolve_config(spec.pretrain_upstream, recipe, spec.pretrain_overrides,
                                      out_dir=pretrain.PretrainConfig().out_dir)
        family = get_family(cfg.objective["family"])
        objective = family.parse_objective(cfg.objective)
    except (ValueError, TypeError, KeyError) as err:  # ConfigError is a ValueError
        raise PublishedError(f"{where}: run.pretrain / pretrain_overrides: {err}") from None
    # the downstream upstream must be the same family, token and size as the pretrained encoder
    want = family.upstream_prefix(objective)
    if not spec.upstream.startswith(want):
        raise PublishedError(f"{where}: run.upstream {spec.upstream!r} does not match the pretrained encoder "
                             f"({want}...)")
