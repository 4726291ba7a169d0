"""Tables from result records: aggregation by hand, missing / partial / mixed cells, renderers, CLI."""
from __future__ import annotations

import statistics

import pytest

from benchmark.cells import cell_stats
from benchmark.provenance import Provenance
from benchmark.published import Column, PaperTable, Row
from benchmark.tables import main_tables, to_csv, to_latex, to_markdown, write_tables
from downstream import results
from downstream.tasks import FOLD_AVERAGED_SPLIT

# these tests are about aggregation: the rows have no run specification and the records no configuration, so
# the label alone decides (tests/test_provenance.py checks the specification)
OFF = Provenance.off()
ESC = Column(key="esc50", task="esc50", mode="finetune", metric="accuracy", title="ESC-50 acc")
KS2 = Column(key="ks2", task="speech_commands_v2", mode="finetune", metric="accuracy", title="KS2 acc")
TABLE = PaperTable(
    id="demo_tab", paper="demo", title="Demo_table 100% & more", source="Demo Table 1", columns=(ESC, KS2),
    rows=(Row("ours_a", "Model_A", "Demo Table 1, row 'A'", {"esc50": 72.6, "ks2": 98.0}, None),
          Row("ours_b", "Model B", "Demo Table 1, row 'B'", {"esc50": None, "ks2": None}, None)),
)


def rec(label="ours_a", task="esc50", value=0.7, seed=1, fold=None, ts="2024-01-01T00:00:00+0000", sha="a",
        split="test", mode="finetune"):
    return results.ResultRecord(upstream="up", task=task, split=split, metric="accuracy", value=value,
                                ckpt_sha256=sha, fold=fold, mode=mode, seed=seed, label=label, timestamp=ts,
                                code_version="test")


ESC_VALUES = {1: [0.70, 0.72, 0.74, 0.71, 0.73], 2: [0.69, 0.70, 0.75, 0.72, 0.74]}


def esc_records(split=FOLD_AVERAGED_SPLIT):
    """ESC-50 records as the suites write them: each fold at the step chosen on the fold-averaged curve."""
    return [rec(value=v, seed=s, fold=f + 1, split=split) for s, vals in ESC_VALUES.items()
            for f, v in enumerate(vals)]


def test_fold_task_two_seeds_by_hand():
    stats = cell_stats(esc_records(), TABLE, TABLE.rows[0], ESC, provenance=OFF)
    seed_means = [statistics.fmean(v) for v in ESC_VALUES.values()]  # 0.72, 0.72
    assert stats.n_runs == 10 and stats.n_seeds == 2 and stats.n_folds == 5 and stats.complete
    assert stats.mean == pytest.approx(statistics.fmean(seed_means))
    assert stats.std == pytest.approx(statistics.stdev(seed_means))  # sample std, ddof=1


def test_fold_task_one_seed_std_over_folds():
    records = [r for r in esc_records() if r.seed == 1]
    stats = cell_stats(records, TABLE, TABLE.rows[0], ESC, provenance=OFF)
    assert stats.mean == pytest.approx(0.72)
    assert stats.std == pytest.approx(statistics.stdev(ESC_VALUES[1]))


def test_seeds_without_folds_and_filters():
    records = [rec(task="speech_commands_v2", value=v, seed=s) for s, v in [(1, 0.97), (2, 0.98), (3, 0.96)]]
    records += [rec(task="speech_commands_v2", value=0.1, seed=9, split="dev"),  # dev split: ignored
                rec(task="speech_commands_v2", value=0.1, seed=9, mode="frozen"),  # other mode: ignored
                rec(task="speech_commands_v2", value=0.1, seed=9, label="ours_b")]  # other row
    stats = cell_stats(records, TABLE, TABLE.rows[0], KS2, provenance=OFF)
    assert stats.n_runs == 3 and stats.mean == pytest.approx(0.97) and stats.std == pytest.approx(0.01)
    one = cell_stats(records[:1], TABLE, TABLE.rows[0], KS2, provenance=OFF)
    assert one.mean == pytest.approx(0.97) and one.std is None


def test_newest_duplicate_wins():
    records = [rec(task="speech_commands_v2", value=0.5, ts="2024-01-02T00:00:00+0000"),
               rec(task="speech_commands_v2", value=0.9, ts="2024-03-01T00:00:00+0000"),
               rec(task="speech_commands_v2", value=0.1, ts="2024-02-01T00:00:00+0000")]
    stats = cell_stats(records, TABLE, TABLE.rows[0], KS2, provenance=OFF)
    assert stats.n_runs == 1 and stats.mean == pytest.approx(0.9)


def test_missing_partial_and_mixed_cells():
    partial = [r for r in esc_records() if r.seed == 1 and r.fold <= 3]
    stats = cell_stats(partial, TABLE, TABLE.rows[0], ESC, provenance=OFF)
    assert not stats.complete and stats.n_folds == 3 and stats.expected_folds == 5 and stats.std is None
    md = to_markdown(TABLE, partial, provenance=OFF)
    assert "72.0* [3/5 folds] (72.6)" in md and "incomplete" in md
    assert "— (98.0)" in md  # no KS2 runs: missing, not a number
    assert "| Model B | — | — |" in md
    mixed = [rec(task="speech_commands_v2", value=0.97, seed=1, sha="a"),
             rec(task="speech_commands_v2", value=0.98, seed=2, sha="b")]
    assert cell_stats(mixed, TABLE, TABLE.rows[0], KS2, provenance=OFF).mixed_ckpts
    assert "97.5 ± 0.7† (98.0)" in to_markdown(TABLE, mixed, provenance=OFF)


def test_renderers():
    records = esc_records()
    md = to_markdown(TABLE, records, provenance=OFF)
    assert "| Model_A | 72.0 ± 0.0 (72.6) | — (98.0) |" in md
    assert "72.00 ± 0.00 (72.60)" in to_markdown(TABLE, records, decimals=2, provenance=OFF)
    lines = to_csv(TABLE, records, provenance=OFF).splitlines()
    assert lines[0].startswith("table,row,paper_label,column") and "ours_mean,ours_std,n" in lines[0]
    assert lines[1].startswith("demo_tab,ours_a,Model_A,esc50,esc50,finetune,accuracy,72.0,0.0,10,2,5,5,true")
    assert lines[2] == ("demo_tab,ours_a,Model_A,ks2,speech_commands_v2,finetune,accuracy,,,0,0,0,0,,false,"
                        "false,98.0,ours," + "," * 9)  # no interval: the ci_* columns are empty
    tex = to_latex(TABLE, records, provenance=OFF)
    assert r"Demo\_table 100\% \& more" in tex and r"Model\_A" in tex
    assert r"72.0 $\pm$ 0.0 (72.6)" in tex and "-- (98.0)" in tex and r"\toprule" in tex


def test_write_tables_and_cli(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    for r in esc_records():
        results.append(r, path)
    out = tmp_path / "tables"
    written = write_tables(path, out, tables=[TABLE], provenance=OFF)
    assert sorted(p.name for p in written) == ["README.md", "demo_tab.csv", "demo_tab.md", "demo_tab.tex"]
    assert "demo_tab" in (out / "README.md").read_text()
    assert not list(out.glob("*.tmp"))

    assert main_tables(["--results", str(path), "--out", str(out), "--table", "ssast_main", "--format", "md",
                        "--print"]) == 0
    assert (out / "ssast_main.md").is_file() and not (out / "ssast_main.csv").exists()
    assert "SSAST 400" in capsys.readouterr().out

    path.write_text('{"upstream": "x"\n')
    assert main_tables(["--results", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 1" in err[0]
    assert main_tables(["--results", str(tmp_path / "none.jsonl"), "--out", str(out), "--table", "nope"]) == 2


def test_all_published_tables_render_without_records(tmp_path):
    written = write_tables(tmp_path / "none.jsonl", tmp_path / "out")
    assert len(written) == 3 * 10 + 1  # 10 published tables x 3 formats + index


def test_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmark.plots import sweep_value, write_plots

    path = tmp_path / "results.jsonl"
    for r in esc_records():
        results.append(r, path)
    written = write_plots(path, tmp_path / "plots", tables=[TABLE], provenance=OFF)
    assert [p.name for p in written] == ["demo_tab.png"]
    names = [p.name for p in write_plots(path, tmp_path / "plots", ["ssast_masked_patches"])]
    assert names == ["ssast_masked_patches.png", "ssast_masked_patches_line.png"]
    assert sweep_value("400 (Default)") == 400 and sweep_value("From Scratch") is None


def test_plots_without_matplotlib(monkeypatch, tmp_path):
    import builtins

    from benchmark.plots import PlotsUnavailable, write_plots

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(PlotsUnavailable, match="pip install matplotlib"):
        write_plots(tmp_path / "none.jsonl", tmp_path / "plots", tables=[TABLE], provenance=OFF)
    assert main_tables(["--results", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "t"),
                        "--table", "ssast_main", "--plots"]) == 0


def test_a_table_without_published_numbers_shows_ours_only():
    """The demo's table has no paper column: no '(—)' beside every cell, and missing cells still say so."""
    from dataclasses import replace

    from benchmark.cells import has_paper_numbers

    bare = replace(TABLE, rows=tuple(replace(r, values={k: None for k in r.values}) for r in TABLE.rows))
    assert has_paper_numbers(TABLE) and not has_paper_numbers(bare)
    text = to_markdown(bare, esc_records(), provenance=OFF)
    assert "(—)" not in text and "ours (paper)" not in text
    row_a, = [line for line in text.splitlines() if line.startswith("| Model_A |")]
    row_b, = [line for line in text.splitlines() if line.startswith("| Model B |")]
    assert row_a.split("|")[2].strip() == "72.0 ± 0.0"  # both seeds' fold means are 72.0 (ESC_VALUES)
    assert row_b.split("|")[2].strip() == "—"  # a row without records is shown as missing


def test_esc50_prefers_the_fold_averaged_selection_and_flags_per_fold_best():
    per_fold_best = [rec(value=v + 0.1, seed=s, fold=f + 1) for s, vals in ESC_VALUES.items()
                     for f, v in enumerate(vals)]  # split "test": each fold's own best step, higher
    only_best = cell_stats(per_fold_best, TABLE, TABLE.rows[0], ESC, provenance=OFF)
    assert only_best.fold_best and only_best.mean == pytest.approx(0.82)
    both = cell_stats(per_fold_best + esc_records(), TABLE, TABLE.rows[0], ESC, provenance=OFF)
    assert not both.fold_best and both.mean == pytest.approx(0.72)  # the selected records win
    text = to_markdown(TABLE, per_fold_best, provenance=OFF)
    assert "82.0 ± 0.0‡ (72.6)" in text and "‡ ESC-50: each fold at its own best step" in text
    assert r"$^{\ddag}$" in to_latex(TABLE, per_fold_best, provenance=OFF)
