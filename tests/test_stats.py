"""pipeline.stats against scipy.stats' independent implementations, and the verdict rules."""

from __future__ import annotations

import math
import typing
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sp

from pipeline.report.markdown import STATS_LINE
from pipeline.stats import (
    LEVEL,
    VERDICTS,
    Comparison,
    Verdict,
    binomial_margin,
    chance_level,
    compare,
    format_diff,
    near_chance,
    summarize,
    verdict,
    verdict_definitions,
)

A = {0: 93.12, 1: 94.25, 2: 92.81, 3: 93.97, 4: 94.53}
B = {0: 92.40, 1: 93.02, 2: 92.95, 3: 92.11, 4: 93.60}
B_WELCH = {10: 91.90, 11: 93.40, 12: 92.15, 13: 92.70}


def _seeded(values: np.ndarray, first: int = 0) -> dict[int, float]:
    return {first + i: float(v) for i, v in enumerate(values)}


def _exact(n: int, mean: float, sd: float, seed: int) -> np.ndarray:
    """n values with exactly (to rounding) the given mean and sample std."""
    z = np.random.default_rng(seed).standard_normal(n)
    z = (z - z.mean()) / z.std(ddof=1)
    return mean + sd * z


def _no_nan(c: Comparison) -> None:
    for x in (c.diff, c.ci_low, c.ci_high, c.p_value, c.df):
        assert x is not None and math.isfinite(x)


# ---------------------------------------------------------------------------------------------- summarize


@pytest.mark.parametrize("level", [LEVEL, 0.9])
def test_summarize_matches_numpy_and_scipy_t_interval(level: float) -> None:
    x = np.array(list(A.values()))
    s = summarize(list(x), level=level)
    assert s.n == 5
    assert s.mean == pytest.approx(np.mean(x), rel=1e-12)
    assert s.std == pytest.approx(np.std(x, ddof=1), rel=1e-12)
    low, high = sp.t.interval(level, df=4, loc=np.mean(x), scale=sp.sem(x))
    assert (s.ci_low, s.ci_high) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))


def test_summarize_single_value_and_zero_spread() -> None:
    one = summarize([93.1])
    assert (one.n, one.mean, one.std, one.ci_low, one.ci_high) == (1, 93.1, 0.0, None, None)
    flat = summarize([0.1, 0.1, 0.1])  # fsum/3 of these is not exactly 0.1: zero spread must still be exact
    assert (flat.mean, flat.std, flat.ci_low, flat.ci_high) == (0.1, 0.0, 0.1, 0.1)
    with pytest.raises(ValueError):
        summarize([])


# ---------------------------------------------------------------------------------------------- compare


def test_compare_paired_matches_ttest_rel() -> None:
    seeds = sorted(A)
    xa, xb = np.array([A[s] for s in seeds]), np.array([B[s] for s in seeds])
    ref = sp.ttest_rel(xa, xb)
    ci = ref.confidence_interval(confidence_level=LEVEL)
    c = compare(A, B, paired=True)
    assert (c.test, c.n_a, c.n_b) == ("paired", 5, 5)
    assert c.diff == pytest.approx(np.mean(xa - xb), rel=1e-12)
    assert c.sd == pytest.approx(np.std(xa - xb, ddof=1), rel=1e-12)
    assert c.df == pytest.approx(ref.df)
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert (c.ci_low, c.ci_high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))


def test_compare_paired_uses_only_common_seeds_matched_by_seed() -> None:
    a = {**A, 7: 10.0, 8: 99.0}  # seeds b lacks
    b = {s: B[s] for s in reversed(sorted(B))}  # other insertion order: pairs must go by seed
    b[9] = 50.0  # a seed a lacks
    c = compare(a, b, paired=True)
    ref = compare(A, B, paired=True)
    assert (c.n_a, c.n_b) == (5, 5)
    assert c == ref


def test_compare_welch_matches_ttest_ind() -> None:
    xa, xb = np.array(list(A.values())), np.array(list(B_WELCH.values()))
    ref = sp.ttest_ind(xa, xb, equal_var=False)
    ci = ref.confidence_interval(confidence_level=LEVEL)
    c = compare(A, B_WELCH, paired=False)
    assert (c.test, c.n_a, c.n_b, c.sd) == ("welch", 5, 4, None)
    assert c.diff == pytest.approx(xa.mean() - xb.mean(), rel=1e-12)
    assert c.df == pytest.approx(ref.df, rel=1e-12)
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert (c.ci_low, c.ci_high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))


def test_zero_spread_gives_no_nan() -> None:
    b = {0: 93.25, 1: 94.5, 2: 92.75}
    a = {s: v + 1.5 for s, v in b.items()}  # every paired difference exactly 1.5
    c = compare(a, b, paired=True)
    _no_nan(c)
    assert (c.diff, c.ci_low, c.ci_high, c.p_value, c.sd) == (1.5, 1.5, 1.5, 0.0, 0.0)
    same = compare(b, b, paired=True)
    _no_nan(same)
    assert (same.diff, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)

    w = compare({0: 94.1, 1: 94.1, 2: 94.1}, {5: 93.1, 6: 93.1, 7: 93.1, 8: 93.1}, paired=False)
    _no_nan(w)
    assert w.ci_low == w.ci_high == w.diff == pytest.approx(1.0)
    assert (w.p_value, w.df) == (0.0, 5.0)
    w0 = compare({0: 93.1, 1: 93.1}, {5: 93.1, 6: 93.1}, paired=False)
    _no_nan(w0)
    assert (w0.diff, w0.ci_low, w0.ci_high, w0.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert verdict(c, 1.0, a=a, b=b).word == "reproduced"


def test_one_seed_gives_no_ci_and_an_inconclusive_verdict() -> None:
    a, b = {0: 94.0, 1: 95.0}, {0: 93.0, 5: 92.0}
    c = compare(a, b, paired=True)  # one common seed
    assert (c.n_a, c.diff, c.ci_low, c.ci_high, c.p_value, c.df) == (1, 1.0, None, None, None, None)
    v = verdict(c, 1.0, a=a, b=b)
    assert (v.word, v.seeds_needed) == ("inconclusive", None)
    assert "at least 2 seeds" in v.reason and "+1.00 points" in v.reason

    w = compare({0: 94.0}, B_WELCH, paired=False)
    assert (w.n_a, w.n_b, w.ci_low, w.p_value) == (1, 4, None, None)
    assert verdict(w, None, a={0: 94.0}, b=B_WELCH).word == "inconclusive"


# ---------------------------------------------------------------------------------------------- verdict


def test_verdict_turns_reproduced_as_seeds_are_added() -> None:
    rng = np.random.default_rng(3)
    base = 92.0 + 0.5 * rng.standard_normal(40)
    gain = 1.0 + 1.0 * rng.standard_normal(40)  # true gain +1.0 at spread 1.0
    words = []
    for n in range(2, 41):
        a, b = _seeded(base[:n] + gain[:n]), _seeded(base[:n])
        words.append(verdict(compare(a, b, paired=True), None, a=a, b=b).word)
    assert words[:2] == ["inconclusive", "inconclusive"]  # 2 and 3 seeds
    assert words[-1] == "reproduced"
    assert "not reproduced" not in words


@pytest.mark.parametrize(
    ("diff", "sd", "claim", "resolved"), [(0.8, 1.0, None, "reproduced"), (1.0, 2.0, 3.0, "not reproduced")]
)
def test_seeds_needed_resolves_the_paired_verdict_at_the_observed_spread(
    diff: float, sd: float, claim: float | None, resolved: str
) -> None:
    def at(n: int):
        b = _seeded(92.0 + 0.3 * np.arange(n))
        d = _exact(n, diff, sd, seed=n)
        a = {s: v + d[s] for s, v in b.items()}
        return verdict(compare(a, b, paired=True), claim, a=a, b=b)

    small = at(3)
    assert small.word == "inconclusive"
    need = small.seeds_needed
    assert need is not None and need > 3
    assert f"about {need} seed pairs" in small.reason
    assert at(need).word == resolved
    assert at(need - 1).word == "inconclusive"  # the smallest such n


def test_seeds_needed_resolves_the_welch_verdict_at_the_observed_spread() -> None:
    def at(n: int):
        a, b = _seeded(_exact(n, 93.6, 0.9, seed=n)), _seeded(_exact(n, 93.0, 0.4, seed=100 + n), first=100)
        return verdict(compare(a, b, paired=False), None, a=a, b=b)

    small = at(3)
    assert small.word == "inconclusive"
    need = small.seeds_needed
    assert need is not None and need > 3
    assert f"about {need} seeds per method" in small.reason
    assert at(need).word == "reproduced"
    assert at(need - 1).word == "inconclusive"


def test_seeds_needed_none_when_unresolvable_or_too_many() -> None:
    b = {0: 92.0, 1: 93.0, 2: 92.5}
    a = {0: 93.0, 1: 92.0, 2: 92.5}  # differences +1, -1, 0: mean exactly 0
    v = verdict(compare(a, b, paired=True), None, a=a, b=b)
    assert (v.word, v.seeds_needed) == ("inconclusive", None)
    assert "no number of seeds" in v.reason
    a2 = {0: 93.0, 1: 92.0, 2: 92.75}  # mean +0.083 at sd ~1: far more than 10 pairs
    v2 = verdict(compare(a2, b, paired=True), None, a=a2, b=b, max_seeds=10)
    assert (v2.word, v2.seeds_needed) == ("inconclusive", None)
    assert "more than 10" in v2.reason
    assert verdict(compare(a2, b, paired=True), None, a=a2, b=b).seeds_needed is not None


def _fixed(lo: float, hi: float) -> Comparison:
    return Comparison("paired", 5, 5, (lo + hi) / 2, lo, hi, 0.04, 4.0, 1.0)


def test_not_reproduced_when_interval_lies_below_the_claim_or_zero() -> None:
    a, b = dict.fromkeys(range(5), 0.0), dict.fromkeys(range(5), 0.0)
    v = verdict(_fixed(-0.5, 0.8), 2.0, a=a, b=b)
    assert (v.word, v.seeds_needed) == ("not reproduced", None)
    assert "+2.00" in v.reason and "-0.50 to +0.80" in v.reason
    assert verdict(_fixed(-0.5, 0.8), None, a=a, b=b).word == "inconclusive"
    assert verdict(_fixed(-1.5, -0.2), None, a=a, b=b).word == "not reproduced"
    assert verdict(_fixed(-1.5, 0.0), None, a=a, b=b).word == "not reproduced"


def test_a_real_gain_wholly_below_the_claim_is_smaller_than_claimed() -> None:
    a, b = dict.fromkeys(range(5), 0.0), dict.fromkeys(range(5), 0.0)
    v = verdict(_fixed(0.5, 1.5), 3.0, a=a, b=b)
    assert (v.word, v.direction, v.size_tested) == ("smaller than claimed", "gain", True)
    assert "wholly below the claimed +3.00" in v.reason and "the size is not" in v.reason
    plain = verdict(_fixed(0.5, 1.5), 1.0, a=a, b=b)
    assert plain.word == "reproduced" and "containing the claimed +1.00" in plain.reason
    off = verdict(_fixed(0.5, 1.5), None, a=a, b=b)
    assert (off.word, off.size_tested) == ("reproduced", False) and "direction only" in off.reason


# Per-seed numbers, paired (b's seed k and a's seed k share a start): a = b + d.
B5 = {0: 92.40, 1: 93.02, 2: 92.95, 3: 92.11, 4: 93.60}
NARROW = [0.4, 0.6, 0.5, 0.45, 0.55]  # mean +0.50, 95 % CI about +0.40 to +0.60
WIDE = [-1.0, 2.0, 0.5, 1.5, 0.0]  # mean +0.60, 95 % CI about -0.88 to +2.08
LOSS = [-0.5, -0.4, -0.6, -0.45, -0.55]  # mean -0.50, CI about -0.60 to -0.40


@pytest.mark.parametrize(
    ("d", "claim", "word", "direction"),
    [
        (NARROW, 2.6, "smaller than claimed", "gain"),  # above 0, wholly below the claim
        (NARROW, 0.5, "reproduced", "gain"),  # containing the claim
        (NARROW, 0.3, "reproduced", "gain"),  # above the claim
        (NARROW, None, "reproduced", "gain"),  # off the paper's benchmarks: direction only
        (WIDE, 1.0, "inconclusive", "open"),  # containing 0 and the claim
        (WIDE, 2.6, "not reproduced", "open"),  # containing 0, wholly below the claim
        (WIDE, None, "inconclusive", "open"),
        (LOSS, 2.6, "not reproduced", "no gain"),
        (LOSS, None, "not reproduced", "no gain"),
    ],
)
def test_verdicts_on_per_seed_numbers(d: list[float], claim: float | None, word: str, direction: str) -> None:
    a = {s: v + dk for (s, v), dk in zip(B5.items(), d, strict=True)}
    c = compare(a, B5, paired=True)
    v = verdict(c, claim, a=a, b=B5)
    assert (v.word, v.direction, v.claimed_gain, v.size_tested) == (word, direction, claim, claim is not None)
    assert format_diff(c) in v.reason
    if word == "inconclusive":
        # both open questions get their seeds, each the smallest n whose interval excludes 0 / the claim
        assert (
            v.seeds_for_direction is not None
            and f"{v.seeds_for_direction} seed pairs would settle the direction" in v.reason
        )
        if claim is None:
            assert v.seeds_for_size is None and "settle the size" not in v.reason
        else:
            assert v.seeds_for_size is not None and f"{v.seeds_for_size} seed pairs would settle the size" in v.reason
        assert v.seeds_needed == min(n for n in (v.seeds_for_direction, v.seeds_for_size) if n)
    else:
        assert v.seeds_needed is None and v.seeds_for_size is None


def test_the_docs_and_the_reports_statistics_line_define_the_verdicts_as_the_code() -> None:
    page = " ".join((Path(__file__).parents[1] / "docs" / "report.md").read_text().split())
    assert verdict_definitions() in page
    assert verdict_definitions() in STATS_LINE
    assert set(VERDICTS) == set(typing.get_args(typing.get_type_hints(Verdict)["word"]))
    for word in VERDICTS:
        assert f"*{word}* =" in STATS_LINE


def test_format_diff() -> None:
    c = Comparison("paired", 5, 5, 1.234, 0.4, 2.06, 0.0123, 4.0, 1.0)
    assert format_diff(c) == "+1.23 points (95 % CI +0.40 to +2.06, p = 0.012, paired over 5 seeds)"
    w = Comparison("welch", 5, 4, -0.5, -1.25, 0.25, 0.0004, 6.3, None)
    assert format_diff(w) == "-0.50 points (95 % CI -1.25 to +0.25, p < 0.001, Welch, 5 vs 4 seeds)"
    assert format_diff(compare(A, B, paired=True)) in verdict(compare(A, B, paired=True), None, a=A, b=B).reason


# ---------------------------------------------------------------------------------------------- accuracies


def test_chance_level_and_near_chance() -> None:
    assert chance_level(10) == 10.0 and chance_level(100) == 1.0
    # K=10, n=10000: SE = 0.3, threshold max(15, 10.9) = 15
    assert near_chance(14.9, 10, 10_000) and not near_chance(15.0, 10, 10_000)
    # K=10, n=100: SE = 3, threshold max(15, 19) = 19
    assert near_chance(18.9, 10, 100) and not near_chance(19.1, 10, 100)
    # K=100, n=10000: SE = 0.0995, threshold max(1.5, 1.2985) = 1.5
    assert near_chance(1.49, 100, 10_000) and not near_chance(1.5, 100, 10_000)
    # K=100, n=100: SE = 0.995, threshold max(1.5, 3.985) = 3.985
    assert near_chance(3.98, 100, 100) and not near_chance(3.99, 100, 100)
    assert not near_chance(90.0, 10, 100)


def test_binomial_margin_by_hand() -> None:
    # 1.96 * 100 * sqrt((0.90*0.10 + 0.85*0.15) / 1000) = 196 * sqrt(0.0002175) = 196 * 0.0147478812 = 2.890585
    assert binomial_margin(90.0, 85.0, 1000) == pytest.approx(2.890585, abs=1e-6)
    assert binomial_margin(85.0, 90.0, 1000) == binomial_margin(90.0, 85.0, 1000)
    # 1.0 * 100 * sqrt(2 * 0.25 / 100) = 100 * 0.0707107 = 7.07107
    assert binomial_margin(50.0, 50.0, 100, z=1.0) == pytest.approx(7.071068, abs=1e-6)
    assert binomial_margin(100.0, 0.0, 50) == 0.0
