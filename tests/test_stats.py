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
    Comparison,
    binomial_margin,
    bootstrap,
    chance_level,
    compare,
    expected_max,
    format_diff,
    holm,
    near_chance,
    plateau,
    sampling_se,
    summarize,
    tuning_curve,
)
from pipeline.verdicts import (
    RULES,
    VERDICTS,
    Verdict,
    bootstrap_caveat,
    convergence_caveat,
    rules_text,
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
    c = compare(A, B, paired=True, n_test=None)
    assert (c.test, c.n_a, c.n_b) == ("paired", 5, 5)
    assert c.diff == pytest.approx(np.mean(xa - xb), rel=1e-12)
    assert c.sd == pytest.approx(np.std(xa - xb, ddof=1), rel=1e-12)
    assert c.df == pytest.approx(ref.df)
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert (c.ci_low, c.ci_high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))


def test_unequal_seed_sets_are_compared_by_welch_naming_the_missing_seeds() -> None:
    """The issue's case: ours {95, 96, 70} vs {90, 91}: a paired test over the 2 shared seeds would drop ours'
    worst seed and say "reproduced"; Welch's test over all five runs names the seed the baseline lacks."""
    a, b = {0: 95.0, 1: 96.0, 2: 70.0}, {0: 90.0, 1: 91.0}
    c = compare(a, b, paired=True, n_test=1000)
    xa, xb = list(a.values()), list(b.values())
    assert (c.test, c.n_a, c.n_b, c.only_a, c.only_b) == ("welch", 3, 2, (2,), ())
    assert c.diff == pytest.approx(np.mean(xa) - np.mean(xb))
    v = verdict(c, None, a=a, b=b, num_classes=10)
    assert v.word == "inconclusive" and "unpaired: seed 2 only in the first" in v.reason
    # the same seeds on both sides are paired, matched by seed whatever the insertion order
    r = {s: B[s] for s in reversed(sorted(B))}
    assert compare(A, r, paired=True, n_test=None) == compare(A, B, paired=True, n_test=None)


def test_compare_welch_matches_ttest_ind() -> None:
    xa, xb = np.array(list(A.values())), np.array(list(B_WELCH.values()))
    ref = sp.ttest_ind(xa, xb, equal_var=False)
    ci = ref.confidence_interval(confidence_level=LEVEL)
    c = compare(A, B_WELCH, paired=False, n_test=None)
    assert (c.test, c.n_a, c.n_b, c.sd) == ("welch", 5, 4, None)
    assert c.diff == pytest.approx(xa.mean() - xb.mean(), rel=1e-12)
    assert c.df == pytest.approx(ref.df, rel=1e-12)
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert (c.ci_low, c.ci_high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))


def test_zero_spread_gives_no_nan() -> None:
    b = {0: 93.25, 1: 94.5, 2: 92.75}
    a = {s: v + 1.5 for s, v in b.items()}  # every paired difference exactly 1.5
    c = compare(a, b, paired=True, n_test=None)
    _no_nan(c)
    assert (c.diff, c.ci_low, c.ci_high, c.p_value, c.sd) == (1.5, 1.5, 1.5, 0.0, 0.0)
    same = compare(b, b, paired=True, n_test=None)
    _no_nan(same)
    assert (same.diff, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)

    w = compare({0: 94.1, 1: 94.1, 2: 94.1}, {5: 93.1, 6: 93.1, 7: 93.1, 8: 93.1}, paired=False, n_test=None)
    _no_nan(w)
    assert w.ci_low == w.ci_high == w.diff == pytest.approx(1.0)
    assert (w.p_value, w.df) == (0.0, 5.0)
    w0 = compare({0: 93.1, 1: 93.1}, {5: 93.1, 6: 93.1}, paired=False, n_test=None)
    _no_nan(w0)
    assert (w0.diff, w0.ci_low, w0.ci_high, w0.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert verdict(c, 1.0, a=a, b=b).word == "reproduced"


def test_one_seed_gives_no_ci_and_an_inconclusive_verdict() -> None:
    a, b = {0: 94.0}, {0: 93.0}
    c = compare(a, b, paired=True, n_test=1000)
    assert (c.n_a, c.diff, c.ci_low, c.ci_high, c.p_value, c.df) == (1, 1.0, None, None, None, None)
    v = verdict(c, 1.0, a=a, b=b)
    assert (v.word, v.seeds_needed) == ("inconclusive", None)
    assert "at least 2 seeds" in v.reason and "+1.00 points" in v.reason
    assert bootstrap(c, a, b) is None

    w = compare({0: 94.0}, B_WELCH, paired=False, n_test=None)
    assert (w.n_a, w.n_b, w.ci_low, w.p_value) == (1, 4, None, None)
    assert verdict(w, None, a={0: 94.0}, b=B_WELCH).word == "inconclusive"


# ---------------------------------------------------------------------------------------------- the test set's noise


def _model_interval(diffs_or_sides, se_test: float, *, paired: bool) -> tuple[float, float, float]:
    """(low, high, p) by hand: scipy's t-test gives the seeds' standard error and df; the test set's variance
    is added, the df of the sum by Satterthwaite."""
    if paired:
        a, b = diffs_or_sides
        ref = sp.ttest_rel(a, b)
        se_seeds, df_seeds = (np.mean(a) - np.mean(b)) / ref.statistic, ref.df
        terms = se_seeds**4 / df_seeds
    else:
        a, b = diffs_or_sides
        ref = sp.ttest_ind(a, b, equal_var=False)
        va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
        se_seeds, terms = math.sqrt(va + vb), va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)
    se = math.sqrt(se_seeds**2 + se_test**2)
    df = se**4 / terms
    d = np.mean(a) - np.mean(b)
    half = sp.t.ppf(0.975, df) * se
    return d - half, d + half, 2 * sp.t.sf(abs(d) / se, df)


@pytest.mark.parametrize("paired", [True, False])
def test_the_test_sets_sampling_error_enters_every_interval(paired: bool) -> None:
    b = B if paired else B_WELCH
    c = compare(A, b, paired=paired, n_test=1000)
    se = 100 * math.sqrt(
        (np.mean(list(A.values())) / 100 * (1 - np.mean(list(A.values())) / 100)
         + np.mean(list(b.values())) / 100 * (1 - np.mean(list(b.values())) / 100)) / 1000
    )  # fmt: skip
    assert c.se_test == pytest.approx(se) == sampling_se(c.mean_a, c.mean_b, 1000)
    xa = [A[s] for s in sorted(A)]
    xb = [b[s] for s in sorted(b)]
    low, high, p = _model_interval((xa, xb), se, paired=paired)
    assert (c.ci_low, c.ci_high, c.p_value) == (pytest.approx(low), pytest.approx(high), pytest.approx(p))
    seeds_only = compare(A, b, paired=paired, n_test=None)
    assert c.ci_high - c.ci_low > seeds_only.ci_high - seeds_only.ci_low  # wider than the seeds alone


def test_a_constant_one_image_gap_is_not_reproduced_at_p_below_0001() -> None:
    """The issue's case: 100.0 vs 99.9 on every seed, 1,000 test images. The seeds alone say CI +0.10 to +0.10,
    p < 0.001; with the test set's error the interval contains 0, and both sides sit at the ceiling."""
    a, b = {s: 100.0 for s in range(3)}, {s: 99.9 for s in range(3)}
    assert compare(a, b, paired=True, n_test=None).p_value == 0.0  # the old, overconfident answer
    c = compare(a, b, paired=True, n_test=1000)
    assert c.ci_low < 0 < c.ci_high and c.p_value > 0.05 and c.df == math.inf
    low, high = 0.1 - 1.959964 * 0.0999500, 0.1 + 1.959964 * 0.0999500  # normal: the test term has infinite df
    assert (c.ci_low, c.ci_high) == (pytest.approx(low, abs=1e-5), pytest.approx(high, abs=1e-5))
    v = verdict(c, None, a=a, b=b, num_classes=10)
    assert (v.word, v.bound, v.label) == ("inconclusive", "ceiling", "inconclusive: at ceiling")
    assert v.seeds_needed is None
    # one side below the ceiling: not "at ceiling"; a gap the test set cannot resolve says a larger set would
    b2 = {s: 99.0 for s in range(3)}
    v2 = verdict(compare(a, b2, paired=True, n_test=1000), None, a=a, b=b2, num_classes=10)
    assert v2.bound is None and v2.word == "reproduced"  # +1.0 against a margin of 0.62
    a3, b3 = {s: 98.0 for s in range(3)}, {s: 97.8 for s in range(3)}
    v3 = verdict(compare(a3, b3, paired=True, n_test=1000), None, a=a3, b=b3, num_classes=10)
    assert v3.word == "inconclusive" and "only a larger test set would" in v3.reason


def test_both_sides_at_the_ceiling_or_at_chance_are_inconclusive_not_not_reproduced() -> None:
    """The issue's case: 100 ± 0 vs 100 ± 0 said "not reproduced"; both at chance likewise."""
    top = {s: 100.0 for s in range(3)}
    c = compare(top, top, paired=True, n_test=1000)
    v = verdict(c, None, a=top, b=top, num_classes=10)
    assert (v.word, v.label, v.direction) == ("inconclusive", "inconclusive: at ceiling", "open")
    low = {0: 10.1, 1: 9.8, 2: 10.4}
    low2 = {0: 10.0, 1: 10.3, 2: 9.6}
    v = verdict(compare(low, low2, paired=True, n_test=1000), None, a=low, b=low2, num_classes=10)
    assert v.label == "inconclusive: at chance"
    assert verdict(compare(top, top, paired=True, n_test=1000), None, a=top, b=top).word == "inconclusive"


# ---------------------------------------------------------------------------------------------- many claims


def test_holm_matches_the_step_down_rule_by_hand() -> None:
    assert holm([0.01, 0.04, 0.03, None, 0.2]) == pytest.approx([0.04, 0.09, 0.09, None, 0.2])
    assert holm([0.5, 0.6]) == [pytest.approx(1.0), pytest.approx(1.0)]
    assert holm([]) == [] and holm([0.02]) == [0.02]


def test_holm_turns_a_verdict_that_holds_alone_into_inconclusive_in_its_family() -> None:
    """A gain with raw p ≈ 0.03 is "reproduced" on its own; tested with 4 others its Holm-adjusted p is above
    0.05, and the verdict words say inconclusive, naming the correction."""
    a = {s: 80.0 + x for s, x in enumerate([0.0, 2.1, 1.2, 2.7, 1.5])}
    b = {s: 78.5 + x for s, x in enumerate([0.4, 1.0, 1.9, 1.1, 0.9])}
    c = compare(a, b, paired=True, n_test=None)
    assert 0.01 < c.p_value < 0.05 and c.ci_low > 0
    alone = verdict(c, None, a=a, b=b)
    assert alone.word == "reproduced"
    family = holm([c.p_value, 0.2, 0.3, 0.4, 0.5])
    v = verdict(c, None, a=a, b=b, p_adjusted=family[0], family=5)
    assert family[0] >= 0.05 and v.word == "inconclusive" and v.p_adjusted == family[0]
    assert "not after Holm's correction over the 5 gains tested" in v.reason and "Holm-adjusted p = " in v.reason


# ---------------------------------------------------------------------------------------------- bootstrap


@pytest.mark.parametrize("paired", [True, False])
def test_the_bootstrap_interval_matches_scipys_percentile_bootstrap(paired: bool) -> None:
    """Without the test set's error our resampling is scipy.stats.bootstrap's percentile method: the two
    intervals agree to Monte-Carlo error; the probability of improvement is rliable's, ties counted half."""
    b = B if paired else B_WELCH
    c = compare(A, b, paired=paired, n_test=None)
    ours = bootstrap(c, A, b)
    xa, xb = np.array([A[s] for s in sorted(A)]), np.array([b[s] for s in sorted(b)])
    ref = sp.bootstrap((xa, xb), lambda x, y, axis: x.mean(axis) - y.mean(axis), paired=paired, vectorized=True,
                       method="percentile", n_resamples=9999, rng=np.random.default_rng(1))  # fmt: skip
    assert ours.ci_low == pytest.approx(ref.confidence_interval.low, abs=0.08)
    assert ours.ci_high == pytest.approx(ref.confidence_interval.high, abs=0.08)
    pairs = [(x > y) + 0.5 * (x == y) for x in xa for y in xb]
    assert ours.poi == pytest.approx(np.mean(pairs))
    assert ours.poi_low <= ours.poi <= ours.poi_high
    assert bootstrap(c, A, b) == ours  # seeded: the same numbers every run


def test_a_t_bootstrap_disagreement_is_said_in_the_verdict() -> None:
    """Five positive but uneven paired gains: the t-interval (4 df) reaches below 0, the percentile bootstrap's
    does not (it is narrower at 5 seeds). The verdict follows the t-interval and says the bootstrap disagrees."""
    a = {s: 80.0 + x for s, x in enumerate([0.2, 1.5, 0.3, 2.0, 0.1])}
    b = {s: 80.0 for s in range(5)}
    c = compare(a, b, paired=True, n_test=None)
    boot = bootstrap(c, a, b)
    assert c.ci_low < 0 < c.ci_high and boot.ci_low > 0
    note = bootstrap_caveat(c, boot)
    interval = f"(+{boot.ci_low:.2f} to +{boot.ci_high:.2f})"
    assert note == f"the bootstrap CI {interval} disagrees: it lies above 0, the t-interval containing 0"
    v = verdict(c, None, a=a, b=b, caveats=[note])
    assert v.word == "inconclusive" and v.label == f"inconclusive, {note}"
    agree = compare(A, B, paired=True, n_test=None)
    assert bootstrap_caveat(agree, bootstrap(agree, A, B)) is None


# ---------------------------------------------------------------------------------------------- convergence


def test_plateau_rule_by_hand() -> None:
    """E = 10 epochs, k = 2: a rise of 0.5 point over the last 2 epochs at 90 % on 1,000 images (margin
    1.96 · 100 · √(0.9 · 0.1 / 1000) = 1.859) has plateaued; a rise of 3 points has not; 3 epochs (k = 1)."""
    flat = {s: [50, 70, 80, 85, 88, 89, 89.5, 89.5, 89.6, 90.0 + s * 0.0] for s in range(3)}
    p = plateau(flat, 1000)
    assert (p.epochs, p.k) == (10, 2) and p.gain == pytest.approx(0.5) and p.noise == pytest.approx(1.8594, abs=1e-3)
    assert p.converged
    rising = {s: [40, 60, 70, 75, 80, 82, 84, 86, 87, 90.0] for s in range(3)}
    assert not plateau(rising, 1000).converged
    short = plateau({0: [39.5, 67.6, 88.7], 1: [41.8, 79.4, 93.0]}, 1000)
    assert (short.k, short.converged) == (1, False) and short.gain == pytest.approx((21.1 + 13.6) / 2)
    assert plateau({0: [50.0]}, 1000).gain is None and not plateau({0: [50.0]}, 1000).converged


def test_a_pair_that_had_not_converged_says_so_in_the_verdict_words() -> None:
    note = convergence_caveat(3, ["ours", "ResNet"])
    assert note == "at 3 epochs, before either converged: compares learning speed, not final accuracy"
    assert convergence_caveat(3, ["ResNet"]) == (
        "at 3 epochs, before ResNet converged: compares learning speed, not final accuracy"
    )
    assert convergence_caveat(3, []) is None
    c = compare(A, B, paired=True, n_test=None)
    v = verdict(c, None, a=A, b=B, caveats=[note, None])
    assert v.word == "reproduced" and v.label == f"reproduced, {note}" and v.caveats == (note,)


# ---------------------------------------------------------------------------------------------- verdict


def test_verdict_turns_reproduced_as_seeds_are_added() -> None:
    rng = np.random.default_rng(3)
    base = 92.0 + 0.5 * rng.standard_normal(40)
    gain = 1.0 + 1.0 * rng.standard_normal(40)  # true gain +1.0 at spread 1.0
    words = []
    for n in range(2, 41):
        a, b = _seeded(base[:n] + gain[:n]), _seeded(base[:n])
        words.append(verdict(compare(a, b, paired=True, n_test=None), None, a=a, b=b).word)
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
        return verdict(compare(a, b, paired=True, n_test=None), claim, a=a, b=b)

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
        return verdict(compare(a, b, paired=False, n_test=None), None, a=a, b=b)

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
    v = verdict(compare(a, b, paired=True, n_test=None), None, a=a, b=b)
    assert (v.word, v.seeds_needed) == ("inconclusive", None)
    assert "no number of seeds" in v.reason
    a2 = {0: 93.0, 1: 92.0, 2: 92.75}  # mean +0.083 at sd ~1: far more than 10 pairs
    v2 = verdict(compare(a2, b, paired=True, n_test=None), None, a=a2, b=b, max_seeds=10)
    assert (v2.word, v2.seeds_needed) == ("inconclusive", None)
    assert "more than 10" in v2.reason
    assert verdict(compare(a2, b, paired=True, n_test=None), None, a=a2, b=b).seeds_needed is not None


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
    c = compare(a, B5, paired=True, n_test=None)
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
    for rule in RULES.values():
        assert rule in page, rule
    assert rules_text() in STATS_LINE
    assert set(VERDICTS) == set(typing.get_args(typing.get_type_hints(Verdict)["word"]))
    for word in VERDICTS:
        assert f"*{word}* =" in STATS_LINE


def test_format_diff() -> None:
    c = Comparison("paired", 5, 5, 1.234, 0.4, 2.06, 0.0123, 4.0, 1.0)
    assert format_diff(c) == "+1.23 points (95 % CI +0.40 to +2.06, p = 0.012, paired over 5 seeds)"
    w = Comparison("welch", 5, 4, -0.5, -1.25, 0.25, 0.0004, 6.3, None)
    assert format_diff(w) == "-0.50 points (95 % CI -1.25 to +0.25, p < 0.001, Welch, 5 vs 4 seeds)"
    c = compare(A, B, paired=True, n_test=None)
    assert format_diff(c) in verdict(c, None, a=A, b=B).reason


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


# ---------------------------------------------------------------------------------------------- tuning curves


def _brute_expected_max(scores: list[float], k: int) -> float:
    """The mean of max over every ordered k-tuple drawn with replacement: the definition, enumerated."""
    import itertools

    tuples = list(itertools.product(scores, repeat=k))
    return sum(max(t) for t in tuples) / len(tuples)


@pytest.mark.parametrize("scores", [[50.0, 60.0, 55.0], [10.0, 10.0, 90.0, 40.0], [70.0]])
def test_expected_max_is_dodges_estimator(scores: list[float]) -> None:
    for k in range(1, 5):
        assert expected_max(scores, k) == pytest.approx(_brute_expected_max(scores, k), abs=1e-9)
    assert expected_max(scores, 1) == pytest.approx(sum(scores) / len(scores))


def test_tuning_curve_band_and_the_flattened_rule() -> None:
    climbing = [20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0]
    c = tuning_curve(climbing, n_val=2000)
    assert c.n == 8 and c.half == 4
    assert list(c.expected) == sorted(c.expected)  # more trials never lower the expected best
    assert c.expected == tuple(expected_max(climbing, k) for k in range(1, 9))
    assert all(lo <= hi for lo, hi in zip(c.low, c.high, strict=True)) and max(c.high) <= max(climbing)
    assert c.gain == pytest.approx(c.expected[7] - c.expected[3])
    assert c.margin == pytest.approx(binomial_margin(c.expected[7], c.expected[3], 2000))
    assert c.flattened is False  # +7 points from 4 to 8 trials on 2,000 images: beyond the noise
    assert tuning_curve(climbing, n_val=2000) == c  # seeded
    # the same spread on 20 held-out images is within their noise: flattened
    assert tuning_curve(climbing, n_val=20).flattened is True
    flat = tuning_curve([80.0, 80.5, 79.5, 80.2, 80.1, 79.9, 80.3, 80.0], n_val=1000)
    assert flat.flattened is True and flat.gain < flat.margin
    one = tuning_curve([55.0], n_val=100)
    assert one.flattened is None and one.gain is None and one.expected == (55.0,)
    with pytest.raises(ValueError, match="no values"):
        tuning_curve([], n_val=100)
