"""From evaluated units to the figures a reviewer reads: per-method statistics with flags, and the attention
CNN against each baseline and its ablation, with a verdict on each gain the paper claims.

Inputs are the evaluate stage's per-unit summaries; nothing here renders. Rules (``pipeline.stats``):

- a method's score is its per-seed test top-1: mean, sample std, n and a Student-t 95 % CI;
- a run is flagged when its test top-1 is at or near chance (``stats.near_chance`` on the test split) or it
  diverged (a non-finite loss); flagged runs stay in the statistics but are never shown as plain numbers;
- ours minus a baseline is a paired t-test over seeds when every seed's two runs share the data order and
  the initial backbone weights (the ``pairing`` digests recorded at training), else Welch's t-test;
- each claimed gain gets a verdict (reproduced, not reproduced, inconclusive with the seeds that would
  resolve it): against the size the paper claims when the data set is one of its benchmarks, against
  "better" (a gain above 0) otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config import Params
from pipeline.paper import claimed_gain
from pipeline.stats import Comparison, Summary, Verdict, compare, near_chance, same_start, summarize, verdict

OURS = "ours"
BASELINE_ROWS = ("resnet", "densenet_bc", "se_resnet", "cbam_resnet")
ABLATION = "ablation"


@dataclass(frozen=True)
class MethodResult:
    """One method on one track: its per-seed test top-1 and what a reader must know about it."""

    method: str
    label: str
    paper_row: str | None
    top1: dict[int, float]  # seed -> test top-1 (%)
    top5: dict[int, float]
    summary: Summary
    at_chance: tuple[int, ...]  # seeds whose run is at or near chance
    diverged: tuple[int, ...]  # seeds whose run has a non-finite loss
    pairing: dict[int, dict[str, Any]]  # seed -> {init, data_order} digests
    units: dict[int, str]  # seed -> the unit key of its run (rows of one network, recipe and start share one)
    params: int
    flops: float | None
    speed: float | None  # measured training images/s per device, mean over seeds

    @property
    def flags(self) -> list[str]:
        n = len(self.top1)
        out = [f"{len(self.at_chance)} of {n} seeds AT CHANCE"] if self.at_chance else []
        return out + ([f"{len(self.diverged)} of {n} seeds DIVERGED (NaN loss)"] if self.diverged else [])


@dataclass(frozen=True)
class ComparisonResult:
    """Ours minus ``other`` on one track, with one verdict per claims version (key "" off the benchmarks)."""

    ours: MethodResult
    other: MethodResult
    comparison: Comparison
    claimed: dict[str, float | None]
    verdicts: dict[str, Verdict]

    @property
    def flags(self) -> list[str]:
        return [f"{r.label}: {f}" for r in (self.ours, self.other) for f in r.flags]


def method_result(params: Params, method: str, units: dict[int, dict[str, Any]], num_classes: int) -> MethodResult:
    """``units``: seed -> the evaluate stage's summary (metrics, num_test, pairing, diverged)."""
    cfg = params.method(method)
    top1 = {s: u["metrics"]["test_top1"] for s, u in units.items()}
    speeds = [u["metrics"].get("train_images_per_s_per_device") for u in units.values()]
    first = next(iter(units.values()))["metrics"]
    return MethodResult(
        method=method,
        label=cfg.label,
        paper_row=cfg.paper_row,
        top1=top1,
        top5={s: u["metrics"]["test_top5"] for s, u in units.items()},
        summary=summarize(list(top1.values())),
        at_chance=tuple(s for s, u in units.items() if near_chance(top1[s], num_classes, u["num_test"])),
        diverged=tuple(s for s, u in units.items() if u.get("diverged")),
        pairing={s: u.get("pairing") or {} for s, u in units.items()},
        units={s: u.get("key", "") for s, u in units.items()},
        params=first["params"],
        flops=first.get("flops_per_image"),
        speed=None if None in speeds else round(sum(speeds) / len(speeds), 1),
    )


def paired(a: MethodResult, b: MethodResult) -> bool:
    """Every common seed's two runs saw the same data order and began from the same backbone weights."""
    return same_start(a.pairing, b.pairing)


def compare_with(params: Params, ours: MethodResult, other: MethodResult, column: str | None) -> ComparisonResult:
    """Ours minus ``other``, judged against each claims version's gain on ``column`` (None: not a benchmark)."""
    c = compare(ours.top1, other.top1, paired=paired(ours, other))
    if column is None:
        claimed: dict[str, float | None] = {"": None}
    else:
        claimed = {v: claimed_gain(v, other.paper_row, column) for v in params.report.claims}
        claimed = {v: g for v, g in claimed.items() if g is not None} or {"": None}
    verdicts = {v: verdict(c, g, a=ours.top1, b=other.top1) for v, g in claimed.items()}
    return ComparisonResult(ours, other, c, claimed, verdicts)


def comparisons(params: Params, results: dict[str, MethodResult], column: str | None) -> list[ComparisonResult]:
    """The paper's method against every baseline of the grid, then against its ablation (grid order)."""
    ours = next((r for r in results.values() if r.paper_row == OURS), None)
    if ours is None:
        return []
    rows = (*BASELINE_ROWS, ABLATION)
    return [compare_with(params, ours, r, column) for r in results.values() if r.paper_row in rows]
