"""Confidence intervals for accuracy and for the difference between two rows, from per-clip correctness.

Pure functions over arrays (numpy only). The table and the plot (:mod:`benchmark.cells`,
:mod:`benchmark.tables`, :mod:`benchmark.plots`) call them with the per-clip bits that every single-label
evaluation record carries (``downstream.results.per_clip``), so they need nothing but ``results.jsonl``.

**One cell** (a row's accuracy on one task and mode): ``correct`` is an ``(S, N)`` boolean array, one line
per seed, one column per test clip (the clips of all folds side by side: ESC-50's folds are disjoint test
sets). ``c_i`` is the fraction of the S seeds in which clip ``i`` is right. The value is ``mean(c)`` and its
95% interval ``mean(c) ± 1.96 · sd(c) / sqrt(N)`` (:func:`accuracy_interval`); with one seed, where ``c`` is
0 or 1, the Wilson score interval instead, which stays inside [0, 1] and is better than the normal one near 0
or 1 and for small N.

What the interval covers: the sampling of the N test clips, for these S trained models. It treats the clips
as independent draws from the task's population and the seeds as fixed; it says nothing about how another
pretraining run or another set of seeds would come out. That spread is shown apart: the per-seed accuracies
(:attr:`Interval.seed_values`, their min-max).

**Two rows on the same clips** (pretrained minus scratch): ``d_i = c_i(a) - c_i(b)``, and the difference is
``mean(d) ± 1.96 · sd(d) / sqrt(N)`` (:func:`paired_difference`). Pairing by clip removes the variance the two
rows share (the hard clips are hard for both), so it is much tighter than two separate intervals. It is
*significant* when the interval excludes 0. Also given: the difference in each seed the two rows share, and
whether all seeds agree in sign; with one seed each, the exact McNemar test (:func:`mcnemar_exact`) on the
clips where the two rows disagree, as a cross-check.

**Records without per-clip bits** (older than the field): :func:`pooled_interval` and
:func:`unpaired_difference` work from the per-seed accuracies and the clip count alone. Both are
conservative: for ``c`` in [0, 1], ``var(c) <= mean(c) (1 - mean(c))``, and two rows scored on the same clips
are positively correlated in practice, so treating them as independent widens the interval.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Z95", "Interval", "Difference", "wilson", "accuracy_interval", "pooled_interval",
           "paired_difference", "unpaired_difference", "mcnemar_exact"]

Z95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal

CLIPS = "clips"  # per-clip correctness averaged over seeds, normal interval
WILSON = "wilson"  # one seed: Wilson score interval on the clips
POOLED = "pooled"  # no per-clip bits: Wilson on the seed-averaged accuracy (conservative with several seeds)
PAIRED = "paired"  # per-clip differences
UNPAIRED = "unpaired"  # no per-clip bits: independent-samples bound (conservative)


@dataclass(frozen=True)
class Interval:
    """An accuracy (a fraction) with its 95% interval over test clips, and the per-seed accuracies."""

    mean: float
    lo: float
    hi: float
    n_clips: int
    n_seeds: int
    method: str  # CLIPS, WILSON or POOLED
    seed_values: tuple[float, ...] = ()  # each seed's accuracy, in seed order

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    @property
    def seed_range(self) -> tuple[float, float] | None:
        """(min, max) of the per-seed accuracies; None with fewer than two seeds."""
        return (min(self.seed_values), max(self.seed_values)) if len(self.seed_values) > 1 else None


@dataclass(frozen=True)
class Difference:
    """Row ``a`` minus row ``b`` (fractions): the mean difference, its 95% interval and the per-seed view."""

    mean: float
    lo: float
    hi: float
    n_clips: int
    method: str  # PAIRED or UNPAIRED
    per_seed: tuple[tuple[int, float], ...] = ()  # (seed, accuracy of a - accuracy of b) for seeds both have
    mcnemar_p: float | None = None  # exact McNemar p-value (one seed on each side, paired only)

    @property
    def significant(self) -> bool:
        """The 95% interval excludes 0, and with one seed on each side the exact McNemar test agrees
        (p < 0.05): with few discordant clips the normal interval is too narrow, and the stricter of the two
        decides."""
        return (self.lo > 0 or self.hi < 0) and (self.mcnemar_p is None or self.mcnemar_p < 0.05)

    @property
    def seeds_agree(self) -> bool | None:
        """Whether every shared seed's difference has the same (nonzero) sign; None with fewer than two."""
        if len(self.per_seed) < 2:
            return None
        return all(d > 0 for _, d in self.per_seed) or all(d < 0 for _, d in self.per_seed)

    def verdict(self, a: str = "pretrained", b: str = "scratch") -> str:
        """``significant (<a> better)``, ``significant (<a> worse)`` or ``not significant``."""
        if not self.significant:
            return "not significant"
        return f"significant ({a} {'better' if self.mean > 0 else 'worse'})"


def _check_z(z: float) -> None:
    if not z > 0:
        raise ValueError(f"z must be positive, got {z}")


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` trials (``k`` may be fractional)."""
    _check_z(z)
    if n <= 0:
        raise ValueError(f"wilson needs n >= 1 trials, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"wilson: k = {k} successes is outside 0..{n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _as_matrix(correct, name: str) -> np.ndarray:
    m = np.asarray(correct)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"{name} must be (seeds, clips) with at least one of each, got shape {m.shape}")
    return m.astype(np.float64)


def accuracy_interval(correct, z: float = Z95) -> Interval:
    """The seed-averaged accuracy of ``correct`` ((S, N) or (N,) booleans) and its interval over clips.

    S >= 2 seeds: ``mean(c) ± z · sd(c, ddof=1) / sqrt(N)`` with ``c`` the per-clip fraction of seeds right,
    clipped to [0, 1]. One seed: Wilson. See the module docstring for what it covers.
    """
    _check_z(z)
    m = _as_matrix(correct, "correct")
    s, n = m.shape
    c = m.mean(axis=0)
    mean = float(c.mean())
    seeds = tuple(float(v) for v in m.mean(axis=1))
    if s == 1 or n < 2:
        lo, hi = wilson(float(c.sum()), n, z)
        return Interval(mean, lo, hi, n, s, WILSON, seeds)
    half = z * float(c.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, max(0.0, mean - half), min(1.0, mean + half), n, s, CLIPS, seeds)


def pooled_interval(seed_values: Sequence[float], n_clips: int, z: float = Z95) -> Interval:
    """The interval of the mean of ``seed_values`` (each seed's accuracy on the same ``n_clips`` clips)
    without per-clip bits: Wilson on ``mean · n_clips``, the interval of one seed. With several seeds it is
    conservative: :func:`accuracy_interval` is narrower whenever the seeds disagree on some clips (``var(c) <=
    mean (1 - mean)``), and the same for one seed."""
    if len(seed_values) == 0:
        raise ValueError("pooled_interval needs at least one seed's accuracy")
    mean = float(np.mean(seed_values))
    lo, hi = wilson(mean * n_clips, n_clips, z)
    return Interval(mean, lo, hi, n_clips, len(seed_values), POOLED, tuple(float(v) for v in seed_values))


def mcnemar_exact(n_a_only: int, n_b_only: int) -> float:
    """Two-sided exact McNemar p-value: under "no difference", each of the ``n_a_only + n_b_only`` clips that
    exactly one row gets right is equally likely to be either's, so the smaller count is Binomial(n, 1/2)."""
    if n_a_only < 0 or n_b_only < 0:
        raise ValueError(f"McNemar counts must be >= 0, got {n_a_only} and {n_b_only}")
    n, k = n_a_only + n_b_only, min(n_a_only, n_b_only)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def _per_seed(a: np.ndarray, b: np.ndarray, seeds_a: Sequence[int], seeds_b: Sequence[int]
              ) -> tuple[tuple[int, float], ...]:
    acc_b = dict(zip(seeds_b, b.mean(axis=1)))
    return tuple((s, float(va - acc_b[s])) for s, va in zip(seeds_a, a.mean(axis=1)) if s in acc_b)


def _seeds(seeds: Sequence[int] | None, m: np.ndarray, name: str) -> list[int]:
    if seeds is None:
        return list(range(m.shape[0]))
    if len(seeds) != m.shape[0] or len(set(seeds)) != len(seeds):
        raise ValueError(f"{name}: {len(seeds)} seeds {list(seeds)} for {m.shape[0]} lines of correctness")
    return list(seeds)


def paired_difference(a, b, seeds_a: Sequence[int] | None = None, seeds_b: Sequence[int] | None = None,
                      z: float = Z95) -> Difference:
    """Row ``a`` minus row ``b`` on the same N clips, from their ((S_a, N) and (S_b, N)) correctness.

    ``d_i = c_i(a) - c_i(b)`` (``c``: the per-clip fraction of seeds right); mean ± ``z · sd(d, ddof=1) /
    sqrt(N)``. ``seeds_a`` / ``seeds_b`` name the lines (default 0, 1, ...): the per-seed differences are
    taken over the seeds both have. With one seed on each side, also the exact McNemar p-value.
    """
    _check_z(z)
    ma, mb = _as_matrix(a, "a"), _as_matrix(b, "b")
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(f"paired_difference needs the same clips: {ma.shape[1]} against {mb.shape[1]}")
    sa, sb = _seeds(seeds_a, ma, "seeds_a"), _seeds(seeds_b, mb, "seeds_b")
    d = ma.mean(axis=0) - mb.mean(axis=0)
    n = d.size
    mean = float(d.mean())
    half = z * float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    lo, hi = max(-1.0, mean - half), min(1.0, mean + half)  # a difference of accuracies lies in [-1, 1]
    p = None
    if ma.shape[0] == 1 and mb.shape[0] == 1:
        a_only = int(((ma[0] > 0.5) & (mb[0] < 0.5)).sum())
        b_only = int(((ma[0] < 0.5) & (mb[0] > 0.5)).sum())
        p = mcnemar_exact(a_only, b_only)
    return Difference(mean, lo, hi, n, PAIRED, _per_seed(ma, mb, sa, sb), p)


def unpaired_difference(a: Interval, b: Interval, seeds_a: Sequence[int] | None = None,
                        seeds_b: Sequence[int] | None = None, z: float = Z95) -> Difference:
    """Row ``a`` minus row ``b`` without per-clip bits: ``mean_a - mean_b ± z · sqrt(p_a (1 - p_a) / N_a +
    p_b (1 - p_b) / N_b)``, the independent-samples interval (conservative for rows scored on the same
    clips). Per-seed differences come from the intervals' ``seed_values``, named by ``seeds_a`` /
    ``seeds_b``."""
    _check_z(z)
    se = math.sqrt(a.mean * (1 - a.mean) / a.n_clips + b.mean * (1 - b.mean) / b.n_clips)
    mean = a.mean - b.mean
    per_seed: tuple[tuple[int, float], ...] = ()
    if seeds_a is not None and seeds_b is not None:
        va = np.asarray(a.seed_values, dtype=np.float64)[:, None]
        vb = np.asarray(b.seed_values, dtype=np.float64)[:, None]
        per_seed = _per_seed(va, vb, _seeds(seeds_a, va, "seeds_a"), _seeds(seeds_b, vb, "seeds_b"))
    lo, hi = max(-1.0, mean - z * se), min(1.0, mean + z * se)
    return Difference(mean, lo, hi, min(a.n_clips, b.n_clips), UNPAIRED, per_seed)
