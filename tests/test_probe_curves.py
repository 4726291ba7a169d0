"""benchmark.probe_curves on hand-written losses.jsonl files: parsing, the table's numbers, the reports."""
from __future__ import annotations

import json
import math

import pytest

from benchmark.probe_curves import curves_table, main, read_probe_curves, write_report


def _probe(step, acc, task="speech_commands_v2", majority=0.25, chance=0.125, **extra):
    return json.dumps({"step": step, "probe": {"task": task, "knn_accuracy": acc, "majority": majority,
                                               "chance": chance, "k": 20, **extra}})


def _loss(step, loss):
    return json.dumps({"step": step, "loss": loss, "lr": 1e-3, "logs": {"nce": loss / 2}})


@pytest.fixture
def runs(tmp_path):
    """Two runs: 'ssast_demo' probed at 0, 50, 100 between loss lines; 'mae_demo' at 0 and 100 only, with a
    step-50 probe recorded twice (a resumed run: the later record counts) and a diverged probe at 150."""
    a, b = tmp_path / "ssast_demo", tmp_path / "mae_demo"
    a.mkdir()
    b.mkdir()
    (a / "losses.jsonl").write_text("\n".join([
        _probe(0, 0.125), _loss(1, 6.0), _loss(50, 5.5), _probe(50, 0.3), _loss(100, 5.0), _probe(100, 0.45),
    ]) + "\n")
    (b / "losses.jsonl").write_text("\n".join([
        _probe(0, 0.5), _probe(50, 0.25), _probe(50, 0.375), _probe(100, 0.625), _probe(150, math.nan),
    ]) + "\n")
    return a, b


def test_reads_probe_lines_and_skips_loss_lines(runs):
    a, b = runs
    (curve,) = read_probe_curves(a)
    assert (curve.label, curve.task, curve.metric) == ("ssast_demo", "speech_commands_v2", "knn_accuracy")
    assert [(p.step, p.value) for p in curve.points] == [(0, 0.125), (50, 0.3), (100, 0.45)]
    assert curve.majority == 0.25 and curve.chance == 0.125
    assert curve.gain == pytest.approx(0.325)  # 0.45 - 0.125
    (mae,) = read_probe_curves(b / "losses.jsonl", label="MAE-AST")
    assert mae.label == "MAE-AST"
    assert mae.at(50) == 0.375  # the later of the two step-50 records
    assert mae.at(75) is None and math.isnan(mae.at(150)) and math.isnan(mae.gain)


def test_table_holds_hand_computed_percentages(runs):
    curves = [c for r in runs for c in read_probe_curves(r)]
    lines = curves_table(curves).splitlines()
    assert lines[0].startswith("**speech_commands_v2**, knn_accuracy (%)")
    assert "| step | ssast_demo | mae_demo |" in lines
    rows = [[x.strip() for x in ln.split("|")[1:-1]] for ln in lines if ln.startswith("| ")]
    body = {r[0]: r[1:] for r in rows}
    assert body["0"] == ["12.5", "50.0"]
    assert body["50"] == ["30.0", "37.5"]
    assert body["100"] == ["45.0", "62.5"]
    assert body["150"] == ["–", "diverged"]  # not probed by the first run; NaN in the second
    assert body["majority class"] == ["25.0", "25.0"] and body["chance"] == ["12.5", "12.5"]
    assert body["last - step 0 (points)"] == ["+32.5", "diverged"]


def test_one_table_per_task_and_another_metric(tmp_path):
    run = tmp_path / "asit"
    run.mkdir()
    (run / "losses.jsonl").write_text("\n".join([
        _probe(0, 0.2, frames=0.4), _probe(0, 0.1, task="esc50", majority=0.1, chance=0.1, frames=0.3),
        _probe(10, 0.3, frames=0.5), _probe(10, 0.2, task="esc50", majority=0.1, chance=0.1, frames=0.6),
    ]) + "\n")
    ks, esc = read_probe_curves(run, metric="frames")
    assert (ks.task, esc.task) == ("speech_commands_v2", "esc50")
    assert [p.value for p in esc.points] == [0.3, 0.6] and esc.gain == pytest.approx(0.3)
    text = curves_table([ks, esc])
    assert text.count("| step | asit |") == 2 and "**esc50**, frames (%)" in text


def test_bad_inputs_name_the_file_and_line(tmp_path, runs):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(_probe(0, 0.5) + "\n{not json\n" + _probe(10, 0.5) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: not a JSON object"):
        read_probe_curves(bad)
    partial = tmp_path / "partial.jsonl"  # a run still writing: its unterminated last line is left out
    partial.write_text(_probe(0, 0.5) + "\n" + _probe(10, 0.75)[:20])
    assert [p.step for p in read_probe_curves(partial)[0].points] == [0]
    no_probe = tmp_path / "noprobe.jsonl"
    no_probe.write_text(_loss(1, 3.0) + "\n")
    with pytest.raises(ValueError, match="no probe records"):
        read_probe_curves(no_probe)
    with pytest.raises(ValueError, match=r"line 1: the probe record has no 'linear_accuracy'"):
        read_probe_curves(runs[0], metric="linear_accuracy")
    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"step": 0, "probe": {"task": "t", "knn_accuracy": "high"}}) + "\n")
    with pytest.raises(ValueError, match="must be a number"):
        read_probe_curves(text)
    with pytest.raises(FileNotFoundError, match="losses.jsonl"):
        read_probe_curves(tmp_path / "missing_run")


def test_report_and_cli(tmp_path, runs, capsys):
    out = tmp_path / "report"
    assert main([str(runs[0]), f"MAE={runs[1]}", "--out", str(out), "--name", "curves"]) == 0
    md = (out / "curves.md").read_text()
    assert "| step | ssast_demo | MAE |" in md and "| 100 | 45.0 | 62.5 |" in md
    assert md in capsys.readouterr().out
    assert not list(out.glob("*.tmp"))
    assert main([str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "probe_curves: error:" in capsys.readouterr().err
    from benchmark.__main__ import main as benchmark_main  # the same through python -m benchmark

    assert benchmark_main(["probe-curves", f"A={runs[0]}", "--out", str(out), "--name", "via_cli"]) == 0
    assert "| 50 | 30.0 |" in (out / "via_cli.md").read_text()


def test_plot_is_written_with_matplotlib(tmp_path, runs):
    pytest.importorskip("matplotlib")
    written = write_report([c for r in runs for c in read_probe_curves(r)], tmp_path)
    assert written["png"] == tmp_path / "probe_curves.png"
    assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_clips_and_interval_row(tmp_path):
    """A probe that reports its clips and 95% half-width: the table gives both (the widest)."""
    run = tmp_path / "asit"
    run.mkdir()
    (run / "losses.jsonl").write_text("\n".join([
        _probe(0, 0.5, n_clips=1000, ci95=0.031), _probe(100, 0.6, n_clips=1000, ci95=0.0304),
    ]) + "\n")
    (curve,) = read_probe_curves(run)
    assert [(p.n_clips, p.ci95) for p in curve.points] == [(1000, 0.031), (1000, 0.0304)]
    rows = {r.split("|")[1].strip(): r.split("|")[2].strip() for r in curves_table([curve]).splitlines()
            if r.startswith("| ")}
    assert rows["clips scored, 95% interval"] == "1000, ±3.1"
    (other,) = read_probe_curves(run, metric="k")  # another metric: its interval is not the accuracy's
    assert all(p.ci95 is None for p in other.points)
