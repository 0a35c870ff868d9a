"""Statistics the report uses to compare methods over training seeds, each seed's run scored on one test set.

Each method is trained with several seeds; its score is the per-seed test top-1 (percent). ``summarize`` gives
mean, sample standard deviation (ddof=1) and the Student-t confidence interval of the mean. ``compare`` gives
a minus b, the rules of ``RULES`` (``pipeline.verdicts``, where the verdicts are defined): a paired t-test over
the seeds when both sides have the same seeds and started alike (Student 1908), else Welch's unequal-variance
t-test with Welch-Satterthwaite degrees of freedom (Welch 1947); the test set's binomial sampling error of the
difference is added to the seeds' standard error (``sampling_se``), with the degrees of freedom of the sum by
Satterthwaite (the test term known: infinite df). Intervals are two-sided at ``LEVEL``. Zero spread never
yields NaN: a zero standard error gives the interval [diff, diff] and p = 1 (diff = 0) or 0.

``bootstrap`` is the second view: a seeded percentile bootstrap over seeds of the gain and of the probability
of improvement P(a > b) (Agarwal et al. 2021), the test set's error drawn into each resample. ``holm`` adjusts
a family of p-values (Holm 1979); ``plateau`` says whether a learning curve had stopped rising; ``bound``
whether an accuracy sits at the ceiling or at chance; ``tuning_curve`` is a search's expected best after k
trials (Dodge et al. 2019) with a bootstrap band, and whether it had flattened.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as _sp

LEVEL = 0.95
Z = 1.96  # the two-sided 95 % normal quantile of the binomial margins
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0


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
    """a minus b. ``sd``: the paired differences' std (paired only); ``se_test``: the test set's standard error of
    the difference (points; 0.0 when not modelled) inside the interval; ``only_a``/``only_b``: seeds one side
    has and the other lacks (then the test is Welch's)."""

    test: Literal["paired", "welch"]
    n_a: int
    n_b: int
    diff: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    df: float | None
    sd: float | None
    se_test: float = 0.0
    n_test: int | None = None
    mean_a: float | None = None
    mean_b: float | None = None
    only_a: tuple[int, ...] = ()
    only_b: tuple[int, ...] = ()
    level: float = LEVEL


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


def sampling_se(mean_a: float, mean_b: float, n_test: int | None) -> float:
    """100 · √((q_a(1-q_a) + q_b(1-q_b)) / n), q = mean accuracy / 100: the standard error (points) a difference
    of two accuracies measured on one set of n test images carries from the sampling of that set, the two
    classifiers' errors taken as independent (conservative: correlated errors make it smaller). Every seed is
    scored on the same test set, so this error is shared by all seeds and no number of seeds averages it away.
    0.0 when ``n_test`` is None (not modelled)."""
    if n_test is None:
        return 0.0
    if n_test < 1:
        raise ValueError(f"n_test must be >= 1, got {n_test}")
    qa, qb = (min(1.0, max(0.0, m / 100.0)) for m in (mean_a, mean_b))
    return 100.0 * math.sqrt((qa * (1.0 - qa) + qb * (1.0 - qb)) / n_test)


def _with_test_error(var_seeds: float, df_terms: float, se_test: float, df_plain: float) -> tuple[float, float]:
    """(se, df) of a difference whose variance is the seeds' ``var_seeds`` (df_terms = Σ v_i² / df_i of its
    parts, Satterthwaite) plus the test set's se_test² (known, infinite df)."""
    var = var_seeds + se_test**2
    if var == 0.0:
        return 0.0, df_plain
    return math.sqrt(var), (var**2 / df_terms if df_terms > 0.0 else math.inf)


def _finish(test, a, b, diff, se, df, sd, se_test, n_test, level, only=((), ())) -> Comparison:
    (ma, _), (mb, _) = _mean_std(list(a)), _mean_std(list(b))
    low, high = (diff, diff) if se == 0.0 else _interval(diff, se, df, level)
    return Comparison(test, len(a), len(b), diff, low, high, _p_two_sided(diff, se, df), df, sd,
                      se_test, n_test, ma, mb, *only, level=level)  # fmt: skip


def _compare_paired(a: Mapping[int, float], b: Mapping[int, float], n_test: int | None, level: float) -> Comparison:
    seeds = sorted(a)
    xa, xb = _check([a[s] for s in seeds], "a"), _check([b[s] for s in seeds], "b")
    diffs = _check([x - y for x, y in zip(xa, xb, strict=True)], "paired differences")
    n = len(diffs)
    diff, sd = _mean_std(diffs)
    se_test = sampling_se(_mean_std(xa)[0], _mean_std(xb)[0], n_test)
    if n < 2:
        return Comparison("paired", n, n, diff, None, None, None, None, None, se_test, n_test, xa[0], xb[0])
    v = sd**2 / n
    se, df = _with_test_error(v, v**2 / (n - 1), se_test, float(n - 1))
    return _finish("paired", xa, xb, diff, se, df, sd, se_test, n_test, level)


def _compare_welch(a: Mapping[int, float], b: Mapping[int, float], n_test: int | None, level: float) -> Comparison:
    xa, xb = _check(list(a.values()), "a"), _check(list(b.values()), "b")
    (ma, sa), (mb, sb) = _mean_std(xa), _mean_std(xb)
    n_a, n_b, diff = len(xa), len(xb), ma - mb
    se_test = sampling_se(ma, mb, n_test)
    only = (tuple(sorted(set(a) - set(b))), tuple(sorted(set(b) - set(a))))
    if n_a < 2 or n_b < 2:
        return Comparison("welch", n_a, n_b, diff, None, None, None, None, None, se_test, n_test, ma, mb, *only)
    va_n, vb_n = sa**2 / n_a, sb**2 / n_b
    terms = va_n**2 / (n_a - 1) + vb_n**2 / (n_b - 1)
    se, df = _with_test_error(va_n + vb_n, terms, se_test, float(n_a + n_b - 2))
    return _finish("welch", xa, xb, diff, se, df, None, se_test, n_test, level, only)


def same_start(a: Mapping[int, Mapping[str, object]], b: Mapping[int, Mapping[str, object]]) -> bool:
    """Whether two seed -> pairing-digest maps (``init``, ``data_order``, recorded at training) pair up: every
    common seed's two runs saw the same data order and began from the same backbone weights."""
    common = set(a) & set(b)
    return bool(common) and all(
        a[s].get(k) is not None and a[s].get(k) == b[s].get(k) for s in common for k in ("data_order", "init")
    )


def compare(
    a: Mapping[int, float], b: Mapping[int, float], *, paired: bool, n_test: int | None, level: float = LEVEL
) -> Comparison:
    """a minus b over seed -> value maps, each scored on the same ``n_test`` test images (None: the test set's
    error not modelled): a paired t-test when ``paired`` and both have the same seeds, else Welch's t-test
    (``only_a``/``only_b`` then name the seeds one side lacks)."""
    if paired and set(a) == set(b):
        return _compare_paired(a, b, n_test, level)
    return _compare_welch(a, b, n_test, level)


def format_diff(c: Comparison) -> str:
    """E.g. ``+1.23 points (95 % CI +0.40 to +2.06, p = 0.012, paired over 5 seeds)``."""
    if c.test == "paired":
        design = f"paired over {c.n_a} seed{'s' if c.n_a != 1 else ''}"
    else:
        design = f"Welch, {c.n_a} vs {c.n_b} seeds"
        missing = [f"seed{'s' * (len(x) > 1)} {', '.join(map(str, x))} only in {w}"
                   for x, w in ((c.only_a, "the first"), (c.only_b, "the second")) if x]  # fmt: skip
        design += f" (unpaired: {'; '.join(missing)})" if missing else ""
    if c.ci_low is None or c.ci_high is None or c.p_value is None:
        return f"{c.diff:+.2f} points (no CI, {design})"
    p = "p < 0.001" if c.p_value < 0.001 else f"p = {c.p_value:.3f}"
    return f"{c.diff:+.2f} points ({c.level * 100:g} % CI {c.ci_low:+.2f} to {c.ci_high:+.2f}, {p}, {design})"


# ---------------------------------------------------------------------------------------------- second views


@dataclass(frozen=True)
class Bootstrap:
    """The percentile bootstrap's interval of the gain, and P(a > b) with its interval."""

    ci_low: float
    ci_high: float
    poi: float
    poi_low: float
    poi_high: float
    resamples: int
    seed: int
    level: float = LEVEL


def improvement_probability(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(a run of x beats a run of y) over every pair, ties counted half (Agarwal et al. 2021, rliable), along the
    last axis: x (..., n_a), y (..., n_b) -> (...)."""
    d = x[..., :, None] - y[..., None, :]
    return (d > 0).mean(axis=(-2, -1)) + 0.5 * (d == 0).mean(axis=(-2, -1))


def bootstrap(
    c: Comparison,
    a: Mapping[int, float],
    b: Mapping[int, float],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Bootstrap | None:
    """Resample the seeds with replacement (paired: the seed pairs together; Welch: each side on its own), and
    add to each resample one normal draw of the test set's error (``c.se_test``, shared by every run of a side);
    the ``c.level`` percentile interval of the mean gain, and P(a > b) (``improvement_probability``, its point
    value from the runs as measured) with its interval. None with fewer than 2 seeds on a side."""
    if c.n_a < 2 or c.n_b < 2:
        return None
    rng = np.random.default_rng(seed)
    if c.test == "paired":
        seeds = sorted(a)
        xa, xb = np.array([a[s] for s in seeds], float), np.array([b[s] for s in seeds], float)
        idx = rng.integers(0, len(seeds), (resamples, len(seeds)))
        ra, rb = xa[idx], xb[idx]
    else:
        xa, xb = np.array(list(a.values()), float), np.array(list(b.values()), float)
        ra = xa[rng.integers(0, len(xa), (resamples, len(xa)))]
        rb = xb[rng.integers(0, len(xb), (resamples, len(xb)))]
    shift = rng.normal(0.0, c.se_test, resamples) if c.se_test > 0.0 else np.zeros(resamples)
    q = [(1.0 - c.level) / 2.0, (1.0 + c.level) / 2.0]
    lo, hi = np.quantile(ra.mean(axis=1) - rb.mean(axis=1) + shift, q)
    p_lo, p_hi = np.quantile(improvement_probability(ra + shift[:, None], rb), q)
    poi = float(improvement_probability(xa, xb))
    return Bootstrap(float(lo), float(hi), poi, float(p_lo), float(p_hi), resamples, seed, c.level)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values of a family (Holm 1979): sorted ascending, the i-th (from 0) of m is
    multiplied by m - i, made non-decreasing and capped at 1; None (no test) stays None and is not counted."""
    order = sorted((i for i, p in enumerate(p_values) if p is not None), key=lambda i: p_values[i])  # type: ignore[arg-type,return-value]
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * float(p_values[i])))  # type: ignore[arg-type]
        out[i] = running
    return out


# ---------------------------------------------------------------------------------------------- curves, bounds


@dataclass(frozen=True)
class Plateau:
    """The end of a method's learning curves: over the last ``k`` of ``epochs`` epochs the mean over seeds rose by
    ``gain`` points; ``noise`` is one test set's 95 % sampling margin at the final accuracy."""

    epochs: int
    k: int
    gain: float | None
    noise: float

    @property
    def converged(self) -> bool:
        return self.gain is not None and self.gain <= self.noise


def plateau(curves: Mapping[int, Sequence[float]], n_eval: int) -> Plateau:
    """``curves``: seed -> the per-epoch top-1 (%) on the ``n_eval`` images each epoch was scored on. With E
    epochs, k = max(1, E // 5); plateaued when the mean over seeds of (top-1 at E minus top-1 at E - k) is at
    most Z · 100 · √(p(1-p)/n_eval), p the mean final top-1 (one test set's sampling margin). One epoch: no
    curve, never plateaued."""
    if not curves or n_eval < 1:
        raise ValueError("plateau: no curves, or no evaluation images")
    epochs = min(len(c) for c in curves.values())
    k = max(1, epochs // 5)
    final = [float(c[epochs - 1]) for c in curves.values()]
    p = min(1.0, max(0.0, math.fsum(final) / len(final) / 100.0))
    noise = Z * 100.0 * math.sqrt(p * (1.0 - p) / n_eval)
    if epochs <= k:
        return Plateau(epochs, k, None, noise)
    gains = [float(c[epochs - 1]) - float(c[epochs - 1 - k]) for c in curves.values()]
    return Plateau(epochs, k, math.fsum(gains) / len(gains), noise)


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


def at_ceiling(acc: float, n: int) -> bool:
    """Accuracy (percent) at the ceiling: its error 100 - acc is at most 300 / n percent, i.e. 3 of n images (the
    rule of three: 3/n is the 95 % upper bound of an error rate of which none was seen in n trials)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return 100.0 - acc <= 300.0 / n


def bound(acc: float, num_classes: int | None, n: int) -> Literal["ceiling", "chance"] | None:
    """Where a mean accuracy sits against the bounds of the scale: ``at_ceiling``, ``near_chance`` (not tested
    without ``num_classes``), or None."""
    if at_ceiling(acc, n):
        return "ceiling"
    return "chance" if num_classes is not None and near_chance(acc, num_classes, n) else None


def binomial_margin(p1: float, p2: float, n: int, z: float = Z) -> float:
    """z · 100 · √(q1(1-q1)/n + q2(1-q2)/n), q = p/100: the noise (percent points) of the difference of two
    accuracies p1, p2 (percent) measured on the same n held-out images, treated as independent (conservative)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return z * sampling_se(p1, p2, n)


# ---------------------------------------------------------------------------------------------- tuning curves


@dataclass(frozen=True)
class TuningCurve:
    """The expected best of k trials, k = 1..n (``expected``), with its ``level`` band (``low``, ``high``),
    from ``n`` trial scores (percent), and whether it had flattened at n (``flattened``)."""

    n: int
    expected: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    half: int  # ⌈n/2⌉: the budget the last doubling started from
    gain: float | None  # expected[n] - expected[half]; None below 2 trials
    margin: float | None  # the held-out margin the gain is held against
    resamples: int
    seed: int
    level: float = LEVEL

    @property
    def flattened(self) -> bool | None:
        """Doubling the trials from ⌈n/2⌉ to n gained no more than the held-out margin; None below 2 trials."""
        return None if self.gain is None or self.margin is None else self.gain <= self.margin


def _max_weights(n: int, ks: Sequence[int]) -> np.ndarray:
    """(len(ks), n): the weight of the i-th smallest of n scores in the expected max of k draws with replacement,
    (i/n)^k - ((i-1)/n)^k (Dodge et al. 2019, eq. 1)."""
    i = np.arange(1, n + 1, dtype=float)
    k = np.asarray(ks, dtype=float)[:, None]
    return (i / n) ** k - ((i - 1) / n) ** k


def expected_max(scores: Sequence[float], k: int) -> float:
    """Dodge et al.'s expected best of ``k`` trials drawn with replacement from ``scores`` (their empirical
    distribution): Σ_i v_(i) [(i/n)^k - ((i-1)/n)^k], v sorted ascending."""
    v = np.sort(np.asarray(_check(scores, "expected_max"), float))
    return float(_max_weights(len(v), [k])[0] @ v)


def tuning_curve(
    scores: Sequence[float],
    n_val: int,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = LEVEL,
) -> TuningCurve:
    """``scores``: each trial's held-out top-1 (percent) on ``n_val`` images. The expected best after k = 1..n
    trials (``expected_max``) with a seeded percentile bootstrap band (the trials resampled with replacement,
    the curve recomputed on each resample); flattened when the expected best at n exceeds that at ⌈n/2⌉ by no
    more than ``binomial_margin`` of the two on ``n_val`` images -- the margin a searched setting must beat to
    be adopted (``pipeline.tune.decide``)."""
    v = np.asarray(_check(scores, "tuning_curve"), float)
    n, ks = len(v), list(range(1, len(v) + 1))
    w = _max_weights(n, ks)
    curve = w @ np.sort(v)
    boot = np.sort(v[np.random.default_rng(seed).integers(0, n, (resamples, n))], axis=1) @ w.T
    low, high = np.quantile(boot, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], axis=0)
    half = math.ceil(n / 2)
    gain = margin = None
    if n >= 2:
        gain = float(curve[n - 1] - curve[half - 1])
        margin = binomial_margin(float(curve[n - 1]), float(curve[half - 1]), n_val)
    return TuningCurve(
        n,
        tuple(float(x) for x in curve),
        tuple(float(x) for x in low),
        tuple(float(x) for x in high),
        half,
        gain,
        margin,
        resamples,
        seed,
        level,
    )
