"""Every number knows where it came from: a cell counts a record only when it is the row's run (checkpoint
and downstream configuration); other records are listed with what differs; user rows; one record per run,
split and step; plots draw flagged cells apart."""
from __future__ import annotations

import hashlib
import re
import shutil
import threading
from dataclasses import replace

import pytest

from benchmark.cells import other_runs
from benchmark.pretrain_runs import pretrain_dir
from benchmark.provenance import Provenance, load_user_rows, protocol
from benchmark.published import RunSpec, get_table
from benchmark.suites import SuiteOptions
from benchmark.tables import main_tables, to_csv, to_markdown
from downstream import results

# the toy run of issue 16: a D=64, 2-block checkpoint loaded as ssast_patch_400, 40 steps, one ESC-50 fold
TOY = ["-u", "ssast_patch_400", "-d", "esc50", "--fold", "1", "-f", "-o", "runner.total_steps=40",
       "-o", "runner.batch_size=1", "-o", "runner.eval_step=40", "-o", "runner.eval_batch_size=30"]
PAPER_ROWS = {"ssast_main": "SSAST 400", "ssast_masked_patches": "400 (Default)",
              "asit_main": "SSAST [6] (ViT-B, AS-2M + LS)"}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(results file, toy checkpoint) after the issue's toy run."""
    import run_downstream
    import upstream
    from tests.layouts import make_esc50

    root = tmp_path_factory.mktemp("toy")
    make_esc50(root / "data")
    ckpt = root / "toy_upstream.pt"
    upstream.load("ssast_patch_mini").save(ckpt)
    argv = TOY + ["--ckpt", str(ckpt), "--data-root", str(root / "data"), "--expdir", str(root / "exp"),
                  "--results", str(root / "results.jsonl"), "--device", "cpu"]
    assert run_downstream.main(argv) == 0
    return root / "results.jsonl", ckpt


@pytest.fixture
def no_official(tmp_path, monkeypatch):
    folder = tmp_path / "official"
    folder.mkdir()
    monkeypatch.setenv("ASTBENCH_CHECKPOINTS", str(folder))
    return folder


def _row_line(markdown: str, paper_label: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith(f"| {paper_label} |"))


def _cell(line: str, index: int) -> str:
    return line.split("|")[index + 2].strip()


# ------------------------------------------------------------------------------------------ the case
def test_the_toy_run_is_no_paper_tables_own_but_is_listed_with_what_differs(toy, no_official):
    path, ckpt = toy
    records = results.load(path)
    (rec,) = [r for r in records if r.split == "test"]
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert rec.label == "ssast_patch_400" and rec.ckpt_sha256 == sha
    toy_cell = re.compile(r"\d+\.\d\* \[1/5 folds\]‡")
    for table_id, paper_label in PAPER_ROWS.items():
        table = get_table(table_id)
        esc = [c.key for c in table.columns].index("esc50")
        before = to_markdown(table, records, provenance=Provenance.off())  # the label alone, as it was
        assert toy_cell.fullmatch(_cell(_row_line(before, paper_label), esc).split(" (")[0])
        after = to_markdown(table, records)
        assert _cell(_row_line(after, paper_label), esc) == "— (88.8)", table_id
        other = _row_line(after, f"ssast_patch_400 (row {paper_label})")
        assert toy_cell.fullmatch(_cell(other, esc))
        assert (f"checkpoint {sha[:8]} cannot be checked: SSAST-Base-Patch-400.pth is not in "
                "$ASTBENCH_CHECKPOINTS") in other and "python -m benchmark download ssast_patch_400" in other
        for difference in ("runner.total_steps=40 (row: 1700)", "runner.batch_size=1 (row: 48)"):
            assert difference in other
        assert "Ours counts only records that are the row's run" in after
        csv = [line for line in to_csv(table, records).splitlines() if ",other," in line]
        assert len(csv) == len(table.columns) and all(",ssast_patch_400," in line for line in csv)


def test_with_the_official_file_here_only_the_protocol_differs_and_strict_drops_it(toy, no_official, tmp_path,
                                                                                 capsys):
    path, ckpt = toy
    shutil.copy(ckpt, no_official / "SSAST-Base-Patch-400.pth")  # now the row's checkpoint is this file
    records = results.load(path)
    (other,) = other_runs(get_table("ssast_main"), records)
    assert not any(d.startswith("checkpoint") for d in other.differs)
    assert "runner.total_steps=40 (row: 1700)" in other.differs
    out = tmp_path / "tables"
    assert main_tables(["--results", str(path), "--out", str(out), "--table", "ssast_main", "--strict",
                        "--print"]) == 0
    text = capsys.readouterr().out
    assert "Other runs" not in text and "left out (--strict)" in text
    assert _cell(_row_line(text, "SSAST 400"), 1) == "— (88.8)"


def test_a_record_of_the_rows_run_is_ours(no_official, monkeypatch):
    """A record carrying the row's checkpoint and resolved configuration fills the cell; seed, fold and
    settings that change only speed do not matter; the published sha256 stands in for an absent file."""
    from upstream import download

    table = get_table("ssast_main")
    row = next(r for r in table.rows if r.label == "ssast_patch_400")
    (no_official / "SSAST-Base-Patch-400.pth").write_bytes(b"official weights")
    sha = hashlib.sha256(b"official weights").hexdigest()
    prov = Provenance()
    config = prov._resolve(row.run, "speech_commands_v2", "finetune", False)
    config["run"] = {k: v for k, v in config["run"].items() if k not in ("data_root", "ckpt")}
    config["runner"]["num_workers"] = 4  # speed only
    base = dict(upstream="ssast_patch_400", task="speech_commands_v2", split="test", metric="accuracy",
                mode="finetune", ckpt_sha256=sha, label="ssast_patch_400", config=config)
    records = [results.ResultRecord(**base, value=v, seed=s) for v, s in [(0.97, 1), (0.99, 2)]]
    ks2 = [c.key for c in table.columns].index("ks2")
    assert _cell(_row_line(to_markdown(table, records), "SSAST 400"), ks2) == "98.0 ± 1.4 (98.0)"
    assert other_runs(table, records) == []
    # one key of the protocol changed: listed apart, naming it
    changed = {**config, "optimizer": {**config["optimizer"], "lr": 0.5}}
    odd = results.ResultRecord(**{**base, "config": changed}, value=0.1, seed=3)
    (other,) = other_runs(table, records + [odd])
    assert other.differs == (f"optimizer.lr=0.5 (row: {config['optimizer']['lr']})",)
    # the file is gone but its sha256 is published: still ours
    (no_official / "SSAST-Base-Patch-400.pth").unlink()
    assert "cannot be checked" in other_runs(table, records)[0].differs[0]
    entry = download.find("ssast_patch_400")
    monkeypatch.setattr(download, "released", lambda: (replace(entry, sha256=sha),))
    assert other_runs(table, records) == [] and "98.0 ± 1.4" in to_markdown(table, records)


def test_a_pretrained_row_counts_only_records_of_its_pretraining_run(tmp_path):
    table = get_table("ssast_pretext")
    row = next(r for r in table.rows if r.label == "ssast_patch_400_disc")
    opts = SuiteOptions(expdir=str(tmp_path / "sweep"))
    up = pretrain_dir(row.run, opts.expdir, opts.pretrain_overrides) / "upstream.pt"
    up.parent.mkdir(parents=True)
    up.write_bytes(b"pretrained")
    prov = Provenance(opts)
    config = prov._resolve(row.run, "as20k", "finetune", False)
    rec = results.ResultRecord(upstream="ssast_patch_400", task="as20k", split="test", metric="mAP",
                               value=0.3, mode="finetune", label="ssast_patch_400_disc", config=config,
                               ckpt_sha256=hashlib.sha256(b"pretrained").hexdigest())
    assert prov.verdict(rec, row).ours
    assert "30.0 (30.6)" in _row_line(to_markdown(table, [rec], provenance=prov), "Discriminative")
    elsewhere = Provenance()  # the default --expdir has no such pretraining run
    (other,) = other_runs(table, [rec], elsewhere)
    assert "pretraining run" in other.differs[0] and "not found" in other.differs[0]


# ------------------------------------------------------------------------------------------ user rows
def test_user_rows_sit_beside_the_papers_rows(tmp_path, capsys):
    import run_downstream
    from tests.layouts import make_speech_commands_v2

    make_speech_commands_v2(tmp_path / "data")
    overrides = ["runner.total_steps=2", "runner.eval_step=1", "runner.batch_size=4",
                 "runner.eval_batch_size=8"]
    argv = ["-u", "tests.plugin_upstream:build", "-d", "speech_commands_v2", "-f", "--data-root",
            str(tmp_path / "data"), "--expdir", str(tmp_path / "exp"), "--results", str(tmp_path / "r.jsonl"),
            "--device", "cpu"] + [x for o in overrides for x in ("-o", o)]
    with pytest.warns(UserWarning, match="no set_input_augment hook"):
        assert run_downstream.main(argv) == 0
    (rec,) = [r for r in results.load(tmp_path / "r.jsonl") if r.split == "test"]
    rows = tmp_path / "rows.yaml"
    rows.write_text("rows:\n  - label: TinyCNN (mine)\n    upstream: tests.plugin_upstream:build\n"
                    f"    tasks: [speech_commands_v2]\n    overrides: [{', '.join(overrides)}]\n")
    common = ["--results", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "t"), "--table", "ssast_main",
              "asit_main", "--print"]
    assert main_tables(common + ["--rows", str(rows)]) == 0
    text = capsys.readouterr().out
    line = _row_line(text, "TinyCNN (mine)")
    assert _cell(line, 2) == f"{rec.value * 100:.1f} (—)" and _cell(line, 0) == "—"  # KS2 only: its task
    assert ("- TinyCNN (mine): your row (rows.yaml): upstream tests.plugin_upstream:build, checkpoint "
            "none") in text
    assert text.count("| TinyCNN (mine) |") == 2  # both tables have a KS2 column
    # --row LABEL: any checkpoint, but held to the task's default protocol, so this 2-step run is another run
    assert main_tables(common + ["--row", "tests.plugin_upstream:build"]) == 0
    text = capsys.readouterr().out
    assert _cell(_row_line(text, "tests.plugin_upstream:build"), 2) == "—"
    default = Provenance()._resolve(RunSpec("x"), "speech_commands_v2", "finetune", True)  # the task's config
    assert f"runner.total_steps=2 (row: {default['runner']['total_steps']})" in text


@pytest.mark.parametrize("content, message", [
    ("rows: []\n", "a non-empty list of rows"),
    ("rows:\n  - {label: a}\n", "rows[0]: 'upstream' must be a non-empty string"),
    ("rows:\n  - {label: a, upstream: u, task: [esc50]}\n", "rows[0]: unknown key(s) ['task']"),
    ("rows:\n  - {label: a, upstream: u, checkpoint: nope.pt}\n", "rows[0]: checkpoint 'nope.pt' not found"),
    ("rows:\n  - {label: a, upstream: u, checkpoint: 'sha256:12'}\n", "is not sha256: and 64 hex digits"),
    ("rows:\n  - {label: a, upstream: u, overrides: [lr]}\n", "'overrides' must be a list of 'key=value'"),
    ("rows:\n  - {label: a, upstream: u}\n  - {label: a, upstream: v}\n", "rows[1]: duplicate label 'a'"),
    ("rows:\n  - {label: SSAST 400x, upstream: u, tables: [nope]}\n", "table(s) ['nope'] are not rendered"),
    ("rows:\n  - {label: ssast_patch_400, upstream: u}\n", "are rows of table 'ssast_main'"),
    ("rows: [\n", "not valid YAML"),
])
def test_bad_rows_files_fail_with_one_line_naming_file_and_key(tmp_path, capsys, content, message):
    rows = tmp_path / "rows.yaml"
    rows.write_text(content)
    assert main_tables(["--results", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "t"), "--table",
                        "ssast_main", "--rows", str(rows)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert "rows" in err[0]


def test_row_flag_without_records_and_a_pinned_sha256(tmp_path, capsys):
    assert main_tables(["--results", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "t"),
                        "--row", "mine"]) == 2
    assert "--row 'mine': no result record is labelled 'mine'" in capsys.readouterr().err
    rows = tmp_path / "rows.yaml"
    rows.write_text(f"rows:\n  - {{label: a, upstream: u, checkpoint: 'sha256:{'A' * 64}'}}\n")
    (user,) = load_user_rows(rows)
    prov = Provenance(user_rows=[user])
    assert prov.expected_checkpoint(user.row(())).sha256 == "a" * 64


# -------------------------------------------------------------------------------------- one record per run
def _rec(value=0.5, step=10, expname="run", **kw):
    return results.ResultRecord(upstream="u", task="esc50", split="test", metric="accuracy", value=value,
                                fold=1, step=step, expname=expname, config={"x": 1}, **kw)


def test_re_evaluation_replaces_the_record_of_the_same_run_split_and_step(tmp_path):
    path = tmp_path / "r.jsonl"
    assert results.append(_rec(), path, unique=True)
    assert not results.append(_rec(), path, unique=True)  # the same evaluation again: nothing written
    assert results.append(_rec(0.6, dataset={"name": "esc50", "files": "changed"}), path, unique=True)
    expected = [(0.6, {"name": "esc50", "files": "changed"})]
    assert [(r.value, r.dataset) for r in results.load(path)] == expected
    assert results.append(_rec(0.7, step=20), path, unique=True)  # another step is another record
    assert results.append(_rec(0.1, expname=""), path, unique=True)  # no run folder: nothing to replace
    assert results.append(_rec(0.2, expname=""), path, unique=True)
    assert sorted(r.value for r in results.load(path)) == [0.1, 0.2, 0.6, 0.7]
    assert results.append(_rec(0.9), path, unique=False)  # without unique: plain append, as before
    assert len(results.load(path)) == 5 and not list(tmp_path.glob("*.tmp"))


def test_evaluate_replaces_a_stale_record_of_its_run(tmp_path):
    """``-m evaluate`` after a change (here: the recorded value no longer matches what the run scores) leaves
    one record per split, with the new value, instead of a second one."""
    import json

    import run_downstream
    from tests.layouts import make_speech_commands_v2

    make_speech_commands_v2(tmp_path / "data")
    path = tmp_path / "r.jsonl"
    assert run_downstream.main(["-u", "tests.plugin_upstream:build", "-d", "speech_commands_v2", "-n", "run",
                                "--data-root", str(tmp_path / "data"), "--expdir", str(tmp_path / "exp"),
                                "--results", str(path), "--device", "cpu", "--no-cache", "-o",
                                "runner.total_steps=2", "-o", "runner.eval_step=1"]) == 0
    first = {r.split: r.value for r in results.load(path)}
    stale = [json.loads(line) for line in path.read_text().splitlines()]
    for rec in stale:
        rec["value"] = 0.123  # as if scored by older code
    path.write_text("".join(json.dumps(rec) + "\n" for rec in stale))
    assert run_downstream.main(["-m", "evaluate", "-e", str(tmp_path / "exp" / "run"), "--results", str(path),
                                "--device", "cpu", "--no-cache"]) == 0
    again = results.load(path)
    assert sorted(r.split for r in again) == sorted(first) and {r.split: r.value for r in again} == first


def test_a_writer_waiting_during_a_replacement_appends_to_the_new_file(tmp_path):
    path = tmp_path / "r.jsonl"
    results.append(_rec(), path)
    fd = results._open_locked(path)  # hold the lock as a replacing writer does
    done = threading.Event()
    thread = threading.Thread(target=lambda: (results.append(_rec(0.3, expname="other"), path), done.set()))
    thread.start()
    assert not done.wait(0.3)  # blocked on the lock
    results._rewrite(path, path.read_bytes())  # the file is replaced while the other writer waits
    results.fcntl.flock(fd, results.fcntl.LOCK_UN)
    import os

    os.close(fd)
    thread.join(10)
    assert done.is_set() and sorted(r.value for r in results.load(path)) == [0.3, 0.5]


# ------------------------------------------------------------------------------------------ plots
def test_plots_draw_flagged_cells_apart_and_keep_the_legend_off_the_lines(tmp_path, monkeypatch):
    plt = pytest.importorskip("matplotlib.pyplot")
    from benchmark import plots

    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    table = get_table("ssast_masked_patches")
    recs = [results.ResultRecord(upstream="ssast_patch_400", task="esc50", split="test", metric="accuracy",
                                 value=0.8, fold=1, mode="finetune", label="ssast_patch_400"),  # 1 of 5 folds
            results.ResultRecord(upstream="ssast_patch_400", task="as20k", split="test", metric="mAP",
                                 value=0.3, mode="finetune", label="ssast_patch_400")]
    path = tmp_path / "r.jsonl"
    for r in recs:
        results.append(r, path)
    plots.write_plots(path, tmp_path, tables=[table], provenance=Provenance.off())
    bars, line = figures
    ax_esc = next(ax for ax in bars.axes if ax.get_title() == "ESC-50 acc")
    hatched = [p for p in ax_esc.patches if p.get_hatch() == "//"]
    assert len(hatched) == 1 and hatched[0].get_alpha() == pytest.approx(0.45)  # the 1/5-folds cell
    assert not [p for ax in bars.axes if ax.get_title() == "AS-20K mAP" for p in ax.patches if p.get_hatch()]
    assert ax_esc.get_ylabel() == "accuracy (%)"
    assert any("flagged" in t.get_text() for t in bars.axes[0].get_legend().get_texts())
    ax = line.axes[0]
    line.canvas.draw()
    renderer = line.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.x0 >= ax.get_window_extent(renderer).x1  # beside the axes
    assert all(len(part) <= 60 for part in ax.get_title().splitlines())  # wrapped, not clipped
    assert ax.get_ylabel() == "accuracy (%) / mAP (%)"
    assert protocol({"run": {"seed": 1, "task": "x"}, "runner": {"log_step": 5}}) == {"run.task": "x"}
