"""The demo end to end at toy size: corpus, pretraining of all three families, frozen and fine-tuned runs,
the table and the plot; and a second call that finds everything done."""
from __future__ import annotations

from benchmark import results
from benchmark.demo import FAMILIES, SETTINGS, Setting, demo_table, run_demo
from benchmark.demo_data import DemoSize

TOY = Setting(DemoSize("toy", 6, 1.0, 2, 6, 1, 2, 5, 0.5), {"ssast": 2, "mae_ast": 2, "asit": 2},
              ("batch_size=2", "ckpt_every=1", "log_every=1", "optim.warmup_steps=1"), folds=(1, 2, 3, 4, 5),
              downstream_overrides=("runner.total_steps=2", "runner.eval_step=1", "runner.batch_size=4",
                                    "runner.eval_batch_size=8"))


def test_demo_table_has_a_pretrained_and_a_scratch_row_per_family():
    table = demo_table(SETTINGS["cpu"])
    assert [r.label for r in table.rows] == [f"{f.name}_{k}" for f in FAMILIES for k in ("pretrained", "scratch")]
    assert all(r.run.pretrain for r in table.rows if r.label.endswith("pretrained"))
    assert not any(r.run.pretrain or r.run.ckpt for r in table.rows if r.label.endswith("scratch"))
    assert {(c.task, c.mode) for c in table.columns} == {(t, m) for t in ("speech_commands_v2", "esc50")
                                                         for m in ("frozen", "finetune")}
    large = demo_table(SETTINGS["large"])
    assert {"ssast_discriminative", "ssast_generative"} <= {r.label for r in large.rows}


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
