"""The report's search section (``tune.methods``): per search -- methods whose search is one (one base unit,
budget and space) are one -- the budget set beside the budget consumed, the outcome, and the tuning curve.

The tuning curve is the expected best held-out top-1 after k = 1..N of the search's trials (Dodge et al. 2019,
"Show your work"), with a seeded percentile bootstrap band (``pipeline.stats.tuning_curve``; not Lourie et al.'s
exact bands, which are wider at these N), all searches on one figure, and a sentence per search: flattened at N,
or still climbing, by the rule of ``FLAT_RULE``.

How trials count (the trials as run, ASHA included): every trial that trained at least one epoch and did not
crash counts at the held-out top-1 of its last epoch, so a trial ASHA stopped counts at the accuracy it was
stopped at -- what the search saw of it, lower than it would have reached. A crashed trial counts in the budget
consumed, not in the curve. The estimator treats trials as exchangeable draws, as random search's are; TPE's
later trials depend on its earlier ones, so for TPE the curve describes the pool of settings it proposed, and
the best of the first k trials in the order they were created (``best_so_far``) shows its progress as run.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from matplotlib.ticker import MaxNLocator

from pipeline.config import Params, split_key
from pipeline.plots import plt
from pipeline.report.page import md_row
from pipeline.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, TuningCurve, chance_level, tuning_curve

FLAT_RULE = (
    "flattened at N trials when the expected best after N exceeds the expected best after ⌈N/2⌉ by no more than "
    "the held-out split's margin (1.96 standard errors of the difference of two accuracies on its images: the "
    "margin a searched setting must beat to be adopted); otherwise still climbing, and more trials could change "
    "the method's rank"
)
BAND = (
    f"95 % band: seeded percentile bootstrap over the trials ({BOOTSTRAP_RESAMPLES:,} resamples, seed "
    f"{BOOTSTRAP_SEED}; it cannot rise above the best trial)"
)
SEARCH = "search"  # summary.json's key of a data set's searches


@dataclass(frozen=True)
class SearchCurve:
    """One search's tuning curve and budget: the methods it serves, the trials' scores in creation order, and
    what tune.json says of it (``result``)."""

    methods: tuple[str, ...]
    scores: tuple[float, ...]
    curve: TuningCurve | None  # None: no trial trained an epoch without crashing
    result: Mapping[str, Any]
    at_chance: bool  # every trial of the curve stayed at chance (``pipeline.stats.near_chance``)

    @property
    def best_so_far(self) -> list[float]:
        return list(itertools.accumulate(self.scores, max))


def curves_of(params: Params, tuned: Mapping[str, Mapping[str, Any]]) -> list[SearchCurve]:
    """One ``SearchCurve`` per search of ``tuned`` (tune.json's ``methods``), in grid order."""
    by_key: dict[str, list[str]] = {}
    for m in params.grid.methods:
        if m in tuned:
            by_key.setdefault(tuned[m]["key"], []).append(m)
    out = []
    for methods in by_key.values():
        r = tuned[methods[0]]
        counted = [tr for tr in r["trials"] if tr["history"] and tr["error"] is None]
        scores = tuple(tr["history"][-1] for tr in counted)
        curve = tuning_curve(scores, r["val_images"]) if scores else None
        out.append(
            SearchCurve(tuple(methods), scores, curve, r, bool(counted) and all(tr["at_chance"] for tr in counted))
        )
    return out


def _label(params: Params, methods: tuple[str, ...]) -> str:
    return " = ".join(params.method(m).label for m in methods)


def _values(config: Mapping[str, Any] | None) -> str:
    if not config:
        return "-"
    return ", ".join(
        f"{split_key(k)[1]} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}" for k, v in config.items()
    )


def budget_text(r: Mapping[str, Any]) -> tuple[str, str]:
    """The budget set and the budget consumed, as the table shows them."""
    b, c = r["budget"], r["consumed"]
    where = f"{b['trials']} trials x {b['epochs_per_trial']} epochs over {', '.join(b['space'])}"
    ceiling = f" (at most {b['trials'] * b['epochs_per_trial']} trial-epochs; {r['searcher']})"
    used = f"{c['trials']} trials, {c['trial_epochs']} trial-epochs, {c['device_seconds']:.0f} {c['device']}-s"
    if r["resumed"]:
        used += f" (resumed: {r['resumed']['kept']} trials kept from the interrupted run{_timing(r)})"
    return where + ceiling, used


def _timing(r: Mapping[str, Any]) -> str:
    """Why a resumed search may adopt another setting than an uninterrupted one: only when trials ran side by
    side (then which trial reached an ASHA rung first, and what TPE had seen when it suggested, were timing)."""
    n = r["side_by_side"]
    if n <= 1:
        return "; one trial at a time, so its trials and decision are an uninterrupted search's"
    return (
        f"; with {n} trials side by side its ASHA stops depended on which trial reported first, so an "
        "uninterrupted run could have stopped other trials and adopted another setting"
    )


def outcome_lines(params: Params, tuned: Mapping[str, Mapping[str, Any]], num_classes: int) -> list[str]:
    """Per method: the budget set and consumed, what the recipe and the best trial reached on the held-out
    split, what was adopted and why, and the trials that never left chance."""
    head = ["Method", "budget set", "budget consumed", "recipe (held-out top-1)", "best trial", "trials at chance"]
    lines = [md_row([*head, "outcome"]), "|" + "---|" * (len(head) + 1)]
    for m in params.grid.methods:
        if m not in tuned:
            lines.append(f"| {params.method(m).label} | **NOT SEARCHED** | - | - | - | - | trained at the recipe |")
            continue
        r = tuned[m]
        best = r.get("best_val_top1")
        at_chance = sum(1 for tr in r["trials"] if tr.get("at_chance"))
        outcome = f"adopted {_values(r['chosen'])}" if r["adopted"] else "kept the recipe"
        cells = [
            params.method(m).label
            + (f" (the search of {params.method(r['shared_with']).label})" if r.get("shared_with") else ""),
            *budget_text(r),
            "-" if r.get("recipe_val_top1") is None else f"{r['recipe_val_top1']:.1f}",
            "-" if best is None else f"{best:.1f} ({_values(r['best'])})",
            f"{at_chance} of {len(r['trials'])}" + (" (**all at chance**)" if at_chance == len(r["trials"]) else ""),
            f"{outcome}: {r['reason']}",
        ]
        lines.append(md_row(cells))
    chance = chance_level(num_classes)
    return [*lines, "", f"Held-out split: {next(iter(tuned.values()))['val_images']} images; chance {chance:.1f} %."]


def verdict_sentence(params: Params, s: SearchCurve) -> str:
    """Flattened or still climbing at N (``FLAT_RULE``), with the numbers."""
    c, who = s.curve, f"**{_label(params, s.methods)}** ({s.result['searcher']})"
    if c is None or c.flattened is None:
        return (
            f"- {who}: fewer than 2 trials trained without crashing: no tuning curve, the budget's sufficiency unknown."
        )
    if s.at_chance:
        return (
            f"- {who}: **AT CHANCE**: none of its {c.n} trials left chance in {s.result['budget']['epochs_per_trial']} "
            "epochs, so the search could not rank its settings and its curve is flat at chance: the budget did not "
            "suffice (more epochs per trial, not more trials)."
        )
    step = (
        f"the last doubling ({c.half} -> {c.n} trials) raised the expected best from {c.expected[c.half - 1]:.2f} % "
        f"to {c.expected[c.n - 1]:.2f} % ({c.gain:+.2f} points)"
    )
    n_val = s.result["val_images"]
    if c.flattened:
        return (
            f"- {who}: **flattened at {c.n} trials**: {step}, within the ±{c.margin:.2f} a setting must beat to be "
            f"adopted on these {n_val} held-out images: more trials were not buying a difference the search could "
            "act on."
        )
    return (
        f"- {who}: **still climbing at {c.n} trials**: {step}, beyond the ±{c.margin:.2f} a setting must beat to "
        f"be adopted on these {n_val} held-out images: the budget may not have sufficed, and more trials could "
        "change its setting and its rank."
    )


def curve_lines(params: Params, dataset: str, curves: list[SearchCurve]) -> list[str]:
    """The tuning curves as a table (k = 1..N; each cell the expected best, its band, and the best of the first
    k trials as run) and a sentence per search."""
    drawn = [s for s in curves if s.curve is not None]
    lines = [
        "Expected best held-out top-1 (%) after k trials (Dodge et al. 2019) [" + BAND + "]; then the best of the "
        "first k trials in the order they were created. Each trial counts at its last epoch's held-out top-1 (a "
        "trial ASHA stopped, at the accuracy it was stopped at); crashed trials do not count.",
        "",
    ]
    if drawn:
        lines += [md_row(["k", *(_label(params, s.methods) for s in drawn)]), "|" + "---|" * (len(drawn) + 1)]
        for k in range(1, max(s.curve.n for s in drawn) + 1):
            cells = [
                f"{s.curve.expected[k - 1]:.2f} [{s.curve.low[k - 1]:.2f}, {s.curve.high[k - 1]:.2f}]; "
                f"as run {s.best_so_far[k - 1]:.2f}"
                if k <= s.curve.n
                else "-"
                for s in drawn
            ]
            lines.append(md_row([str(k), *cells]))
        lines.append("")
    lines += [f"Whether each search's budget sufficed ({FLAT_RULE}):", ""]
    lines += [*(verdict_sentence(params, s) for s in curves), ""]
    return [*lines, short_budget_line(params, dataset, curves), ""]


def short_budget_line(params: Params, dataset: str, curves: list[SearchCurve]) -> str:
    """What a trial's score is: accuracy after the trial's epochs of the compressed schedule, not the final
    accuracy the tables report; and how coarse the held-out split is."""
    r = curves[0].result
    epochs = sorted({params.recipe(m, dataset).epochs for s in curves for m in s.methods})
    recipe = f" of the recipe's {'/'.join(map(str, epochs))}"
    margins = [s.curve.margin for s in curves if s.curve is not None and s.curve.margin is not None]
    coarse = (
        f"; on {r['val_images']} held-out images the adoption margin is ±{min(margins):.1f} to ±{max(margins):.1f} "
        "points, so a curve can flatten within it while still rising (`tune.val_fraction` sets the split)"
        if margins
        else ""
    )
    return (
        f"A trial's score is its held-out top-1 after at most {r['budget']['epochs_per_trial']} epochs{recipe} "
        "(the schedule compressed), so the curves rank settings by how fast they start to learn, which is not "
        f"necessarily how well they end{coarse}."
    )


def tuning_figure(params: Params, dataset: str, curves: list[SearchCurve], num_classes: int):
    """Every search's expected best held-out top-1 after k trials on one axis, with its band, and chance."""
    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    searchers = sorted({s.result["searcher"] for s in curves})
    for s in curves:
        if s.curve is None:
            continue
        ks = list(range(1, s.curve.n + 1))
        line = ax.plot(ks, s.curve.expected, marker=".", label=_label(params, s.methods))[0]
        ax.fill_between(ks, s.curve.low, s.curve.high, color=line.get_color(), alpha=0.15)
    ax.axhline(chance_level(num_classes), color="gray", linestyle=":", linewidth=1, label="chance")
    ax.set(xlabel="trials k", ylabel="expected best held-out top-1 (%)")
    ax.set_title(
        f"{dataset}: tuning curves, {', '.join(searchers)} search with ASHA\nexpected best of k trials (Dodge et al. "
        "2019); band: 95 % seeded bootstrap",
        size=9,
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8)
    return fig


def search_summary(curves: list[SearchCurve]) -> dict[str, Any]:
    """summary.json's ``search``: per search (named by its first method), the curve, band, verdict and budget."""
    out = {}
    for s in curves:
        r, c = s.result, s.curve
        out[s.methods[0]] = {
            "methods": ",".join(s.methods),
            "searcher": r["searcher"],
            "budget_trials": r["budget"]["trials"],
            "budget_trial_epochs": r["budget"]["trials"] * r["budget"]["epochs_per_trial"],
            "consumed_trials": r["consumed"]["trials"],
            "consumed_trial_epochs": r["consumed"]["trial_epochs"],
            "device_seconds": r["consumed"]["device_seconds"],
            "device": r["consumed"]["device"],
            "wall_s": r["wall_s"],
            "trials_kept_from_interrupted_run": r["resumed"]["kept"] if r["resumed"] else None,
            "expected_best": None if c is None else list(c.expected),
            "band_low": None if c is None else list(c.low),
            "band_high": None if c is None else list(c.high),
            "best_so_far": s.best_so_far,
            "flattened": None if c is None or s.at_chance else c.flattened,
            "at_chance": s.at_chance,
            "gain_last_doubling": None if c is None else c.gain,
            "held_out_margin": None if c is None else c.margin,
        }
    return out
