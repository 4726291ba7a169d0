"""Confidence intervals and paired differences (benchmark.stats), the per-clip correctness records carry
(downstream.results / metrics), and how cells, tables and the pair plot use them: hand-computed values, a
brute-force bootstrap, and coverage by simulation."""
from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from benchmark import stats
from benchmark.cells import RowPair, cell_stats, pair_difference
from benchmark.provenance import Provenance
from benchmark.published import Column, PaperTable, Row
from benchmark.tables import to_csv, to_markdown
from downstream import metrics, results
from downstream.tasks import FOLD_AVERAGED_SPLIT


# ------------------------------------------------------------------------------------------ stats by hand
def test_wilson_by_hand():
    # 8 of 10: p = 0.8, z = 1.96 -> centre 0.71674, half 0.22658 (the textbook interval 0.490-0.943)
    lo, hi = stats.wilson(8, 10, 1.96)
    assert lo == pytest.approx(0.49016, abs=1e-4) and hi == pytest.approx(0.94332, abs=1e-4)
    assert stats.wilson(0, 20)[0] == 0.0 and stats.wilson(20, 20)[1] == 1.0
    assert 0 < stats.wilson(0, 20)[1] < 0.2  # no zero-width interval at 0%, unlike the normal one
    with pytest.raises(ValueError, match="outside"):
        stats.wilson(11, 10)


def test_accuracy_interval_by_hand():
    # 2 seeds x 4 clips: c = [1, .5, .5, 0], mean .5, sd(ddof=1) = sqrt(0.5 / 3)
    iv = stats.accuracy_interval([[1, 1, 0, 0], [1, 0, 1, 0]])
    half = stats.Z95 * math.sqrt(0.5 / 3) / 2
    assert iv.mean == pytest.approx(0.5) and iv.lo == pytest.approx(0.5 - half)
    assert iv.hi == pytest.approx(0.5 + half) and iv.method == stats.CLIPS
    assert iv.n_clips == 4 and iv.n_seeds == 2 and iv.seed_values == (0.5, 0.5)
    assert iv.seed_range == (0.5, 0.5)
    one = stats.accuracy_interval(np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], dtype=bool))  # 1-D: one seed
    assert (one.lo, one.hi) == pytest.approx(stats.wilson(8, 10)) and one.method == stats.WILSON
    assert one.seed_range is None
    with pytest.raises(ValueError, match="seeds, clips"):
        stats.accuracy_interval(np.zeros((2, 0)))


def test_paired_difference_and_mcnemar_by_hand():
    a, b = [[1, 1, 1, 0, 1]], [[1, 0, 0, 0, 1]]
    d = stats.paired_difference(a, b, [7], [7])
    # d = [0, 1, 1, 0, 0]: mean 0.4, sd(ddof=1) = sqrt(0.3)
    half = stats.Z95 * math.sqrt(0.3) / math.sqrt(5)
    assert d.mean == pytest.approx(0.4) and (d.lo, d.hi) == pytest.approx((0.4 - half, 0.4 + half))
    assert not d.significant and d.verdict() == "not significant" and d.method == stats.PAIRED
    assert d.mcnemar_p == pytest.approx(0.5)  # 2 clips only a gets right, 0 only b: 2 * (1/2)^2
    assert d.per_seed == ((7, pytest.approx(0.4)),) and d.seeds_agree is None
    assert stats.mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert stats.mcnemar_exact(1, 4) == pytest.approx(2 * (1 + 5) / 32)
    assert stats.mcnemar_exact(5, 5) == 1.0 and stats.mcnemar_exact(0, 0) == 1.0
    with pytest.raises(ValueError, match="same clips"):
        stats.paired_difference([[1, 0]], [[1, 0, 1]])


def test_one_seed_needs_mcnemar_to_agree():
    # 1,000 clips, a right on 5 that b gets wrong, no others discordant: the normal interval excludes 0
    # (mean 0.005, half-width 1.96 * sqrt(5 / 999) / sqrt(1000) = 0.0044) but McNemar's p = 2 / 2^5 > 0.05
    b = np.zeros(1000, dtype=bool)
    a = b.copy()
    a[:5] = True
    d = stats.paired_difference(a, b)
    assert d.lo > 0 and d.mcnemar_p == pytest.approx(0.0625) and not d.significant
    a[5] = True  # 6 discordant: p = 2 / 64 = 0.031
    assert stats.paired_difference(a, b).significant
    wide = stats.paired_difference([[1, 0]], [[0, 1]])  # d = [1, -1]: the interval stays inside [-1, 1]
    assert (wide.lo, wide.hi) == (-1.0, 1.0)


def test_difference_words_and_seed_agreement():
    worse = stats.Difference(-0.05, -0.08, -0.02, 500, stats.PAIRED, ((1, -0.04), (2, -0.06)))
    assert worse.significant and worse.seeds_agree and worse.verdict() == "significant (pretrained worse)"
    better = stats.Difference(0.05, 0.01, 0.09, 500, stats.PAIRED, ((1, 0.04), (2, -0.01)))
    assert better.verdict("A", "B") == "significant (A better)" and better.seeds_agree is False
    # per-seed differences over the seeds both rows have, matched by seed, not by position
    d = stats.paired_difference([[1, 1, 0], [1, 0, 0]], [[0, 0, 0], [1, 1, 1]], [3, 1], [1, 2])
    assert d.per_seed == ((1, pytest.approx(1 / 3 - 0.0)),)


# ------------------------------------------------------------------------------------------ by resampling
def _correlated_rows(rng, n_clips: int, n_seeds: int, gain: float):
    """Two rows scored on the same clips: a shared per-clip difficulty, row a ``gain`` logits easier."""
    difficulty = rng.normal(0.5, 1.5, n_clips)
    p_a, p_b = (1 / (1 + np.exp(-(difficulty + g))) for g in (gain, 0.0))
    return rng.random((n_seeds, n_clips)) < p_a, rng.random((n_seeds, n_clips)) < p_b


def test_intervals_agree_with_a_brute_force_bootstrap():
    rng = np.random.default_rng(0)
    a, b = _correlated_rows(rng, 600, 3, 0.3)
    boot = rng.integers(0, 600, (4000, 600))  # the same resampled clips for both rows
    ca, cb = a.mean(axis=0), b.mean(axis=0)
    iv, d = stats.accuracy_interval(a), stats.paired_difference(a, b)
    lo, hi = np.percentile(ca[boot].mean(axis=1), [2.5, 97.5])
    assert iv.lo == pytest.approx(lo, abs=0.004) and iv.hi == pytest.approx(hi, abs=0.004)
    lo, hi = np.percentile((ca - cb)[boot].mean(axis=1), [2.5, 97.5])
    assert d.lo == pytest.approx(lo, abs=0.004) and d.hi == pytest.approx(hi, abs=0.004)
    # one seed: Wilson against the bootstrap of the 0/1 clips
    lo, hi = np.percentile(a[0].astype(float)[boot].mean(axis=1), [2.5, 97.5])
    one = stats.accuracy_interval(a[0])
    assert one.lo == pytest.approx(lo, abs=0.006) and one.hi == pytest.approx(hi, abs=0.006)


def test_wilson_covers_the_true_accuracy_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    k = rng.binomial(300, 0.7, 2000)
    covered = [stats.wilson(int(x), 300)[0] <= 0.7 <= stats.wilson(int(x), 300)[1] for x in k]
    assert 0.93 <= np.mean(covered) <= 0.97


def test_pairing_is_tighter_and_the_fallbacks_are_conservative():
    rng = np.random.default_rng(2)
    a, b = _correlated_rows(rng, 800, 3, 0.4)
    paired = stats.paired_difference(a, b, [1, 2, 3], [1, 2, 3])
    ia, ib = stats.accuracy_interval(a), stats.accuracy_interval(b)
    unpaired = stats.unpaired_difference(ia, ib, [1, 2, 3], [1, 2, 3])
    assert paired.significant and paired.mean == pytest.approx(unpaired.mean)
    assert paired.hi - paired.lo < unpaired.hi - unpaired.lo  # shared difficulty cancels clip by clip
    assert [s for s, _ in unpaired.per_seed] == [1, 2, 3] and unpaired.method == stats.UNPAIRED
    assert unpaired.per_seed == tuple((s, pytest.approx(v)) for s, v in paired.per_seed)
    for m in (a, b, rng.random((5, 300)) < 0.6):  # var(c) <= mean (1 - mean) for c in [0, 1]
        exact, pooled = stats.accuracy_interval(m), stats.pooled_interval(m.mean(axis=1), m.shape[1])
        assert pooled.mean == pytest.approx(exact.mean) and pooled.hi - pooled.lo >= exact.hi - exact.lo
        assert pooled.method == stats.POOLED


# ------------------------------------------------------------------------------------------ records
def test_correctness_bits_round_trip_by_hand():
    bits = [1, 0, 1, 1, 0, 0, 0, 0, 1]
    assert results.encode_correct(bits) == "sIA="  # 0b10110000 0b10000000
    assert results.decode_correct("sIA=", 9).tolist() == [bool(x) for x in bits]
    rng = np.random.default_rng(3)
    for n in (1, 8, 999, 1000):
        x = rng.random(n) < 0.5
        assert (results.decode_correct(results.encode_correct(x), n) == x).all()
    with pytest.raises(ValueError, match="base64"):
        results.decode_correct("not base64!", 9)
    with pytest.raises(ValueError, match="bits"):
        results.decode_correct("sIA=", 17)
    sha = results.clip_ids_sha1
    assert sha(["b", "a"]) == sha(["a", "b"]) != sha(["a"])  # the set of clips, whatever the loader's order


def test_per_clip_correctness_is_in_sorted_uid_order():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])  # predicts 0, 0, 1
    out = metrics.per_clip_correctness(scores, [0, 1, 1], ["b", "a", "c"])  # right: b, c; wrong: a
    assert results.decode_correct(out["correct"], 3).tolist() == [False, True, True]  # a, b, c
    assert out["clip_ids_sha1"] == results.clip_ids_sha1(["a", "b", "c"])
    one_hot = metrics.per_clip_correctness(scores, np.eye(2)[[0, 1, 1]], ["b", "a", "c"])
    assert one_hot == out  # KS2's BCE targets: argmax, as accuracy()
    report = metrics.evaluation_report(scores, [0, 1, 1], [0, 1], ["x", "y"], uids=["b", "a", "c"])
    assert report["predictions"]["correct"] == out["correct"]
    multi = metrics.evaluation_report(scores, [[1, 0], [0, 1], [1, 1]], [[0], [1]], ["x", "y"], True,
                                      uids=["b", "a", "c"])
    assert "correct" not in multi["predictions"]  # mAP needs the scores: no bits
    assert "correct" not in metrics.evaluation_report(scores, [0, 1, 1], [0, 1], ["x", "y"])["predictions"]


def _record(bits, uids=None, value=None, **kw) -> results.ResultRecord:
    bits = np.asarray(bits, dtype=bool)
    uids = uids if uids is not None else [f"c{i:04d}" for i in range(bits.size)]
    scores = np.stack([bits, ~bits], axis=1).astype(float)  # class 0 is every clip's label
    pred = {"clips": int(bits.size), **metrics.per_clip_correctness(scores, np.zeros(bits.size, int), uids)}
    fields = dict(upstream="up", task="speech_commands_v2", split="test", metric="accuracy", mode="frozen",
                  seed=1, label="p", code_version="test", timestamp="2026-01-01T00:00:00+0000")
    fields.update(kw)
    return results.ResultRecord(value=float(bits.mean()) if value is None else value, predictions=pred,
                                **fields)


def test_per_clip_reads_records_and_refuses_stale_or_missing_bits(tmp_path):
    rec = _record([1, 0, 1, 1])
    path = tmp_path / "r.jsonl"
    results.append(rec, path)
    back = results.per_clip(results.load(path)[0])
    assert back.correct.tolist() == [True, False, True, True]
    assert back.clip_ids_sha1 == results.clip_ids_sha1([f"c{i:04d}" for i in range(4)])
    assert results.per_clip(_record([1, 0, 1, 1], value=0.5)) is None  # bits of another step
    old = results.ResultRecord(upstream="up", task="t", split="test", metric="accuracy", value=0.5,
                               predictions={"clips": 4})
    assert results.per_clip(old) is None


# ------------------------------------------------------------------------------------------ cells and tables
OFF = Provenance.off()
KS = Column("ks", "speech_commands_v2", "frozen", "accuracy", 100.0, "Keywords")
ESC = Column("esc", "esc50", "frozen", "accuracy", 100.0, "ESC")
TABLE = PaperTable("t", "demo", "Demo", "Demo", (KS, ESC),
                   (Row("fam_pretrained", "Fam, pretrained", "Demo", {"ks": None, "esc": None}, None),
                    Row("fam_scratch", "Fam, from scratch", "Demo", {"ks": None, "esc": None}, None)))
PAIR = RowPair("fam_pretrained", "fam_scratch", "Fam")


def _esc_records(label, matrix, seeds=(1, 2)):
    """ESC records of ``matrix`` (seeds x 5 folds x 20 clips), as the suites write the selected ones."""
    out = []
    for seed, line in zip(seeds, matrix):
        for fold in range(1, 6):
            part = line[(fold - 1) * 20:fold * 20]
            out.append(_record(part, [f"f{fold}-{i:02d}" for i in range(20)], task="esc50", fold=fold,
                               split=FOLD_AVERAGED_SPLIT, seed=seed, label=label))
    return out


def test_cells_pool_the_folds_and_average_the_seeds():
    rng = np.random.default_rng(4)
    a, b = _correlated_rows(rng, 100, 2, 1.5)
    recs = _esc_records("fam_pretrained", a) + _esc_records("fam_scratch", b)
    sa = cell_stats(recs, TABLE, TABLE.rows[0], ESC, OFF)
    assert sa.clips.correct.shape == (2, 100) and (sa.clips.correct == a).all()  # folds in order
    assert sa.seeds == (1, 2) and [f for f, _ in sa.clips.digests] == [1, 2, 3, 4, 5]
    want = stats.accuracy_interval(a)
    assert (sa.interval.mean, sa.interval.lo, sa.interval.hi) == pytest.approx((want.mean, want.lo, want.hi))
    assert sa.mean == pytest.approx(a.mean())  # equal folds: the fold mean is the pooled mean
    sb = cell_stats(recs, TABLE, TABLE.rows[1], ESC, OFF)
    d, want = pair_difference(sa, sb), stats.paired_difference(a, b, [1, 2], [1, 2])
    assert d.method == stats.PAIRED and (d.mean, d.lo, d.hi) == pytest.approx((want.mean, want.lo, want.hi))
    assert d.significant  # a is 1.5 logits easier on 100 clips


def test_cells_without_bits_fall_back_and_other_clips_do_not_pair():
    rng = np.random.default_rng(5)
    a, b = _correlated_rows(rng, 100, 2, 0.0)
    old = _esc_records("fam_pretrained", a)
    for r in old:  # records older than the field: only the clip count
        r.predictions = {"clips": 20}
    sa = cell_stats(old, TABLE, TABLE.rows[0], ESC, OFF)
    assert sa.clips is None and sa.interval.method == stats.POOLED and sa.interval.n_clips == 100
    other = _esc_records("fam_scratch", b)
    other[0] = _record(b[0][:20], [f"x{i}" for i in range(20)], task="esc50", fold=1,
                       split=FOLD_AVERAGED_SPLIT, seed=1, label="fam_scratch")
    sb = cell_stats(other, TABLE, TABLE.rows[1], ESC, OFF)
    assert sb.clips is None  # its seeds scored different clips in fold 1: not averaged clip by clip
    assert sb.interval.method == stats.POOLED
    assert pair_difference(sa, sb).method == stats.UNPAIRED
    for r in old:
        r.predictions = {}
    assert cell_stats(old, TABLE, TABLE.rows[0], ESC, OFF).interval is None


def test_markdown_and_csv_give_intervals_differences_and_verdicts():
    ks_a = np.array([True] * 90 + [False] * 10)  # 90 %
    ks_b = np.array([True] * 70 + [False] * 30)  # 70 % on the same clips, a right wherever b is
    recs = [_record(ks_a, label="fam_pretrained"), _record(ks_b, label="fam_scratch")]
    md = to_markdown(TABLE, recs, provenance=OFF, intervals=True, pairs=[PAIR])
    lo, hi = stats.wilson(90, 100)
    assert f"| Fam, pretrained | 90.0 [{lo * 100:.1f}, {hi * 100:.1f}] | — |" in md
    d = stats.paired_difference(ks_a, ks_b)
    line, = [x for x in md.splitlines() if x.startswith("| Fam: pretrained − scratch | Keywords |")]
    assert f"+20.0 | [{d.lo * 100:+.1f}, {d.hi * 100:+.1f}] | **significant (pretrained better)**" in line
    assert "McNemar p = 1.91e-06" in line  # 20 clips only a gets right, none only b: 2 / 2^20
    line, = [x for x in md.splitlines() if x.startswith("| Fam: pretrained − scratch | ESC |")]
    assert "no interval" in line
    assert "Significant: Fam, Keywords (pretrained better). Every other difference is not significant." in md
    assert "Keywords: 100 test clips, 1 seed(s)" in md and "not the spread over pretraining" in md
    plain = to_markdown(TABLE, recs, provenance=OFF)  # the published tables keep mean ± std
    assert "| Fam, pretrained | 90.0 | — |" in plain and "Pretrained − scratch" not in plain
    rows = list(csv.DictReader(io.StringIO(to_csv(TABLE, recs, provenance=OFF, pairs=[PAIR]))))
    row = rows[0]
    assert (row["row"], row["column"], row["ci_method"]) == ("fam_pretrained", "ks", "wilson")
    assert row["n_clips"] == "100"
    assert float(row["ci_lo"]) == pytest.approx(lo * 100, abs=1e-4) and row["ours_mean"] == "90.0"
    diff, = [r for r in rows if r["row"] == "fam_pretrained - fam_scratch" and r["column"] == "ks"]
    assert diff["provenance"] == "difference" and diff["significant"] == "true"
    assert diff["ours_mean"] == "20.0"
    assert float(diff["ci_lo"]) == pytest.approx(d.lo * 100, abs=1e-4)


def test_markdown_says_when_nothing_is_significant_and_shows_the_seed_spread():
    rng = np.random.default_rng(6)
    a, b = _correlated_rows(rng, 100, 2, 0.0)
    recs = _esc_records("fam_pretrained", a) + _esc_records("fam_scratch", a[::-1])  # same clips, swapped
    md = to_markdown(TABLE, recs, provenance=OFF, intervals=True, pairs=[PAIR])
    assert "None of the 1 differences with results in both rows is significant." in md
    per_seed = a.mean(axis=1) * 100
    line, = [x for x in md.splitlines() if x.startswith("| Fam, pretrained (per seed) |")]
    assert f"| {per_seed.min():.1f}–{per_seed.max():.1f} (2 seeds) |" in line
    assert len([x for x in md.splitlines() if x.startswith("| Fam, pretrained |")]) == 1
    assert "+0.0 | [" in md and "seeds disagree in sign" in md
    with pytest.raises(ValueError, match="no row"):
        to_markdown(TABLE, recs, provenance=OFF, pairs=[RowPair("fam_pretrained", "nope", "X")])


def test_pair_plot(tmp_path):
    from benchmark.plots import PAIR_COLOURS, write_pair_plot

    rng = np.random.default_rng(7)
    a, b = _correlated_rows(rng, 100, 2, 1.5)
    recs = _esc_records("fam_pretrained", a) + _esc_records("fam_scratch", b)
    path = tmp_path / "r.jsonl"
    for r in recs:
        results.append(r, path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):  # look at the figure before it is closed
        for ax in fig.axes:
            seen[ax.get_title()] = ax
        seen["legend"] = [t.get_text() for t in fig.legends[0].get_texts()]
        return real_savefig(fig, *args, **kwargs)

    matplotlib.figure.Figure.savefig = spy
    try:
        out = write_pair_plot(path, tmp_path / "p.png", TABLE, [PAIR], OFF)
    finally:
        matplotlib.figure.Figure.savefig = real_savefig
    assert out.read_bytes()[:4] == b"\x89PNG"
    esc = seen["ESC"]
    bars = [p for p in esc.patches if p.get_height() == p.get_height()]
    colours = [matplotlib.colors.to_hex(p.get_facecolor()) for p in bars]
    assert colours == list(PAIR_COLOURS)  # pretrained, then scratch
    heights = sorted(round(p.get_height(), 6) for p in bars)
    assert heights == sorted(round(x, 6) for x in (a.mean() * 100, b.mean() * 100))
    drawn = [c for c in esc.containers if isinstance(c, matplotlib.container.BarContainer)]
    assert len(drawn) == 2 and all(c.errorbar is not None for c in drawn)  # an interval on every bar
    stars = [t for t in esc.texts if t.get_text() == "*"]  # the significant gap, above both bars
    assert len(stars) == 1 and stars[0].get_position()[1] > max(heights)
    assert not [t for t in seen["Keywords"].texts if t.get_text() == "*"]  # no records: no star
    assert any("significant" in t for t in seen["legend"])
    plt.close("all")


def test_fold_selection_returns_the_clips_of_the_chosen_step(tmp_path):
    import json

    from downstream.tasks import get_task

    dirs = []
    for k in range(1, 4):
        d = tmp_path / f"fold{k}"
        d.mkdir()
        lines = [{"step": step, "split": "test", "accuracy": acc, "correct": f"{c}{k}==",
                  "clip_ids_sha1": f"s{k}"} for step, acc, c in ((10, 0.5, "A"), (20, 0.75, "B"))]
        if k == 3:  # a line written before the field
            lines[1] = {"step": 20, "split": "test", "accuracy": 0.75}
        d.joinpath("evals.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        dirs.append(d)
    chosen = get_task("esc50").select_runs(dirs)
    assert chosen["step"] == 20
    assert chosen["fold_per_clip"] == [{"correct": "B1==", "clip_ids_sha1": "s1"},
                                       {"correct": "B2==", "clip_ids_sha1": "s2"}, None]
