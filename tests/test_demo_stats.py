"""The demo's statistics end to end at toy size: a family's pretrained and scratch rows run, the table gives
intervals and the paired difference, and ``--render`` rebuilds the same table and plot from the published
records alone."""
from __future__ import annotations

import shutil

import pytest

from benchmark.demo import run_demo
from downstream import results
from tests.test_demo import TOY


@pytest.mark.slow  # two rows of the toy demo (about 1.5 minutes on 2 cores)
def test_published_demo_table_has_intervals_and_differences_from_the_records_alone(tmp_path):
    from benchmark.__main__ import main

    out, published = tmp_path / "exp" / "demo", tmp_path / "results" / "demo"
    assert run_demo(out, TOY, device="cpu", rows=("ssast_pretrained", "ssast_scratch")) == 0
    recs = [r for r in results.load(out / "results.jsonl") if r.split != "dev"]
    assert recs and all(results.per_clip(r) is not None for r in recs)  # every single-label record
    made = (out / "demo_table.md").read_text()
    line, = [x for x in made.splitlines() if x.startswith("| SSAST, pretrained |")]
    assert line.count("[") == 4  # mean [lo, hi] in every column
    diffs = [x for x in made.splitlines() if x.startswith("| SSAST: pretrained − scratch |")]
    assert len(diffs) == 4 and all("significant" in x for x in diffs)
    assert "(unpaired" not in made  # both rows scored the same clips: paired clip by clip
    assert main(["demo", "--out", str(out), "--publish", str(published)]) == 0
    shutil.rmtree(tmp_path / "exp")
    (published / "demo_table.md").unlink()
    (published / "demo.png").unlink()
    assert main(["demo", "--render", str(published)]) == 0
    assert (published / "demo_table.md").read_text() == made
    assert (published / "demo.png").read_bytes()[:4] == b"\x89PNG"
    csv = (published / "demo_table.csv").read_text()
    assert csv.count("ssast_pretrained - ssast_scratch,") == 4  # one difference line per column
