"""Statistics the report uses to compare methods over training seeds.

Each method is trained with several seeds; its score is the per-seed test top-1 (percent). ``summarize`` gives
mean, sample standard deviation (ddof=1) and the Student-t confidence interval of the mean. ``compare`` gives
a minus b: with ``paired=True`` a paired t-test over the seeds both methods share (Student 1908; the seed
fixes the data order and initialisation, so runs with one seed are paired); otherwise Welch's unequal-variance
t-test with Welch-Satterthwaite degrees of freedom (Welch 1947). Intervals are two-sided at ``LEVEL``.
Zero spread never yields NaN: a zero standard error gives the interval [diff, diff] and p = 1 (diff = 0) or 0.

``verdict`` reads a comparison of the paper's method (a) against a baseline (b) into one of the ``VERDICTS``.
Direction and size are kept apart: where the paper claims a size (``claimed_gain`` points, on its own benchmark)
an interval above 0 but wholly below the claim is *smaller than claimed*, not *reproduced*; with no claimed size
(None) only the direction is tested. An inconclusive verdict carries the seeds per method at which, at the
observed spread, the interval would exclude 0 (the direction) and the claim (the size).

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


Word = Literal["reproduced", "smaller than claimed", "not reproduced", "inconclusive"]
Direction = Literal["gain", "no gain", "open"]

# The verdicts, defined once: the report's statistics line and docs/report.md quote these words verbatim
# (tests/test_stats.py checks both). A size is tested only where the paper claims one for the comparison on
# its own benchmark; elsewhere only the direction (the same rules with no claimed size).
VERDICTS: dict[Word, str] = {
    "reproduced": "the 95 % CI of the gain lies above 0 and, where a size is claimed, contains it or lies above it",
    "smaller than claimed": (
        "the CI lies above 0 but wholly below the claimed gain: the direction is reproduced, the size is not"
    ),
    "not reproduced": "the CI lies at or below 0, or contains 0 but lies wholly below the claimed gain",
    "inconclusive": (
        "the CI contains 0 and, where a size is claimed, the claimed gain too; with the seeds per method that "
        "would settle the direction and the size at the observed spread"
    ),
}


def verdict_definitions() -> str:
    """The verdicts as the report's statistics line and docs/report.md state them."""
    return "; ".join(f"*{w}* = {d}" for w, d in VERDICTS.items())


@dataclass(frozen=True)
class Verdict:
    """``word`` (a key of ``VERDICTS``) and why; the claimed gain it was judged against (None: direction only);
    whether the direction is settled; the seeds that would settle what is still open."""

    word: Word
    reason: str
    claimed_gain: float | None = None
    direction: Direction = "open"
    seeds_for_direction: int | None = None
    seeds_for_size: int | None = None

    @property
    def size_tested(self) -> bool:
        return self.claimed_gain is not None

    @property
    def seeds_needed(self) -> int | None:
        """The seeds at which the verdict would first stop being inconclusive (None: not inconclusive, or never)."""
        needs = [n for n in (self.seeds_for_direction, self.seeds_for_size) if n is not None]
        return min(needs) if needs and self.word == "inconclusive" else None


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


def _seeds_to_exclude(
    c: Comparison, value: float, a: Mapping[int, float], b: Mapping[int, float], max_seeds: int
) -> int | None:
    """Seeds per method (paired: seed pairs) at which, at the observed spread, the interval would exclude
    ``value``: its half-width falls below the observed distance to it. None: never, or beyond ``max_seeds``."""
    margin = abs(c.diff - value)
    if margin <= 0.0 or max_seeds < 2:
        return None
    ns = np.arange(2, max_seeds + 1)
    ok = np.nonzero(_half_widths(c, a, b, ns) < margin)[0]
    return int(ns[ok[0]]) if ok.size else None


def _check_matches(c: Comparison, a: Mapping[int, float], b: Mapping[int, float]) -> None:
    n_a, n_b = (len(set(a) & set(b)),) * 2 if c.test == "paired" else (len(a), len(b))
    if (n_a, n_b) != (c.n_a, c.n_b):
        raise ValueError(f"verdict: a/b have {n_a} and {n_b} seeds, the comparison {c.n_a} and {c.n_b}")


def _open_question(c: Comparison, what: str, value: float, need: int | None, max_seeds: int) -> str:
    unit = "seed pairs" if c.test == "paired" else "seeds per method"
    if need is not None:
        return f"about {need} {unit} would settle the {what} at the observed spread"
    if abs(c.diff - value) <= 0.0:
        return f"no number of seeds settles the {what}, as the observed difference sits exactly at {value:+.2f}"
    return f"more than {max_seeds} {unit} would be needed to settle the {what} at the observed spread"


def verdict(
    c: Comparison,
    claimed_gain: float | None,
    *,
    a: Mapping[int, float],
    b: Mapping[int, float],
    max_seeds: int = 1000,
) -> Verdict:
    """The verdict (``VERDICTS``) on the claim "a beats b", and by ``claimed_gain`` points where one is given
    (the paper's benchmarks); without one only the direction is tested."""
    _check_matches(c, a, b)
    if claimed_gain is not None and claimed_gain <= 0.0:
        raise ValueError(f"verdict: a claimed gain must be positive, got {claimed_gain:+.2f}")
    g = claimed_gain
    fd = format_diff(c)
    scope = "direction only: no size claimed here" if g is None else f"the claimed {g:+.2f}"

    def out(word: Word, reason: str, direction: Direction, dir_n: int | None = None, size_n: int | None = None):
        return Verdict(word, reason, g, direction, dir_n, size_n)

    if c.ci_low is None or c.ci_high is None:
        return out("inconclusive", f"{fd}; at least 2 seeds per method are needed to estimate the spread.", "open")
    lo, hi = c.ci_low, c.ci_high
    if lo > 0.0:
        if g is None:
            return out("reproduced", f"{fd}: an interval above 0 ({scope}).", "gain")
        if hi < g:
            return out(
                "smaller than claimed",
                f"{fd}: above 0 but wholly below {scope} -- the direction is reproduced, the size is not.",
                "gain",
            )
        where = "containing" if lo <= g else "above"
        return out("reproduced", f"{fd}: above 0 and {where} {scope}.", "gain")
    if hi <= 0.0:
        return out("not reproduced", f"{fd}: an interval at or below 0, no gain ({scope}).", "no gain")
    dir_n = _seeds_to_exclude(c, 0.0, a, b, max_seeds)
    direction = _open_question(c, "direction", 0.0, dir_n, max_seeds)
    if g is not None and hi < g:
        return out(
            "not reproduced",
            f"{fd}: wholly below {scope}, which is excluded; whether there is any gain is open: {direction}.",
            "open",
            dir_n,
        )
    if g is None:
        return out("inconclusive", f"{fd}: an interval containing 0 ({scope}); {direction}.", "open", dir_n)
    size_n = _seeds_to_exclude(c, g, a, b, max_seeds)
    size = _open_question(c, "size", g, size_n, max_seeds)
    return out(
        "inconclusive", f"{fd}: an interval containing 0 and {scope}; {direction}; {size}.", "open", dir_n, size_n
    )


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
