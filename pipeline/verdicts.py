"""The verdicts on the paper's claimed gains, and the rules behind them, defined once.

``verdict`` reads a comparison of the paper's method (a) against a baseline (b) (``pipeline.stats.compare``)
into one of the ``VERDICTS``, by the ``RULES``; the report's statistics line and docs/report.md quote both
verbatim (tests/test_stats.py checks it). Direction and size are kept apart: where the paper claims a size
(``claimed_gain`` points, for its own experiment) an interval above 0 but wholly below the claim is *smaller
than claimed*, not *reproduced*; with no claimed size (None) only the direction is tested. An inconclusive
verdict carries the seeds per method at which, at the observed spread, the interval would exclude 0 (the
direction) and the claim (the size). A verdict's ``label`` is its word with what qualifies it: "inconclusive:
at ceiling", and the caveats (runs that had not converged, a bootstrap interval that disagrees).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as _sp

from pipeline.stats import Bootstrap, Comparison, Z, bound, format_diff

Word = Literal["reproduced", "smaller than claimed", "not reproduced", "inconclusive"]
Direction = Literal["gain", "no gain", "open"]

VERDICTS: dict[Word, str] = {
    "reproduced": (
        "the 95 % CI of the gain lies above 0 and its Holm-adjusted p is below 0.05, and, where a size is "
        "claimed, the CI contains the claimed gain or lies above it"
    ),
    "smaller than claimed": (
        "the gain is shown as for reproduced, but the CI lies wholly below the claimed gain: the direction is "
        "reproduced, the size is not"
    ),
    "not reproduced": "the CI lies at or below 0, or contains 0 but lies wholly below the claimed gain",
    "inconclusive": (
        "anything else: the CI contains 0 (and, where a size is claimed, the claim), or lies above 0 only before "
        "Holm's correction, or both sides sit at the ceiling or at chance (inconclusive: at ceiling / at chance); "
        "with the seeds per method that would settle the direction and the size at the observed spread"
    ),
}

# The rules the verdicts apply, stated once (the report's statistics line and docs/report.md quote them).
RULES: dict[str, str] = {
    "interval": (
        "the CI of a gain is Student-t with two sources of error: the seeds' spread, and the test set's binomial "
        "sampling error of the difference, 100·√((p_a(1-p_a) + p_b(1-p_b))/n) for n test images, which every seed "
        "shares (each is scored on the same test set) so that no number of seeds averages it away; the degrees "
        "of freedom of the sum by Satterthwaite"
    ),
    "pairing": (
        "paired t-test over the seeds when both sides have the same seeds and each seed's two runs started from "
        "the same weights and data order; Welch's t-test otherwise, naming the seeds a side lacks"
    ),
    "family": (
        "the gains tested on one data set, track and claims version are one family: their p-values are adjusted "
        "by Holm's step-down method and the verdict words use the adjusted ones"
    ),
    "bounds": (
        "a side is at the ceiling when its mean error is at most 3 test images in n (the rule of three), at "
        "chance when below max(1.5 x chance, chance + 3 binomial standard errors)"
    ),
    "convergence": (
        "a method had converged (plateaued) when, with E epochs and k = max(1, E // 5), its mean over seeds rose "
        "by at most one test set's 95 % sampling margin, 1.96·100·√(p(1-p)/n), over its last k epochs; a verdict "
        "where a side had not says so: it compares learning speed, not final accuracy"
    ),
    "bootstrap": (
        "beside the t-interval, a seeded percentile bootstrap over seeds (9,999 resamples, the test set's error "
        "drawn into each) gives a second CI of the gain and P(ours > baseline) with its CI (Agarwal et al. 2021); "
        "where its CI settles the direction differently, the verdict says so"
    ),
}


def verdict_definitions() -> str:
    """The verdicts as the report's statistics line and docs/report.md state them."""
    return "; ".join(f"*{w}* = {d}" for w, d in VERDICTS.items())


def rules_text() -> str:
    """The rules as the report's statistics line and docs/report.md state them."""
    return "; ".join(f"{k}: {d}" for k, d in RULES.items())


@dataclass(frozen=True)
class Verdict:
    """``word`` (a key of ``VERDICTS``) and why; the claimed gain it was judged against (None: direction only);
    whether the direction is settled; the seeds that would settle what is still open; the Holm-adjusted p and
    its family's size; the bound both sides sit at; the caveats that qualify it."""

    word: Word
    reason: str
    claimed_gain: float | None = None
    direction: Direction = "open"
    seeds_for_direction: int | None = None
    seeds_for_size: int | None = None
    p_adjusted: float | None = None
    family: int = 1
    bound: Literal["ceiling", "chance"] | None = None
    caveats: tuple[str, ...] = ()

    @property
    def size_tested(self) -> bool:
        return self.claimed_gain is not None

    @property
    def seeds_needed(self) -> int | None:
        """The seeds at which the verdict would first stop being inconclusive (None: not inconclusive, or never)."""
        needs = [n for n in (self.seeds_for_direction, self.seeds_for_size) if n is not None]
        return min(needs) if needs and self.word == "inconclusive" and self.bound is None else None

    @property
    def label(self) -> str:
        """The verdict in words, with what qualifies it: e.g. "inconclusive: at ceiling", or "reproduced, at 3
        epochs, before either converged: compares learning speed, not final accuracy"."""
        head = f"{self.word}: at {self.bound}" if self.bound else self.word
        return ", ".join([head, *self.caveats])


def convergence_caveat(epochs: int, unconverged: Sequence[str], sides: int = 2) -> str | None:
    """The caveat of a comparison where ``unconverged`` (the sides' names) had not plateaued."""
    if not unconverged:
        return None
    who = "either" if len(unconverged) == sides else unconverged[0]
    return f"at {epochs} epochs, before {who} converged: compares learning speed, not final accuracy"


def _direction_of(low: float, high: float) -> Direction:
    return "gain" if low > 0.0 else "no gain" if high <= 0.0 else "open"


def bootstrap_caveat(c: Comparison, boot: Bootstrap | None) -> str | None:
    """Where the bootstrap's interval settles the direction otherwise than the t-interval does."""
    if boot is None or c.ci_low is None or c.ci_high is None:
        return None
    t, bs = _direction_of(c.ci_low, c.ci_high), _direction_of(boot.ci_low, boot.ci_high)
    if t == bs:
        return None
    words = {"gain": "above 0", "no gain": "at or below 0", "open": "containing 0"}
    return (
        f"the bootstrap CI ({boot.ci_low:+.2f} to {boot.ci_high:+.2f}) disagrees: it lies {words[bs]}, the "
        f"t-interval {words[t]}"
    )


# ---------------------------------------------------------------------------------------------- seeds needed


def _half_widths(c: Comparison, a: Mapping[int, float], b: Mapping[int, float], ns: np.ndarray) -> np.ndarray:
    """CI half-widths at ``ns`` seeds per method (paired: seed pairs), at the spread observed in ``c``, the test
    set's error (which seeds do not shrink) included."""
    q, st2 = 0.5 + c.level / 2.0, c.se_test**2
    if c.test == "paired":
        assert c.sd is not None
        v = c.sd**2 / ns
        terms = v**2 / (ns - 1)
    else:
        sa, sb = (float(np.std(list(x.values()), ddof=1)) for x in (a, b))
        v = (sa**2 + sb**2) / ns
        terms = ((sa**2 / ns) ** 2 + (sb**2 / ns) ** 2) / (ns - 1)
    var = v + st2
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(terms > 0, var**2 / np.where(terms > 0, terms, 1.0), np.inf)
    return _sp.t.ppf(q, df) * np.sqrt(var)


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
    n_a, n_b = (len(a), len(b))
    if (n_a, n_b) != (c.n_a, c.n_b):
        raise ValueError(f"verdict: a/b have {n_a} and {n_b} seeds, the comparison {c.n_a} and {c.n_b}")


def _open_question(c: Comparison, what: str, value: float, need: int | None, max_seeds: int) -> str:
    unit = "seed pairs" if c.test == "paired" else "seeds per method"
    if need is not None:
        return f"about {need} {unit} would settle the {what} at the observed spread"
    if abs(c.diff - value) <= 0.0:
        return f"no number of seeds settles the {what}, as the observed difference sits exactly at {value:+.2f}"
    if Z * c.se_test >= abs(c.diff - value):
        return (
            f"no number of seeds settles the {what}: the test set's own sampling error (±{Z * c.se_test:.2f}) "
            "exceeds the distance, and only a larger test set would"
        )
    return f"more than {max_seeds} {unit} would be needed to settle the {what} at the observed spread"


# ---------------------------------------------------------------------------------------------- the verdict


def _shared_bound(c: Comparison, num_classes: int | None) -> Literal["ceiling", "chance"] | None:
    if c.n_test is None or c.mean_a is None or c.mean_b is None:
        return None
    ba, bb = bound(c.mean_a, num_classes, c.n_test), bound(c.mean_b, num_classes, c.n_test)
    return ba if ba is not None and ba == bb else None


def verdict(
    c: Comparison,
    claimed_gain: float | None,
    *,
    a: Mapping[int, float],
    b: Mapping[int, float],
    p_adjusted: float | None = None,
    family: int = 1,
    num_classes: int | None = None,
    caveats: Sequence[str | None] = (),
    max_seeds: int = 1000,
) -> Verdict:
    """The verdict (``VERDICTS``, by ``RULES``) on the claim "a beats b", and by ``claimed_gain`` points where one
    is given (the paper's experiment); without one only the direction is tested. ``p_adjusted``: the comparison's
    Holm-adjusted p in its ``family`` of gains (None: the raw p, a family of one); ``num_classes``: to tell
    whether both sides sit at chance; ``caveats``: what qualifies the verdict (None entries are dropped)."""
    _check_matches(c, a, b)
    if claimed_gain is not None and claimed_gain <= 0.0:
        raise ValueError(f"verdict: a claimed gain must be positive, got {claimed_gain:+.2f}")
    g, notes = claimed_gain, tuple(x for x in caveats if x)
    p_adj = c.p_value if p_adjusted is None else p_adjusted
    holm_p = f", Holm-adjusted {_p(p_adj)} over {family} gains" if family > 1 and p_adj is not None else ""
    fd = format_diff(c) + holm_p
    scope = "direction only: no size claimed here" if g is None else f"the claimed {g:+.2f}"

    def out(word: Word, reason: str, direction: Direction, dir_n=None, size_n=None, at=None) -> Verdict:
        return Verdict(word, reason, g, direction, dir_n, size_n, p_adj, family, at, notes)

    if c.ci_low is None or c.ci_high is None:
        return out("inconclusive", f"{fd}; at least 2 seeds per method are needed to estimate the spread.", "open")
    if (at := _shared_bound(c, num_classes)) is not None:
        where = "3 or fewer errors in" if at == "ceiling" else "chance on"
        return out("inconclusive", f"{fd}: both sides at {where} the {c.n_test} test images; the test set cannot "
                   f"rank them ({scope}).", "open", at=at)  # fmt: skip
    lo, hi = c.ci_low, c.ci_high
    alpha = 1.0 - c.level
    if lo > 0.0 and p_adj is not None and p_adj >= alpha:
        dir_n = _seeds_to_exclude(c, 0.0, a, b, max_seeds)
        return out("inconclusive", f"{fd}: above 0, but not after Holm's correction over the {family} gains tested "
                   f"({scope}).", "open", dir_n)  # fmt: skip
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


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
