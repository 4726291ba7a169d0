"""The demo end to end at toy size: corpus, pretraining of all three families, frozen and fine-tuned runs,
the table and the plot; and a second call that finds everything done."""
from __future__ import annotations

import pytest

from benchmark.demo import run_demo
from benchmark.demo_data import DemoSize
from benchmark.demo_spec import FAMILIES, SETTINGS, Setting, demo_table
from downstream import results

TOY = Setting(DemoSize("toy", 6, 1.0, 2, 6, 1, 2, 5, 0.5), {"ssast": 2, "mae_ast": 2, "asit": 2},
              ("batch_size=2", "ckpt_every=1", "log_every=1", "optim.warmup_steps=1"), folds=(1, 2, 3, 4, 5),
              downstream_overrides=("runner.total_steps=2", "runner.eval_step=1", "runner.batch_size=4",
                                    "runner.eval_batch_size=8"))


def test_demo_table_has_a_pretrained_and_a_scratch_row_per_family():
    table = demo_table(SETTINGS["cpu"])
    labels = [f"{f.name}_{k}" for f in FAMILIES for k in ("pretrained", "scratch")]
    assert [r.label for r in table.rows] == labels
    assert all(r.run.pretrain for r in table.rows if r.label.endswith("pretrained"))
    assert not any(r.run.pretrain or r.run.ckpt for r in table.rows if r.label.endswith("scratch"))
    assert {(c.task, c.mode) for c in table.columns} == {(t, m) for t in ("speech_commands_v2", "esc50")
                                                         for m in ("frozen", "finetune")}
    large = demo_table(SETTINGS["large"])
    assert {"ssast_discriminative", "ssast_generative"} <= {r.label for r in large.rows}


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_demo(out, TOY, device="cpu", rows=("ssast_pretrained", "asit_scratch")) == 0
    printed = capsys.readouterr().out
    recs = results.load(out / "results.jsonl")
    tests = {(r.label, r.task, r.mode, r.fold) for r in recs if r.split == "test"}
    assert len(tests) == 2 * 2 * (1 + 5)  # rows x modes x (keywords + 5 ESC folds)
    assert (out / "pretrain").is_dir() and len(list((out / "pretrain").glob("*/upstream.pt"))) == 1
    table = (out / "demo_table.md").read_text()
    assert table in printed
    line, = [x for x in table.splitlines() if x.startswith("| SSAST, pretrained |")]
    assert "—" not in line  # every cell of a row that ran holds a number
    line, = [x for x in table.splitlines() if x.startswith("| MAE-AST, pretrained |")]
    assert set(line.replace("|", " ").split()) >= {"—"}  # a row that did not run shows as missing
    assert run_demo(out, TOY, device="cpu", rows=("ssast_pretrained", "asit_scratch")) == 0
    assert len(results.load(out / "results.jsonl")) == len(recs)  # second call: every job skipped


@pytest.mark.slow  # the demo end to end (about a minute on 2 cores)
def test_published_demo_renders_the_same_table_without_the_experiment_folder(tmp_path, capsys):
    """``--publish`` copies the records and pins the pretraining checkpoints; ``--render`` then regenerates
    the same table from the published folder alone, with the experiment folder gone."""
    import json
    import shutil

    from benchmark.__main__ import main

    out, published = tmp_path / "exp" / "demo", tmp_path / "results" / "demo"
    assert main(["demo", "--out", str(out), "--publish", str(published)]) == 2  # nothing to publish yet
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "results.jsonl" in err[0]
    assert run_demo(out, TOY, device="cpu", rows=("ssast_pretrained",)) == 0
    made = (out / "demo_table.md").read_text()
    assert main(["demo", "--out", str(out), "--publish", str(published)]) == 0
    assert (published / "results.jsonl").read_bytes() == (out / "results.jsonl").read_bytes()
    meta = json.loads((published / "demo.json").read_text())
    pretrain_run, = (out / "pretrain").glob("*/upstream.pt")
    from downstream.rundir import checkpoint_sha256

    assert meta["checkpoints"] == {"ssast_pretrained": checkpoint_sha256(str(pretrain_run))}  # the one run
    assert meta["seed"] == 0 and meta["invocations"][-1]["jobs_run"] == 2 * (1 + 5)  # modes x (KS + 5 folds)
    assert (published / "demo_table.md").read_text() == made
    shutil.rmtree(tmp_path / "exp")  # the pretraining runs are gone: the pinned sha256 still identifies them
    (published / "demo_table.md").unlink()
    assert main(["demo", "--render", str(published)]) == 0
    assert (published / "demo_table.md").read_text() == made
    line, = [x for x in made.splitlines() if x.startswith("| SSAST, pretrained |")]
    assert "—" not in line  # still counted as ours: not moved to "Other runs"
    readme = (published / "README.md").read_text()
    assert f"python -m benchmark demo --render {published.as_posix()}" in readme and made.strip() in readme
    assert not [p for p in published.iterdir() if p.name.endswith(".tmp")]
