"""The demo end to end at toy size: corpus, pretraining of all three families, frozen and fine-tuned runs,
the table and the plot; and a second call that finds everything done."""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from benchmark.demo import run_demo
from benchmark.demo_data import SIZES, DemoSize
from benchmark.demo_spec import FAMILIES, SETTINGS, Setting, demo_options, demo_table, setting_from_dict
from downstream import results

TOY = Setting(DemoSize("toy", 6, 1.0, 2, 6, 1, 2, 5, 0.5), {"ssast": 2, "mae_ast": 2, "asit": 2},
              ("batch_size=2", "ckpt_every=1", "log_every=1", "optim.warmup_steps=1"), folds=(1, 2, 3, 4, 5),
              downstream_overrides=("runner.total_steps=2", "runner.eval_step=1", "runner.batch_size=4",
                                    "runner.eval_batch_size=8"))
# two seeds, run by two worker processes, with the k-NN probes of the pretraining runs
TOY_SEEDS = replace(TOY, pretrain_overrides=TOY.pretrain_overrides + ("probe_every=1",), seeds=(1, 2),
                    probe_tasks=("speech_commands_v2", "esc50"))


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


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_scratch_row_is_the_pretrained_row_s_model_from_random_weights(family, tmp_path):
    """The upstream a scratch row builds (its overrides, random weights) has the configuration of the one its
    pretrained row loads from the recipe's checkpoint: same window, grid, front end."""
    import pretrain
    import upstream
    from common.resources import shipped_path
    from upstream.checkpoint import save_upstream
    from upstream.registry import get_family

    recipe = shipped_path(family.recipe, prefer_shipped=True)
    cfg = pretrain.resolve_config(family.pretrain_upstream, recipe, [], out_dir=tmp_path / "run")
    save_upstream(get_family(family.name).build_objective(cfg.objective).to_upstream(), tmp_path / "u.pt")
    pretrained = upstream.load(family.upstream, ckpt=tmp_path / "u.pt")
    overrides = {}
    for item in family.scratch_overrides:
        key, value = item.split("=")
        overrides[key.removeprefix("upstream_overrides.")] = int(value)
    scratch = upstream.load(family.upstream, random_init=True, **overrides)
    assert scratch.cfg == pretrained.cfg
    if family.name == "ssast":  # without the override: 1 s windows, another model
        assert upstream.load(family.upstream, random_init=True).cfg != pretrained.cfg


def test_cpu_setting_has_seeds_probes_and_large_test_sets():
    cpu = SETTINGS["cpu"]
    assert len(cpu.seeds) >= 3 and cpu.probe_tasks == ("speech_commands_v2", "esc50")
    assert any(o.startswith("probe_every=") for o in cpu.pretrain_overrides)
    opts = demo_options(Path("out"), cpu)
    assert tuple(opts.seeds) == cpu.seeds and tuple(opts.probe_tasks) == cpu.probe_tasks
    size = SIZES[cpu.data_size]
    keywords = size.quota()["testing"] * size.n_words * size.takes_per_speaker
    esc = size.esc_classes * size.esc_clips_per_class  # the 5 test folds together
    for n in (keywords, esc):  # a 95% interval at 50% accuracy within about +-3 points
        assert n >= 1000 and 1.96 * (0.25 / n) ** 0.5 <= 0.031
    assert "1,000 keyword clips, 5 x 200 ESC clips" in demo_table(cpu).notes
    assert "3 downstream seeds per frozen-probe cell and 1 downstream seed per fine-tuned cell" in \
        demo_table(cpu).notes
    assert opts.mode_seeds == {"finetune": (1337,)}
    from benchmark.suites import plan

    jobs = plan(demo_table(cpu), opts)
    assert len(jobs) == 6 * (3 * (1 + 5) + 1 * (1 + 5))  # rows x (frozen seeds + fine-tuned seeds) x runs
    assert setting_from_dict(json.loads(json.dumps(asdict(cpu)))) == cpu
    old = {k: v for k, v in asdict(cpu).items() if k not in ("seeds", "probe_tasks", "probe_clips")}
    assert setting_from_dict(old).seeds == (1337,)  # a demo folder from before seeds: one seed


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


@pytest.mark.slow
def test_demo_runs_seeds_in_worker_processes_and_writes_probe_curves(tmp_path):
    out = tmp_path / "demo"
    assert run_demo(out, TOY_SEEDS, device="cpu", rows=("ssast_pretrained", "asit_scratch"), workers=2) == 0
    recs = results.load(out / "results.jsonl")
    tests = {(r.label, r.task, r.mode, r.fold, r.seed) for r in recs if r.split == "test"}
    assert len(tests) == 2 * 2 * (1 + 5) * 2  # rows x modes x (keywords + 5 ESC folds) x seeds
    curves = (out / "probe_curves.md").read_text()
    assert "**speech_commands_v2**" in curves and "**esc50**" in curves and "| SSAST |" in curves
    steps = [line.split("|")[1].strip() for line in curves.splitlines() if line.startswith("| ")]
    assert steps[:3] == ["step", "0", "1"]  # step 0 (random init) and every probe_every step
    run = json.loads((out / "demo_run.json").read_text())
    assert run["setting"]["seeds"] == [1, 2] and run["invocations"][-1]["workers"] == 2
    assert {"corpus", "pretrain ssast_pretrained", "frozen esc50", "finetune speech_commands_v2",
            "total"} <= set(run["invocations"][-1]["cpu_minutes"])
    assert run_demo(out, TOY_SEEDS, device="cpu", rows=("ssast_pretrained", "asit_scratch"), workers=1) == 0
    assert len(results.load(out / "results.jsonl")) == len(recs)  # one process: every job skipped


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
