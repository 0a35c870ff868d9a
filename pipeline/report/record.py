"""The report's one record of the numbers: per data set and track, each method's statistics with their flags,
and the attention CNN against each baseline and its ablation with a verdict on each gain the paper claims
(``DatasetRecord``). Everything the report writes as numbers is a projection of it, with one rounding
(``rounded``): ``summary.json`` (``summary``), ``tables.csv`` (``csv_rows``), the headline (``headline``) and
``metrics.json`` (``headline_metrics``); the Markdown tables (``pipeline.report.markdown``) format it.

Inputs are the evaluate stage's row records (``pipeline.report.read``); nothing here renders. Rules
(``pipeline.stats``):

- a method's score is its per-seed test top-1: mean, sample std, n and a Student-t 95 % CI;
- a run is flagged when its test top-1 is at or near chance (``stats.near_chance`` on the test split) or it
  diverged (a non-finite loss); flagged runs stay in the statistics but are never shown as plain numbers;
- ours minus a baseline is a paired t-test over seeds when both have the same seeds and every seed's two runs
  share the data order and the initial backbone weights (the ``pairing`` digests recorded at training), else
  Welch's t-test; the test set's sampling error is part of the interval (``pipeline.verdicts.RULES``);
- each claimed gain gets a verdict (``pipeline.verdicts.VERDICTS``), its p Holm-adjusted within the gains of its
  track and claims version: against the size the paper claims only where the paper's experiment was run (the
  data set is its benchmark, ``pipeline.paper.benchmark_of``, and both nets and the recipe are the paper's, as
  ``configs/paper.yaml`` sets them: ``setting_gaps``), against "better" (a gain above 0) otherwise;
- each method's learning curves say whether it had converged (``stats.plateau``); a verdict where a side had not
  says so, as it does where the bootstrap's interval disagrees with the t-interval.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.config import Params
from pipeline.data.manifest import Manifest
from pipeline.paper import CLAIMS, COLUMNS, PUBLISHED, TABLE_NAMES, Benchmark, benchmark_of, claimed_gain
from pipeline.records import RowEval
from pipeline.report.read import VAL_TOP1, Curve
from pipeline.report.setting import setting_gaps
from pipeline.stats import (
    Bootstrap,
    Comparison,
    Plateau,
    Summary,
    bootstrap,
    bound,
    compare,
    holm,
    near_chance,
    plateau,
    same_start,
    summarize,
)
from pipeline.verdicts import Verdict, bootstrap_caveat, convergence_caveat, verdict

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
    num_test: int  # the test images each seed was scored on
    spec: dict[str, Any]  # the first seed's resolved settings (model, model_args, train)
    plateau: Plateau | None  # whether its learning curves had stopped rising (None: no curves)

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
    bootstrap: Bootstrap | None
    claimed: dict[str, float | None]
    verdicts: dict[str, Verdict]
    size_off: str  # why no size is tested although the data set is the paper's benchmark ("" where it is)

    @property
    def flags(self) -> list[str]:
        return [f"{r.label}: {f}" for r in (self.ours, self.other) for f in r.flags]


def method_result(
    params: Params, method: str, units: Mapping[int, RowEval], num_classes: int, curves: Mapping[int, Curve] | None
) -> MethodResult:
    """``units``: seed -> the evaluate stage's record of the row (metrics, num_test, pairing, diverged);
    ``curves``: seed -> its unit's epochs (``pipeline.report.read``), each scored on the test split."""
    cfg = params.method(method)
    top1 = {s: u.metrics["test_top1"] for s, u in units.items()}
    speeds = [u.metrics.get("train_images_per_s_per_device") for u in units.values()]
    first = next(iter(units.values())).metrics
    num_test = min(u.num_test for u in units.values())
    return MethodResult(
        method=method,
        label=cfg.label,
        paper_row=cfg.paper_row,
        top1=top1,
        top5={s: u.metrics["test_top5"] for s, u in units.items()},
        summary=summarize(list(top1.values())),
        at_chance=tuple(s for s, u in units.items() if near_chance(top1[s], num_classes, u.num_test)),
        diverged=tuple(s for s, u in units.items() if u.diverged),
        pairing={s: u.pairing or {} for s, u in units.items()},
        units={s: u.key for s, u in units.items()},
        params=first["params"],
        flops=first.get("flops_per_image"),
        speed=None if None in speeds else round(sum(speeds) / len(speeds), 1),
        num_test=num_test,
        spec=next(iter(units.values())).spec,
        plateau=_plateau(curves, num_test),
    )


def _plateau(curves: Mapping[int, Curve] | None, n: int) -> Plateau | None:
    if not curves or not all(curves.values()):
        return None
    return plateau({s: [e[VAL_TOP1] for e in c] for s, c in curves.items()}, n)


def paired(a: MethodResult, b: MethodResult) -> bool:
    """Every common seed's two runs saw the same data order and began from the same backbone weights."""
    return same_start(a.pairing, b.pairing)


def _claims(params: Params, other: MethodResult, column: str | None) -> dict[str, float | None]:
    """Each claims version's claimed gain over ``other`` on ``column``; {"": None} where none is tested."""
    if column is None:
        return {"": None}
    claimed = {v: claimed_gain(v, other.paper_row, column) for v in params.report.claims}
    return {v: g for v, g in claimed.items() if g is not None} or {"": None}


def _caveats(ours: MethodResult, other: MethodResult, c: Comparison, boot: Bootstrap | None) -> list[str | None]:
    sides = [(r.label if r is not ours else "ours", r.plateau) for r in (ours, other)]
    unconverged = [name for name, p in sides if p is not None and not p.converged]
    epochs = max((p.epochs for _, p in sides if p is not None), default=0)
    return [convergence_caveat(epochs, unconverged), bootstrap_caveat(c, boot)]


def comparisons(
    params: Params, results: dict[str, MethodResult], column: str | None, gaps: Mapping[str, list[str]], classes: int
) -> list[ComparisonResult]:
    """The paper's method against every baseline of the grid, then against its ablation (grid order): each
    claims version's gains are one family (Holm). ``gaps``: per method, how its setting differs from the paper's
    (``setting_gaps``); a size is tested only where neither side's differs."""
    ours = next((r for r in results.values() if r.paper_row == OURS), None)
    if ours is None:
        return []
    others = [r for r in results.values() if r.paper_row in (*BASELINE_ROWS, ABLATION)]
    comps = {r.method: compare(ours.top1, r.top1, paired=paired(ours, r), n_test=ours.num_test) for r in others}
    size_off = {r.method: "; ".join(dict.fromkeys(gaps.get(ours.method, []) + gaps.get(r.method, []))) for r in others}
    claimed = {r.method: _claims(params, r, column if not size_off[r.method] else None) for r in others}
    adjusted: dict[tuple[str, str], float | None] = {}
    size: dict[str, int] = {}  # claims version -> the gains in its family
    for v in dict.fromkeys(v for cl in claimed.values() for v in cl):
        family = [m for m in comps if v in claimed[m]]
        adjusted |= {(m, v): p for m, p in zip(family, holm([comps[m].p_value for m in family]), strict=True)}
        size[v] = len(family)
    out = []
    for r in others:
        c, m = comps[r.method], r.method
        boot = bootstrap(c, ours.top1, r.top1)
        caveats = _caveats(ours, r, c, boot)
        verdicts = {
            v: verdict(c, g, a=ours.top1, b=r.top1, p_adjusted=adjusted[(m, v)], family=size[v],
                       num_classes=classes, caveats=caveats)
            for v, g in claimed[m].items()
        }  # fmt: skip
        out.append(ComparisonResult(ours, r, c, boot, claimed[m], verdicts, size_off[m] if column else ""))
    return out


# ---------------------------------------------------------------------------------------------------------
# The benchmark decision, the paper's numbers beside a row


def benchmark(kind: str, man: Manifest) -> Benchmark:
    """The one decision whether this data set is the paper's benchmark (``pipeline.paper.benchmark_of``): from its
    kind, whether the fetch stage matched the published checksum, and whether preprocess kept all of it."""
    prep = man.preprocess
    subset = any(v is not None for v in prep.get("subset", {}).values()) or prep.get("classes") is not None
    return benchmark_of(kind, official=man.source_origin.get("official") is True, subset=subset)


TOP5_ABOVE = 10  # test top-5 is shown only with more classes than this (of 10 it is near 100 % and says nothing)


def show_top5(num_classes: int) -> bool:
    return num_classes > TOP5_ABOVE


def claim(version: str, row: str | None, column: str) -> str:
    """The paper's claimed test top-1 for ``row`` on ``column``, as shown ("-": the paper has no number)."""
    v = CLAIMS[version].get(row or "", {}).get(column)
    return "-" if v is None else f"{v:.1f}"


def published(row: str | None, column: str | None) -> str:
    """What the baseline's own authors published for ``row`` on ``column``, as shown, or "-"."""
    p = PUBLISHED.get(row or "", {}).get(column or "")
    return "-" if p is None else p.cell


def delta_vs_paper(version: str, r: MethodResult, column: str | None) -> float | str:
    """The measured mean minus the paper's claim for ``r``'s row on ``column``: "n/a" when the data set is none of
    the paper's benchmarks (a difference there would mean nothing), "-" when the paper has no number."""
    if column is None:
        return "n/a"
    c = CLAIMS[version].get(r.paper_row or "", {}).get(column)
    return "-" if c is None else round(r.summary.mean - c, 3)


def rounded(x: float | None, digits: int = 3) -> float | None:
    """The one rounding of every number the report writes: None for a missing or non-finite value."""
    return None if x is None or not math.isfinite(x) else round(x, digits)


# ---------------------------------------------------------------------------------------------------------
# The record


@dataclass(frozen=True)
class TrackRecord:
    """Every method of one track, and ours against the others (``comparisons``)."""

    track: str
    results: dict[str, MethodResult]
    comparisons: list[ComparisonResult]
    marks: dict[str, str]  # method -> a note on its row (NOT SEARCHED)


@dataclass(frozen=True)
class DatasetRecord:
    """The numbers of one data set: its benchmark decision and its tracks (``recipe``, and ``searched``)."""

    dataset: str
    benchmark: Benchmark
    num_classes: int
    tracks: dict[str, TrackRecord]


def record_of(
    params: Params,
    dataset: str,
    kind: str,
    man: Manifest,
    rows,
    tuned: Mapping[str, Any],
    *,
    curves,
    paper: Params | None,
) -> DatasetRecord:
    """``rows``: {track: {method: {seed: RowEval}}} (``pipeline.report.read.collect``); ``tuned``: the searches'
    outcome per method (a method missing from it on the searched track is marked NOT SEARCHED); ``curves``:
    {track: {method: {seed: epochs}}}; ``paper``: the paper's setting (``setting_gaps``)."""
    bench = benchmark(kind, man)
    tracks = {}
    for track, by_method in rows.items():
        got = curves.get(track, {})
        results = {m: method_result(params, m, u, man.num_classes, got.get(m)) for m, u in by_method.items()}
        marks = {m: "NOT SEARCHED" for m in params.grid.methods if track == "searched" and m not in tuned}
        gaps = {m: setting_gaps(paper, dataset, m, r.label, r.spec) for m, r in results.items()}
        comps = comparisons(params, results, bench.column, gaps, man.num_classes)
        tracks[track] = TrackRecord(track, results, comps, marks)
    return DatasetRecord(dataset, bench, man.num_classes, tracks)


def same_units(a: TrackRecord, b: TrackRecord) -> bool:
    """Whether every row of ``a`` is the same unit as ``b``'s (no search changed anything)."""
    return all(r.units == b.results[m].units for m, r in a.results.items())


# ---------------------------------------------------------------------------------------------------------
# Its projections

BENCHMARK = "benchmark"  # summary.json, per data set beside its tracks: whether it is the paper's benchmark and why
HEADLINE = "headline"  # summary.json, per data set: ours vs its ablation and vs the best baseline, shared recipe


def _per_version(c: ComparisonResult, field: str) -> dict[str, Any]:
    return {v or "gain": getattr(x, field) for v, x in c.verdicts.items()}


def convergence(p: Plateau | None) -> dict[str, Any]:
    """A method's plateau (``stats.plateau``) as summary.json has it."""
    if p is None:
        return {"converged": None}
    return {"converged": p.converged, "epochs": p.epochs, "k": p.k, "gain": rounded(p.gain), "noise": rounded(p.noise)}


def _bootstrap(b: Bootstrap | None) -> dict[str, Any]:
    fields = ("ci_low", "ci_high", "poi", "poi_low", "poi_high")
    return dict.fromkeys(fields) if b is None else {f: rounded(getattr(b, f), 5) for f in fields}


def track_summary(t: TrackRecord) -> dict[str, Any]:
    """One track as ``summary.json`` (and the MLflow report run) has it: per method, and ours minus each other.
    A comparison's ``verdict`` is the verdict's words with what qualifies them (``Verdict.label``), ``word`` the
    bare word, per claims version."""
    out: dict[str, Any] = {}
    for m, r in t.results.items():
        s = r.summary
        out[m] = {
            "n": s.n,
            "mean": rounded(s.mean),
            "std": rounded(s.std),
            "ci_low": rounded(s.ci_low, 5),
            "ci_high": rounded(s.ci_high, 5),
            "at_chance": len(r.at_chance),
            "diverged": len(r.diverged),
            "convergence": convergence(r.plateau),
        }
    for c in t.comparisons:
        k = c.comparison
        out[f"ours_vs_{c.other.method}"] = {
            "diff": rounded(k.diff),
            "ci_low": rounded(k.ci_low, 5),
            "ci_high": rounded(k.ci_high, 5),
            "p_value": rounded(k.p_value, 5),
            "test": k.test,
            "test_set_se": rounded(k.se_test, 5),
            "seeds_only_in": {"ours": list(k.only_a), c.other.method: list(k.only_b)},
            "bootstrap": _bootstrap(c.bootstrap),
            "size_not_tested_because": c.size_off or None,
            "verdict": _per_version(c, "label"),
            "word": _per_version(c, "word"),
            "p_holm": {v: rounded(p, 5) for v, p in _per_version(c, "p_adjusted").items()},
            **{f: _per_version(c, f) for f in ("claimed_gain", "size_tested", "direction", "seeds_needed")},
            **{f: _per_version(c, f) for f in ("seeds_for_direction", "seeds_for_size", "family")},
        }
    return out


def headline(rec: DatasetRecord) -> dict[str, Any]:
    """The data set's headline at the shared recipe: ours, ours minus its ablation and ours minus the best
    baseline (the highest mean), each difference with its 95 % CI and verdict per claims version."""
    comps = rec.tracks["recipe"].comparisons
    if not comps:
        return {}
    ours = comps[0].ours
    at = bound(ours.summary.mean, rec.num_classes, ours.num_test)
    out: dict[str, Any] = {
        "ours": {"method": ours.method, "label": ours.label, "mean": rounded(ours.summary.mean), "n": ours.summary.n,
                 "converged": convergence(ours.plateau)["converged"], "bound": at}
    }  # fmt: skip
    rs = rec.tracks["recipe"].results.values()
    out["unconverged"] = [r.label for r in rs if r.plateau is not None and not r.plateau.converged]
    out["epochs"] = max((r.plateau.epochs for r in rs if r.plateau is not None), default=None)
    ablation = [c for c in comps if c.other.paper_row == ABLATION]
    baselines = [c for c in comps if c.other.paper_row != ABLATION]
    best = max(baselines, key=lambda c: c.other.summary.mean) if baselines else None
    for key, c in (("vs_ablation", ablation[0] if ablation else None), ("vs_best", best)):
        if c is not None:
            k = c.comparison
            out[key] = {"method": c.other.method, "label": c.other.label, "mean": rounded(c.other.summary.mean),
                        "converged": convergence(c.other.plateau)["converged"],
                        "diff": rounded(k.diff), "ci_low": rounded(k.ci_low, 5), "ci_high": rounded(k.ci_high, 5),
                        "verdict": _per_version(c, "label"), "word": _per_version(c, "word")}  # fmt: skip
    return out


def headline_metrics(h: dict[str, Any]) -> dict[str, float]:
    """What ``dvc metrics show`` shows per data set (``reports/metrics.json``): ours' mean test top-1, its
    seeds, and ours minus its ablation and minus the best baseline, in points. The rest is in summary.json."""
    out = {"ours": h["ours"]["mean"], "n": h["ours"]["n"]} if "ours" in h else {}
    return out | {k: h[k]["diff"] for k in ("vs_ablation", "vs_best") if k in h}


def summary(rec: DatasetRecord) -> dict[str, Any]:
    """The data set in ``summary.json``: each track, the headline and the benchmark decision."""
    b = rec.benchmark
    out: dict[str, Any] = {track: track_summary(t) for track, t in rec.tracks.items()}
    out[HEADLINE] = headline(rec)
    out[BENCHMARK] = {"is_benchmark": b.is_benchmark, "column": b.column, "why": b.why}
    return out


def csv_rows(rec: DatasetRecord) -> list[dict[str, Any]]:
    """``tables.csv``: one row per (track, method); baselines carry ours-minus-them and its verdict. Test top-5 is
    left empty where the tables omit it (``TOP5_ABOVE`` classes or fewer)."""
    column, rows = rec.benchmark.column, []
    for track, t in rec.tracks.items():
        vs = {c.other.method: c for c in t.comparisons}
        for m, r in t.results.items():
            s = r.summary
            row: dict[str, Any] = {
                "dataset": rec.dataset,
                "track": track,
                "method": m,
                "label": r.label,
                "paper_row": r.paper_row,
                "note": t.marks.get(m, ""),
                "n_seeds": s.n,
                "test_top1_mean": rounded(s.mean),
                "test_top1_std": rounded(s.std),
                "test_top1_ci_low": rounded(s.ci_low),
                "test_top1_ci_high": rounded(s.ci_high),
                "test_top1_values": " ".join(f"{r.top1[k]:.2f}" for k in sorted(r.top1)),
                "test_top5_mean": rounded(statistics.fmean(r.top5.values())) if show_top5(rec.num_classes) else "",
                "flags": "; ".join(r.flags),
                "converged": "" if r.plateau is None else r.plateau.converged,
                "params": r.params,
                "flops_per_image": r.flops,
                "train_images_per_s_per_device": r.speed,
                "published": published(r.paper_row, column),
            }
            for v in CLAIMS:
                for c in COLUMNS:
                    row[f"paper_{v}_{c}"] = claim(v, r.paper_row, c)
                row[f"test_top1_minus_paper_{v}"] = delta_vs_paper(v, r, column)
            row.update(_comparison_fields(vs.get(m)))
            rows.append(row)
    return rows


def _comparison_fields(c: ComparisonResult | None) -> dict[str, Any]:
    keys = ("ours_minus_this", "diff_ci_low", "diff_ci_high", "p_value", "test", "verdicts")
    if c is None:
        return dict.fromkeys(keys, "")
    k = c.comparison
    words = "; ".join(f"{TABLE_NAMES.get(v, 'gain > 0')}: {x.label}" for v, x in c.verdicts.items())
    values = (rounded(k.diff), rounded(k.ci_low), rounded(k.ci_high), rounded(k.p_value, 5), k.test, words)
    return dict(zip(keys, values, strict=True))
