"""Suites: planning, skipping finished jobs, resuming, shared pretraining, failures reported per job."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.pretrain_runs import PretrainRunError, ensure_pretrained, pretrain_data, pretrain_dir
from benchmark.published import Column, PaperTable, Row, RunSpec
from benchmark.suites import (
    SuiteError,
    SuiteOptions,
    _parse_pretrain_data,
    downstream_job,
    is_done,
    plan,
    run_suite,
)
from downstream import results
from downstream.tasks import FOLD_AVERAGED_SPLIT
from tests.layouts import make_esc50, make_speech_commands_v2

TINY = ("runner.total_steps=2", "runner.eval_step=1", "runner.batch_size=4", "runner.eval_batch_size=8")
MINI = RunSpec("ssast_patch_mini")
PRETRAIN = RunSpec("ssast_patch_mini", pretrain="configs/pretrain/ssast_patch_mini.yaml",
                   pretrain_upstream="ssast_patch",
                   pretrain_overrides=("max_steps=2", "batch_size=2", "ckpt_every=1", "log_every=1"))


def _table(*rows: Row, columns=None) -> PaperTable:
    columns = columns or (Column("ks", "speech_commands_v2", "frozen", "accuracy"),
                          Column("esc", "esc50", "finetune", "accuracy"))
    return PaperTable("t", "demo", "test table", "tests", tuple(columns), tuple(rows))


def _row(label: str, run: RunSpec | None) -> Row:
    return Row(label, label, "tests", {}, run)


def test_plan_expands_columns_seeds_and_folds_and_skips_rows_without_a_run():
    table = _table(_row("a", MINI), _row("published_only", None))
    jobs = plan(table, SuiteOptions(seeds=(1, 2)))
    assert len(jobs) == 2 * (1 + 5)  # seeds x (KS + 5 ESC folds); the row without a run has no jobs
    assert {j.label for j in jobs} == {"a"}
    assert sorted(j.fold for j in jobs if j.task == "esc50") == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert all(j.fold is None for j in jobs if j.task == "speech_commands_v2")
    assert len({j.expname for j in jobs}) == len(jobs)  # one folder per job
    only = plan(table, SuiteOptions(tasks=("esc50",), folds=(2, 3)))
    assert [(j.task, j.mode, j.fold) for j in only] == [("esc50", "finetune", 2), ("esc50", "finetune", 3)]


@pytest.mark.parametrize("field,value", [("rows", ("nope",)), ("tasks", ("voxceleb1",)), ("modes", ("x",))])
def test_plan_rejects_unknown_filters_by_name(field, value):
    with pytest.raises(SuiteError, match=value[0]):
        plan(_table(_row("a", MINI)), SuiteOptions(**{field: value}))


def test_is_done_matches_label_task_mode_seed_fold_and_checkpoint():
    job = plan(_table(_row("a", MINI)), SuiteOptions(tasks=("esc50",), folds=(3,)))[0]
    rec = dict(upstream="ssast_patch_mini", task="esc50", split="test", metric="accuracy", value=0.5, fold=3,
               mode="finetune", seed=1337, label="a", ckpt_sha256="abc")
    assert is_done(job, [results.ResultRecord(**rec)], "abc")
    assert is_done(job, [results.ResultRecord(**rec)], None)
    assert not is_done(job, [results.ResultRecord(**rec)], "other checkpoint")
    for key, value in [("fold", 2), ("seed", 1), ("label", "b"), ("split", "dev"), ("mode", "frozen")]:
        assert not is_done(job, [results.ResultRecord(**{**rec, key: value})], "abc"), key


def test_job_carries_label_fold_checkpoint_config_and_resume(tmp_path):
    job = plan(_table(_row("a", RunSpec("ssast_patch_mini", overrides=("optimizer.lr=1",), layer=1))),
               SuiteOptions(tasks=("esc50",), folds=(4,)))[0]
    opts = SuiteOptions(expdir=str(tmp_path), config_dir="cfgs", downstream_overrides=("runner.log_step=1",),
                        data_root="D", device="cpu", cache_dir="C", results=str(tmp_path / "r.jsonl"))
    dj = downstream_job(job, tmp_path / "up.pt", opts, "run1")
    assert (dj.upstream, dj.task, dj.finetune, dj.fold, dj.ckpt, dj.label, dj.layer, dj.seed) == (
        "ssast_patch_mini", "esc50", True, 4, str(tmp_path / "up.pt"), "a", 1, 1337)
    assert dj.config == str(Path("cfgs") / "esc50_finetune.yaml")
    assert dj.overrides == ("optimizer.lr=1", "runner.log_step=1")  # the row's, then the sweep's
    assert (dj.data_root, dj.device, dj.cache_dir, dj.results) == ("D", "cpu", "C", str(tmp_path / "r.jsonl"))
    assert dj.name == "run1" and dj.expdir == str(tmp_path / "downstream" / "t") and not dj.resume
    (tmp_path / "downstream" / "t" / "run1").mkdir(parents=True)
    (tmp_path / "downstream" / "t" / "run1" / "last.ckpt").write_bytes(b"")
    resumed = downstream_job(job, None, opts, "run1")
    assert resumed.resume and resumed.ckpt is None
    assert not downstream_job(job, None, opts, "run2").resume
    frozen = plan(_table(_row("a", MINI)), SuiteOptions(tasks=("speech_commands_v2",)))[0]
    dj = downstream_job(frozen, None, SuiteOptions(), "x")
    assert not dj.finetune and dj.config is None and dj.fold is None and dj.layer is None


def test_suite_runs_every_job_once_then_skips_them(tmp_path):
    data = tmp_path / "data"
    make_speech_commands_v2(data)
    make_esc50(data)
    table = _table(_row("a", MINI), columns=(Column("ks", "speech_commands_v2", "frozen", "accuracy"),
                                             Column("esc", "esc50", "frozen", "accuracy")))
    opts = SuiteOptions(data_root=str(data), folds=(1, 2), expdir=str(tmp_path / "exp"),
                        results=str(tmp_path / "results.jsonl"), device="cpu", downstream_overrides=TINY)
    lines = []
    report = run_suite(table, opts, log=lines.append)
    assert report.ok and len(report.done) == 3 and not report.skipped
    recs = results.load(opts.results)
    tests = sorted((r.task, r.fold) for r in recs if r.split == "test")
    assert tests == [("esc50", 1), ("esc50", 2), ("speech_commands_v2", None)]
    assert {r.label for r in recs} == {"a"}
    again = run_suite(table, opts, log=lines.append)
    assert len(again.skipped) == 3 and not again.done
    assert len(results.load(opts.results)) == len(recs)  # nothing appended the second time
    # another configuration is another run (its own folder), never a skip or a resume of the old one
    opts.downstream_overrides = TINY + ("optimizer.lr=0.01",)
    changed = run_suite(table, SuiteOptions(**{**opts.__dict__, "tasks": ("speech_commands_v2",)}),
                        log=lines.append)
    assert len(changed.done) == 1 and not changed.skipped
    runs = sorted(p.name for p in (tmp_path / "exp" / "downstream" / "t").iterdir() if "speech" in p.name)
    assert len(runs) == 2 and {r.rsplit("-", 1)[0] for r in runs} == {"a_speech_commands_v2_frozen_seed1337"}


def test_failed_job_is_reported_and_the_suite_goes_on(tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_speech_commands_v2(data)
    monkeypatch.setenv("ASTBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    missing = RunSpec("ssast_patch_400", ckpt="SSAST-Base-Patch-400.pth")
    table = _table(_row("missing", missing), _row("ok", MINI),
                   columns=(Column("ks", "speech_commands_v2", "frozen", "accuracy"),))
    opts = SuiteOptions(data_root=str(data), expdir=str(tmp_path / "exp"), results=str(tmp_path / "r.jsonl"),
                        device="cpu", downstream_overrides=TINY)
    report = run_suite(table, opts, log=lambda _: None)
    assert [j.label for j in report.done] == ["ok"]
    (job, why), = report.failed
    assert job.label == "missing" and "SSAST-Base-Patch-400.pth" in why


def test_pretraining_is_shared_resumed_and_needs_data(tmp_path):
    import soundfile as sf
    import torch

    expdir = tmp_path / "exp"
    with pytest.raises(PretrainRunError, match="pretrain-data"):
        ensure_pretrained(PRETRAIN, expdir)
    audio = tmp_path / "unlabeled"
    audio.mkdir()
    for i in range(4):
        sf.write(audio / f"{i}.wav", (0.1 * torch.randn(32000)).numpy(), 16000)
    out = ensure_pretrained(PRETRAIN, expdir, str(audio), log=lambda _: None)
    assert out == pretrain_dir(PRETRAIN, expdir) / "upstream.pt" and out.is_file()
    stamp = out.stat().st_mtime_ns
    assert ensure_pretrained(PRETRAIN, expdir, str(audio), log=lambda _: None) == out
    assert out.stat().st_mtime_ns == stamp  # done: not run again
    other = RunSpec(**{**PRETRAIN.__dict__, "pretrain_overrides": PRETRAIN.pretrain_overrides + ("seed=2",)})
    assert pretrain_dir(other, expdir) != pretrain_dir(PRETRAIN, expdir)
    assert pretrain_dir(PRETRAIN, expdir, ("seed=2",)) != pretrain_dir(PRETRAIN, expdir)  # a sweep's -o
    # a run stopped early (as after a kill) is resumed to max_steps, not taken as finished
    longer = RunSpec(**{**PRETRAIN.__dict__, "pretrain_overrides": ("max_steps=3", "batch_size=2",
                                                                     "ckpt_every=1", "log_every=1")})
    import pretrain

    d = pretrain_dir(longer, expdir)
    cfg = pretrain.resolve_config("ssast_patch", longer.pretrain, longer.pretrain_overrides, out_dir=d,
                                  data=str(audio))
    pretrain.run(cfg, stop_at_step=1)
    assert (d / "upstream.pt").is_file() and torch.load(d / "last.ckpt", weights_only=False)["step"] == 1
    ensure_pretrained(longer, expdir, str(audio), log=lambda _: None)
    assert torch.load(d / "last.ckpt", weights_only=False)["step"] == 3


def test_esc50_folds_get_one_step_chosen_on_the_fold_averaged_curve(tmp_path):
    import json

    import numpy as np

    data = tmp_path / "data"
    make_esc50(data)
    table = _table(_row("a", MINI), columns=(Column("esc", "esc50", "frozen", "accuracy"),))
    opts = SuiteOptions(data_root=str(data), expdir=str(tmp_path / "exp"), results=str(tmp_path / "r.jsonl"),
                        device="cpu", downstream_overrides=TINY + ("optimizer.lr=0.05",))
    assert run_suite(table, opts, log=lambda _: None).ok
    recs = results.load(opts.results)
    chosen = sorted((r for r in recs if r.split == FOLD_AVERAGED_SPLIT), key=lambda r: r.fold)
    assert [r.fold for r in chosen] == [1, 2, 3, 4, 5] and len({r.step for r in chosen}) == 1
    # by hand: the fold curves from evals.jsonl, their mean, its first argmax
    curves = []
    for fold in range(1, 6):
        runs = tmp_path / "exp" / "downstream" / "t"
        lines, = runs.glob(f"a_esc50_fold{fold}_frozen_seed1337-*/evals.jsonl")
        evals = map(json.loads, lines.read_text().splitlines())
        curves.append({int(e["step"]): e["accuracy"] for e in evals})
    steps = sorted(curves[0])
    best = steps[int(np.argmax([np.mean([c[s] for c in curves]) for s in steps]))]
    assert chosen[0].step == best
    assert [r.value for r in chosen] == pytest.approx([c[best] for c in curves])
    # each record carries which clips were right at the chosen step (evals.jsonl), not at the fold's own best
    for r, fold_dir in zip(chosen, sorted((tmp_path / "exp" / "downstream" / "t").glob("a_esc50_fold*"))):
        at_best, = [e for e in map(json.loads, (fold_dir / "evals.jsonl").read_text().splitlines())
                    if e["step"] == best]
        assert r.predictions["correct"] == at_best["correct"] and results.per_clip(r) is not None
    assert run_suite(table, opts, log=lambda _: None).ok  # everything done: nothing appended
    assert len(results.load(opts.results)) == len(recs)


@pytest.mark.slow
def test_a_sweep_runs_under_torchrun_with_one_process_group(tmp_path):
    """2 gloo ranks: pretraining and every job share the sweep's process group; only rank 0 writes records."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    script = tmp_path / "sweep.py"
    script.write_text("import sys\nfrom pathlib import Path\nfrom benchmark.demo import run_demo\n"
                      "from tests.test_demo import TOY\n"
                      "sys.exit(run_demo(Path(sys.argv[1]), TOY, device='cpu', "
                      "rows=('ssast_pretrained',)))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo), ASTBENCH_CACHE=str(tmp_path / "cache"))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(port), str(script), str(tmp_path / "out")], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recs = results.load(tmp_path / "out" / "results.jsonl")
    tests = [(r.task, r.mode, r.fold) for r in recs if r.split == "test"]
    assert len(tests) == len(set(tests)) == 2 * (1 + 5)  # each job once: modes x (keywords + 5 ESC folds)
    assert proc.stdout.count("## Demo") == 1  # the table is printed by rank 0 only


def test_named_pretraining_corpora(tmp_path):
    """Rows of the pretraining-data ablation name their corpora; several are pretrained on together."""
    import json

    dirs = {}
    for name, n in (("audioset", 2), ("librispeech", 3)):
        dirs[name] = tmp_path / name
        for i in range(n):
            (dirs[name] / "sub").mkdir(parents=True, exist_ok=True)
            (dirs[name] / "sub" / f"{i}.wav").write_bytes(b"")
    default, corpora = _parse_pretrain_data([str(tmp_path / "x"), f"audioset={dirs['audioset']}",
                                             f"librispeech={dirs['librispeech']}"])
    assert default == str(tmp_path / "x") and corpora == {k: str(v) for k, v in dirs.items()}
    with pytest.raises(SuiteError, match="twice"):
        _parse_pretrain_data(["a", "b"])
    expdir = tmp_path / "exp"
    one = RunSpec(**{**PRETRAIN.__dict__, "pretrain_data": ("librispeech",)})
    both = RunSpec(**{**PRETRAIN.__dict__, "pretrain_data": ("audioset", "librispeech")})
    assert pretrain_data(PRETRAIN, default, corpora, pretrain_dir(PRETRAIN, expdir)) == default
    assert pretrain_data(one, default, corpora, pretrain_dir(one, expdir)) == str(dirs["librispeech"])
    manifest = pretrain_data(both, default, corpora, pretrain_dir(both, expdir))
    paths = [json.loads(line)["path"] for line in open(manifest)]
    assert len(paths) == 5 and sum("librispeech" in p for p in paths) == 3
    assert len({pretrain_dir(r, expdir) for r in (PRETRAIN, one, both)}) == 3  # each corpus set apart
    with pytest.raises(PretrainRunError, match=r"\['wavs'\]"):
        wavs = RunSpec(**{**PRETRAIN.__dict__, "pretrain_data": ("wavs",)})
        pretrain_data(wavs, default, corpora, tmp_path / "o")


def test_pretraining_runs_probe_as_the_row_s_upstream(tmp_path):
    """``probe_tasks``: the pretraining run gets k-NN probe lines in its losses.jsonl (step 0 and every
    probe_every steps, a line per task), from probes that load the encoder as the row's upstream."""
    import json

    import soundfile as sf
    import torch

    from benchmark.suites import job_checkpoint, pretrain_probe

    data = tmp_path / "data"
    make_speech_commands_v2(data, clips_per_class=2)
    audio = tmp_path / "unlabeled"
    audio.mkdir()
    for i in range(4):
        sf.write(audio / f"{i}.wav", (0.1 * torch.randn(32000)).numpy(), 16000)
    probed_every_step = PRETRAIN.pretrain_overrides + ("probe_every=1",)
    run = RunSpec(**{**PRETRAIN.__dict__, "pretrain_overrides": probed_every_step})
    opts = SuiteOptions(data_root=str(data), pretrain_data=str(audio), expdir=str(tmp_path / "exp"),
                        probe_tasks=("speech_commands_v2",), probe_clips=12)
    assert pretrain_probe(run, SuiteOptions()) is None  # no tasks: no probe
    probes = pretrain_probe(run, opts).probes
    assert [p.upstream for p in probes] == ["ssast_patch_mini"] and probes[0].n_clips == 12
    assert pretrain_probe(RunSpec("asit_mini"), opts).probes[0]._wavs is probes[0]._wavs  # audio read once
    job = plan(_table(_row("pre", run)), opts)[0]
    job_checkpoint(job, opts, log=lambda _: None)
    losses = pretrain_dir(run, opts.expdir) / "losses.jsonl"
    lines = [json.loads(x) for x in losses.read_text().splitlines()]
    probed = [(r["step"], r["probe"]["task"], r["probe"]["n_clips"]) for r in lines if "probe" in r]
    assert probed == [(0, "speech_commands_v2", 12), (1, "speech_commands_v2", 12),
                      (2, "speech_commands_v2", 12)]


def test_reports_merge_their_jobs_and_stage_times():
    from benchmark.suites import Job, SuiteReport

    a, b = SuiteReport(), SuiteReport()
    job = Job("t", "r", MINI, "esc50", "frozen", 1, 1)
    a.add_time("frozen esc50", 2.0, 1.0)
    a.add_time("frozen esc50", 3.0, 2.0)
    b.add_time("frozen esc50", 1.0, 0.5)
    b.add_time("pretrain r", 10.0, 9.0)
    b.done.append(job)
    b.failed.append((job, "why"))
    a.merge(b)
    assert a.stages == {"frozen esc50": [6.0, 3.5], "pretrain r": [10.0, 9.0]}
    assert a.done == [job] and a.failed == [(job, "why")] and not a.ok


def test_a_mode_can_have_its_own_seeds():
    table = _table(_row("a", MINI))
    jobs = plan(table, SuiteOptions(seeds=(1, 2, 3), mode_seeds={"finetune": (1,)}))
    assert sorted({(j.mode, j.seed) for j in jobs}) == [("finetune", 1), ("frozen", 1), ("frozen", 2),
                                                        ("frozen", 3)]
    from benchmark.suites import _one_seed

    one = _one_seed(SuiteOptions(seeds=(1, 2, 3), mode_seeds={"finetune": (1,)}), "a", 2)
    assert {(j.mode, j.seed) for j in plan(table, one)} == {("frozen", 2)}  # seed 2 is not fine-tuned
