"""Statistics the report uses to compare methods over training seeds.

Each method is trained with several seeds; its score is the per-seed test top-1 (percent). ``summarize`` gives
mean, sample standard deviation (ddof=1) and the Student-t confidence interval of the mean. ``compare`` gives
a minus b: with ``paired=True`` a paired t-test over the seeds both methods share (Student 1908; the seed
fixes the data order and initialisation, so runs with one seed are paired); otherwise Welch's unequal-variance
t-test with Welch-Satterthwaite degrees of freedom (Welch 1947). Intervals are two-sided at ``LEVEL``.
Zero spread never yields NaN: a zero standard error gives the interval [diff, diff] and p = 1 (diff = 0) or 0.

``verdict`` reads a comparison of the paper's method (a) against a baseline (b) claimed to be ``claimed_gain``
points better (None: only "better", i.e. a claim of 0): reproduced when the interval lies above 0 (said to be
smaller than claimed when it also lies below the claim), not reproduced when it lies below the claim or at or
below 0, inconclusive otherwise, then with the number of seeds per method at which, at the observed spread,
the interval would exclude 0 or the claim.

``near_chance`` flags an accuracy below max(1.5 x chance, chance + 3 binomial standard errors of chance on the
n test images); ``binomial_margin`` is the z-margin of the difference of two accuracies on n held-out images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as _sp

LEVEL = 0.95


@dataclass(frozen=True)
class Summary:
    """One method's per-seed values: ``std`` is the sample std (0.0 when n == 1); no CI when n < 2."""

    n: int
    mean: float
    std: float
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class Comparison:
    """a minus b. ``level`` is the confidence level of the interval (an addition to the brief's fields)."""

    test: Literal["paired", "welch"]
    n_a: int
    n_b: int
    diff: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    df: float | None
    sd: float | None
    level: float = LEVEL


@dataclass(frozen=True)
class Verdict:
    word: Literal["reproduced", "not reproduced", "inconclusive"]
    reason: str
    seeds_needed: int | None


# ---------------------------------------------------------------------------------------------- basic moments


def _check(values: Sequence[float], what: str) -> list[float]:
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError(f"{what}: no values")
    if not all(math.isfinite(x) for x in xs):
        raise ValueError(f"{what}: non-finite value in {xs}")
    return xs


def _mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0.0 for one value). Identical values give exactly (value, 0.0)."""
    if min(xs) == max(xs):
        return xs[0], 0.0
    n = len(xs)
    mean = math.fsum(xs) / n
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))


def _t_crit(level: float, df: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(_sp.t.ppf(0.5 + level / 2.0, df))


def _interval(est: float, se: float, df: float, level: float) -> tuple[float, float]:
    half = _t_crit(level, df) * se
    return est - half, est + half


def _p_two_sided(est: float, se: float, df: float) -> float:
    if se == 0.0:
        return 1.0 if est == 0.0 else 0.0
    return min(1.0, 2.0 * float(_sp.t.sf(abs(est / se), df)))


def summarize(values: Sequence[float], level: float = LEVEL) -> Summary:
    """Mean, sample std and Student-t CI of the mean (mean ± t_{(1+level)/2, n-1} · s/√n; None when n < 2)."""
    xs = _check(values, "summarize")
    n = len(xs)
    mean, std = _mean_std(xs)
    if n < 2:
        return Summary(n, mean, std, None, None)
    low, high = _interval(mean, std / math.sqrt(n), n - 1, level)
    return Summary(n, mean, std, low, high)


# ---------------------------------------------------------------------------------------------- comparisons


def _welch_df(va_n: float, vb_n: float, n_a: int, n_b: int) -> float:
    """Welch-Satterthwaite df from the squared standard errors s²/n of each side."""
    se2 = va_n + vb_n
    if se2 == 0.0:
        return float(n_a + n_b - 2)
    return se2**2 / (va_n**2 / (n_a - 1) + vb_n**2 / (n_b - 1))


def _compare_paired(a: Mapping[int, float], b: Mapping[int, float], level: float) -> Comparison:
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError(f"paired comparison: no common seeds (a: {sorted(a)}, b: {sorted(b)})")
    diffs = _check([float(a[s]) - float(b[s]) for s in common], "paired differences")
    n = len(diffs)
    diff, sd = _mean_std(diffs)
    if n < 2:
        return Comparison("paired", n, n, diff, None, None, None, None, None, level)
    se, df = sd / math.sqrt(n), float(n - 1)
    low, high = _interval(diff, se, df, level)
    return Comparison("paired", n, n, diff, low, high, _p_two_sided(diff, se, df), df, sd, level)


def _compare_welch(a: Mapping[int, float], b: Mapping[int, float], level: float) -> Comparison:
    xa, xb = _check(list(a.values()), "a"), _check(list(b.values()), "b")
    (ma, sa), (mb, sb) = _mean_std(xa), _mean_std(xb)
    n_a, n_b, diff = len(xa), len(xb), ma - mb
    if n_a < 2 or n_b < 2:
        return Comparison("welch", n_a, n_b, diff, None, None, None, None, None, level)
    va_n, vb_n = sa**2 / n_a, sb**2 / n_b
    se, df = math.sqrt(va_n + vb_n), _welch_df(va_n, vb_n, n_a, n_b)
    low, high = _interval(diff, se, df, level)
    return Comparison("welch", n_a, n_b, diff, low, high, _p_two_sided(diff, se, df), df, None, level)


def same_start(a: Mapping[int, Mapping[str, object]], b: Mapping[int, Mapping[str, object]]) -> bool:
    """Whether two seed -> pairing-digest maps (``init``, ``data_order``, recorded at training) pair up: every
    common seed's two runs saw the same data order and began from the same backbone weights."""
    common = set(a) & set(b)
    return bool(common) and all(
        a[s].get(k) is not None and a[s].get(k) == b[s].get(k) for s in common for k in ("data_order", "init")
    )


def compare(a: Mapping[int, float], b: Mapping[int, float], *, paired: bool, level: float = LEVEL) -> Comparison:
    """a minus b over seed -> value maps: paired t-test over the common seeds, or Welch's t-test."""
    return _compare_paired(a, b, level) if paired else _compare_welch(a, b, level)


def format_diff(c: Comparison) -> str:
    """E.g. ``+1.23 points (95 % CI +0.40 to +2.06, p = 0.012, paired over 5 seeds)``."""
    design = (
        f"paired over {c.n_a} seed{'s' if c.n_a != 1 else ''}"
        if c.test == "paired"
        else f"Welch, {c.n_a} vs {c.n_b} seeds"
    )
    if c.ci_low is None or c.ci_high is None or c.p_value is None:
        return f"{c.diff:+.2f} points (no CI, {design})"
    p = "p < 0.001" if c.p_value < 0.001 else f"p = {c.p_value:.3f}"
    return f"{c.diff:+.2f} points ({c.level * 100:g} % CI {c.ci_low:+.2f} to {c.ci_high:+.2f}, {p}, {design})"


# ---------------------------------------------------------------------------------------------- verdicts


def _half_widths(c: Comparison, a: Mapping[int, float], b: Mapping[int, float], ns: np.ndarray) -> np.ndarray:
    """CI half-widths at ``ns`` seeds per method (paired: seed pairs), at the spread observed in ``c``."""
    q = 0.5 + c.level / 2.0
    if c.test == "paired":
        assert c.sd is not None
        return _sp.t.ppf(q, ns - 1) * c.sd / np.sqrt(ns)
    (_, sa), (_, sb) = _mean_std(list(a.values())), _mean_std(list(b.values()))
    v = sa**2 + sb**2  # n per side: se² = v / n, Welch df = (n - 1) v² / (s_a⁴ + s_b⁴)
    df = (ns - 1) * v**2 / (sa**4 + sb**4) if v > 0 else 2.0 * ns - 2
    return _sp.t.ppf(q, df) * np.sqrt(v / ns)


def _seeds_needed(
    c: Comparison, g: float, a: Mapping[int, float], b: Mapping[int, float], max_seeds: int
) -> int | None:
    margin = max(c.diff, g - c.diff)
    if margin <= 0.0 or max_seeds < 2:
        return None
    ns = np.arange(2, max_seeds + 1)
    ok = np.nonzero(_half_widths(c, a, b, ns) < margin)[0]
    return int(ns[ok[0]]) if ok.size else None


def _check_matches(c: Comparison, a: Mapping[int, float], b: Mapping[int, float]) -> None:
    n_a, n_b = (len(set(a) & set(b)),) * 2 if c.test == "paired" else (len(a), len(b))
    if (n_a, n_b) != (c.n_a, c.n_b):
        raise ValueError(f"verdict: a/b have {n_a} and {n_b} seeds, the comparison {c.n_a} and {c.n_b}")


def verdict(
    c: Comparison,
    claimed_gain: float | None,
    *,
    a: Mapping[int, float],
    b: Mapping[int, float],
    max_seeds: int = 1000,
) -> Verdict:
    """Reproduced / not reproduced / inconclusive for the claim "a beats b by ``claimed_gain`` points"."""
    _check_matches(c, a, b)
    g = 0.0 if claimed_gain is None else float(claimed_gain)
    claim = "a gain" if claimed_gain is None else f"the claimed {g:+.2f}"
    fd = format_diff(c)
    if c.ci_low is None or c.ci_high is None:
        return Verdict("inconclusive", f"{fd}; at least 2 seeds per method are needed to estimate the spread.", None)
    if c.ci_low > 0.0:
        if claimed_gain is not None and c.ci_high < g:
            return Verdict("reproduced", f"The gain is real but smaller than {claim}: {fd}.", None)
        return Verdict("reproduced", f"The gain is real: {fd}, an interval above 0.", None)
    if c.ci_high < g or c.ci_high <= 0.0:
        where = "at or below 0" if c.ci_high <= 0.0 else f"below {claim}"
        return Verdict("not reproduced", f"{fd}, an interval {where}.", None)
    need = _seeds_needed(c, g, a, b, max_seeds)
    unit = "seed pairs" if c.test == "paired" else "seeds per method"
    excl = "0" if claimed_gain is None else f"0 or {claim}"
    if need is not None:
        tail = f"about {need} {unit} would resolve it at the observed spread"
    elif max(c.diff, g - c.diff) <= 0.0:
        tail = f"no number of seeds resolves it, as the observed difference sits exactly at {excl}"
    else:
        tail = f"more than {max_seeds} {unit} would be needed at the observed spread"
    return Verdict("inconclusive", f"{fd}, an interval containing {excl.replace(' or ', ' and ')}; {tail}.", need)


# ---------------------------------------------------------------------------------------------- accuracies


def chance_level(num_classes: int) -> float:
    """Top-1 accuracy (percent) of guessing uniformly among ``num_classes`` classes: 100 / K."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return 100.0 / num_classes


def near_chance(acc: float, num_classes: int, n: int) -> bool:
    """Accuracy (percent) at or near chance: acc < max(1.5 · chance, chance + 3 · SE), where SE =
    100 · √(p0 (1 - p0) / n), p0 = 1/K, is the binomial standard error of a guesser's accuracy on n images."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    chance = chance_level(num_classes)
    p0 = 1.0 / num_classes
    se = 100.0 * math.sqrt(p0 * (1.0 - p0) / n)
    return acc < max(1.5 * chance, chance + 3.0 * se)


def binomial_margin(p1: float, p2: float, n: int, z: float = 1.96) -> float:
    """z · 100 · √(q1(1-q1)/n + q2(1-q2)/n), q = p/100: the noise (percent points) of the difference of two
    accuracies p1, p2 (percent) measured on the same n held-out images, treated as independent (conservative)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    q1, q2 = p1 / 100.0, p2 / 100.0
    return z * 100.0 * math.sqrt(q1 * (1.0 - q1) / n + q2 * (1.0 - q2) / n)
