"""The paper's tables regenerated from what was measured, beside what the paper claims and what the baselines'
own authors published, with the statistics and verdicts of ``pipeline.analysis``.

For each data set: a table of every method at the one shared recipe (the headline, like for like), the
attention CNN against each baseline and against its ablation with a verdict per claimed gain, and -- when the
search track ran -- the same at each method's searched recipe, beside the search's budget and outcome. A
measured column is only put under a paper column when the data set *is* that benchmark (the embedded set
never is). The figures go to ``tables.md`` (and ``index.html``, the same as a page that opens offline with its
pictures), ``tables.csv``, ``summary.json`` (everything, comparisons included), ``metrics.json`` (per method: test
top-1 mean, std, CI and n; the one DVC metrics file, so ``dvc exp show`` has a column per method, not per seed)
and an MLflow run per data set (``report | <dataset>``).

Pictures (``figures/``, also DVC image plots, in the order ``dvc plots show`` sorts them): ``curves-<d>.png``,
every method's test top-1 per epoch on one axis; ``confusion/<d>-<method>.png``, each method's confusion matrix
summed over seeds, classes in label order; ``maps/attention-<d>.png``, the paper's attention maps.

One name per number: "test top-1" is the top-1 accuracy on the test split. The per-epoch curve is the same
measurement after each epoch (the training loop logs it as ``val_top1``; in the train stage its "val" split is
the test split), and its last point is the evaluated test top-1.
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunTag

from pipeline import tracking
from pipeline.analysis import ComparisonResult, MethodResult, comparisons, method_result, paired
from pipeline.config import STUDY_HOW_TO_RUN, Params, config_hash, split_key
from pipeline.data.manifest import Manifest, load_manifest
from pipeline.io import read_json, write_json
from pipeline.paper import CLAIMS, COLUMNS, PUBLISHED, TABLE_NAMES, Benchmark, benchmark_of
from pipeline.provenance import provenance
from pipeline.report_figures import write_figures
from pipeline.report_html import markdown_to_html, md_row
from pipeline.stats import Summary, chance_level, compare, format_diff, verdict_definitions
from pipeline.study_report import study_section

log = logging.getLogger(__name__)
MAIN_ROWS = ("resnet", "densenet_bc", "se_resnet", "cbam_resnet", "ours")
ABLATION_ROWS = ("ablation", "ours")
TRACK_TITLES = {"recipe": "at the shared recipe", "searched": "at its searched recipe"}
OUTPUTS = (
    "tables.md",
    "index.html",
    "tables.csv",
    "summary.json",
    "metrics.json",
    "provenance.json",
    "study.json",
    "figures",
)
BENCHMARK = "benchmark"  # summary.json, per data set beside its tracks: whether it is the paper's benchmark and why
HEADLINE = "headline"  # summary.json, per data set: ours vs its ablation and vs the best baseline, shared recipe
TOP5_ABOVE = 10  # test top-5 is shown only with more classes than this (of 10 it is near 100 % and says nothing)


# ---------------------------------------------------------------------------------------------------------
# Reading what the stages wrote


def collect(results: Path, params: Params, dataset: str) -> dict[str, dict[str, dict[int, dict[str, Any]]]]:
    """{track: {method: {seed: the evaluate stage's summary}}} for one data set."""
    out: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for m in params.grid.methods:
        for track_dir in sorted(p for p in (results / dataset / "eval" / m).iterdir() if p.is_dir()):
            units = out.setdefault(track_dir.name, {}).setdefault(m, {})
            for s in params.grid.seeds:
                units[s] = read_json(track_dir / f"seed{s}" / "summary.json")
    return out


# ---------------------------------------------------------------------------------------------------------
# Words around the tables


def benchmark(kind: str, man: Manifest) -> Benchmark:
    """The one decision whether this data set is the paper's benchmark (``pipeline.paper.benchmark_of``): from its
    kind, whether the fetch stage matched the published checksum, and whether preprocess kept all of it."""
    prep = man.preprocess
    subset = any(v is not None for v in prep.get("subset", {}).values()) or prep.get("classes") is not None
    return benchmark_of(kind, official=man.source_origin.get("official") is True, subset=subset)


def data_line(dataset: str, kind: str, man: Manifest) -> str:
    """What the data set is, and whether it is the published file (only when the published checksum matched)."""
    origin = man.source_origin
    if kind == "embedded":
        what = (
            "the embedded cluttered-glyphs set (synthetic, made from a seed; NOT CIFAR or ImageNet, so its "
            "numbers are not comparable with the paper's)"
        )
    elif kind in ("cifar10", "cifar100"):
        name = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100 (fine labels)"}[kind]
        what = _official_or_not(name, origin, man)
    else:
        what = (
            "ImageNet ILSVRC2012, the official archives (their md5s match the published ones; test split = the "
            "official validation set)"
            if origin.get("official")
            else f"ImageNet-format images from `{origin.get('source', '?')}`, NOT verified as the official ILSVRC2012 "
            "archives (no published checksum matched); test split = its val/ folder"
        )
    prep = man.preprocess
    subset = {k: v for k, v in prep.get("subset", {}).items() if v is not None}
    if subset or prep.get("classes") is not None:
        what += (
            f", A SUBSET (per class: {subset or 'all'}; classes: {prep.get('classes') or 'all'}), so its numbers are "
            "not comparable with the paper's"
        )
    counts = {k: sum(v) for k, v in man.class_counts.items()}
    return (
        f"Data: `{dataset}` = {what}; {counts.get('train')} train / {counts.get('test')} test images, "
        f"{man.num_classes} classes; {_sources(man)}."
    )


def _official_or_not(name: str, origin: dict[str, Any], man: Manifest) -> str:
    published = str(origin.get("published", "")).removeprefix("md5:")
    if origin.get("official"):
        return f"{name}, the official binary archive (its md5 matches the published `{published}`)"
    actual = next(iter(man.source_files.values()), {}).get("md5", "?")
    return (
        f"a {name}-format archive from `{origin.get('source', '?')}` that is NOT the published file (its md5 "
        f"`{actual}` differs from the published `{published or '?'}`; it was verified only against "
        f"`{origin.get('verified_against', '?')}`), so its numbers are not the benchmark's"
    )


def _sources(man: Manifest) -> str:
    """The source checksums, as the fetch stage verified them."""
    files = man.source_files
    named = [
        f"`{name}` " + ", ".join(f"{k} `{v}`" for k, v in sums.items() if k in ("md5", "sha256"))
        for name, sums in files.items()
    ]
    return "source " + "; ".join(named) if named else f"source index sha256 `{man.source_sha256}`"


def settings_line(params: Params, units: dict[str, dict[int, dict[str, Any]]]) -> str:
    """The recipe every method trained with, and the options that differ from the baselines' own papers."""
    spec = next(iter(next(iter(units.values())).values()))["spec"]
    t, args = spec["train"], spec["model_args"]
    shortcut = args.get("shortcut", "B")
    warm = (
        f"warm-up at lr {t['warmup_lr']:g} for {t['warmup_epochs']} epoch(s)"
        if t.get("warmup_epochs")
        else "no warm-up (He et al. warmed ResNet-110 up at lr 0.01)"
    )
    sc = (
        "ResNet shortcuts option A (zero-padding, as He et al.)"
        if shortcut == "A"
        else "ResNet shortcuts option B (1x1 projections; He et al. used option A)"
    )
    sched = f"{t['schedule']} schedule" + (f", milestones {t['milestones']}" if t["schedule"] == "step" else "")
    return (
        f"Recipe (every method): {t['epochs']} epochs, batch {t['batch_size']}, SGD lr {t['lr']:g} momentum "
        f"{t['momentum']} weight decay {t['weight_decay']:g}, {sched}; {warm}; {sc}. Seeds {params.grid.seeds}."
        + gate_rules(params, units)
    )


def gate_rules(params: Params, units: dict[str, dict[int, dict[str, Any]]]) -> str:
    """Which rule set each gated baseline's channel-gate width (``models.attention.gate_width``)."""
    rules = []
    for m, by_seed in units.items():
        args = next(iter(by_seed.values()))["spec"]["model_args"]
        if "reduction" not in args:
            continue
        r, d = args["reduction"], args.get("rd_divisor", 1)
        rule = f"C/{r} rounded to a multiple of {d}, at least {d} (timm's rule)" if d > 1 else f"C // {r} (its paper's)"
        rules.append(f"{params.method(m).label} {rule}")
    return f" Channel-gate widths: {'; '.join(rules)}." if rules else ""


STATS_LINE = (
    "Statistics: test top-1 %, mean ± sample std over n seeds, with a Student-t 95 % CI. Differences are ours "
    "minus the baseline: a paired t-test over seeds where both runs of a seed share its data order and initial "
    "backbone weights, Welch's t-test otherwise. Verdicts (a gain's size is tested only where the paper claims one "
    f"on its own benchmark; elsewhere only its direction): {verdict_definitions()}. Runs at or near "
    "chance (below 1.5 x chance or within 3 binomial standard errors of it) or diverged (NaN loss) are flagged. "
    "Δ vs paper = the measured mean minus the paper's claim for that row on this data set (n/a off the paper's "
    f"benchmarks). Test top-5 is shown only for data sets of more than {TOP5_ABOVE} classes."
)
DIRECTION_ONLY = "Each verdict tests only the direction of a gain (ours better or not), never the paper's claimed size."


# ---------------------------------------------------------------------------------------------------------
# Tables


def fmt_summary(r: MethodResult) -> str:
    s = r.summary
    text = f"{s.mean:.2f} ± {s.std:.2f}"
    return f"**{'; '.join(r.flags)}**: {text}" if r.flags else text


def fmt_ci(s: Summary) -> str:
    return "-" if s.ci_low is None else f"{s.ci_low:.2f} to {s.ci_high:.2f}"


def _claim(version: str, row: str | None, column: str) -> str:
    v = CLAIMS[version].get(row or "", {}).get(column)
    return "-" if v is None else f"{v:.1f}"


def _published(row: str | None, column: str | None) -> str:
    p = PUBLISHED.get(row or "", {}).get(column or "")
    return "-" if p is None else p.cell


def delta_vs_paper(version: str, r: MethodResult, column: str | None) -> float | str:
    """The measured mean minus the paper's claim for ``r``'s row on ``column``: "n/a" when the data set is none of
    the paper's benchmarks (a difference there would mean nothing), "-" when the paper has no number."""
    if column is None:
        return "n/a"
    claim = CLAIMS[version].get(r.paper_row or "", {}).get(column)
    return "-" if claim is None else round(r.summary.mean - claim, 3)


def fmt_delta(d: float | str, r: MethodResult) -> str:
    if isinstance(d, str):
        return d
    return f"**flagged**: {d:+.2f}" if r.flags else f"{d:+.2f}"


def show_top5(num_classes: int) -> bool:
    return num_classes > TOP5_ABOVE


def method_table(
    params: Params,
    results: dict[str, MethodResult],
    rows: tuple[str, ...],
    column: str | None,
    marks: dict[str, str],
    num_classes: int,
) -> list[str]:
    """One row per method of the grid whose paper row is in ``rows``: test top-1, its CI and n, test top-5 (only
    with more than ``TOP5_ABOVE`` classes), costs, then per claims version the paper's numbers and Δ vs paper."""
    cols = COLUMNS if column is None else (column,)
    top5 = show_top5(num_classes)
    head = ["Method", "test top-1", "95 % CI", "n", *(["test top-5"] if top5 else [])]
    head += ["params", "GFLOPs/img", "train img/s/device"]
    for v in params.report.claims:
        head += [*(f"Paper {TABLE_NAMES[v]}: {c}" for c in cols), f"Δ vs {TABLE_NAMES[v]}"]
    head += ["Published by its authors"] if column is not None else []
    lines = [md_row(head), "|" + "---|" * len(head)]
    for r in results.values():
        if r.paper_row not in rows:
            continue
        label = f"{r.label} **{marks[r.method]}**" if r.method in marks else r.label
        cells = [label, fmt_summary(r), fmt_ci(r.summary), str(r.summary.n)]
        cells += [f"{statistics.fmean(r.top5.values()):.2f}"] if top5 else []
        cells += [f"{r.params:,}", f"{r.flops / 1e9:.3g}" if r.flops else "-"]
        cells += [f"{r.speed:,.0f}" if r.speed is not None else "-"]
        for v in params.report.claims:
            cells += [*(_claim(v, r.paper_row, c) for c in cols), fmt_delta(delta_vs_paper(v, r, column), r)]
        cells += [_published(r.paper_row, column)] if column is not None else []
        lines.append(md_row(cells))
    return lines


def verdict_lines(comps: list[ComparisonResult]) -> list[str]:
    """One line per comparison: the verdict (per claims version) and the numbers behind it."""
    out = []
    for c in comps:
        parts = []
        for version, v in c.verdicts.items():
            claim = f"vs {TABLE_NAMES[version]}'s claimed {c.claimed[version]:+.1f}: " if version else ""
            parts.append(f"{claim}**{v.word}**: {v.reason}")
        flags = f" Flagged: {'; '.join(c.flags)}." if c.flags else ""
        out.append(f"- **{c.ours.label} vs {c.other.label}**: {' '.join(parts)}{flags}")
    return out


def search_lines(params: Params, tuned: dict[str, Any], num_classes: int) -> list[str]:
    """The search's budget and outcome per method: what the recipe and the best trial reached on the held-out
    split, what was adopted and why, and the trials that never left chance."""
    head = ["Method", "budget", "recipe (held-out top-1)", "best trial", "trials at chance", "outcome"]
    lines = [md_row(head), "|" + "---|" * len(head)]
    for m in params.grid.methods:
        if m not in tuned:
            lines.append(f"| {params.method(m).label} | **NOT SEARCHED** | - | - | - | trained at the recipe |")
            continue
        r = tuned[m]
        b = r["budget"]
        best = r.get("best_val_top1")
        at_chance = sum(1 for tr in r["trials"] if tr.get("at_chance"))
        outcome = f"adopted {_values(r['chosen'])}" if r["adopted"] else "kept the recipe"
        cells = [
            params.method(m).label,
            f"{b['trials']} trials x {b['epochs_per_trial']} epochs over {', '.join(b['space'])}",
            "-" if r.get("recipe_val_top1") is None else f"{r['recipe_val_top1']:.1f}",
            "-" if best is None else f"{best:.1f} ({_values(r['best'])})",
            f"{at_chance} of {len(r['trials'])}" + (" (**all at chance**)" if at_chance == len(r["trials"]) else ""),
            f"{outcome}: {r['reason']}",
        ]
        lines.append(md_row(cells))
    chance = chance_level(num_classes)
    return [*lines, "", f"Held-out split: {next(iter(tuned.values()))['val_images']} images; chance {chance:.1f} %."]


def _values(config: dict[str, Any] | None) -> str:
    if not config:
        return "-"
    return ", ".join(
        f"{split_key(k)[1]} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}" for k, v in config.items()
    )


def track_section(
    params: Params,
    track: str,
    results: dict[str, MethodResult],
    column: str | None,
    marks: dict[str, str],
    num_classes: int,
) -> tuple[list[str], list[ComparisonResult]]:
    comps = comparisons(params, results, column)
    main = [c for c in comps if c.other.paper_row != "ablation"]
    ablation = [c for c in comps if c.other.paper_row == "ablation"]
    title = TRACK_TITLES[track]
    lines = [f"### Every method {title} (paper Tables 1 and 3)", ""]
    lines += [*method_table(params, results, MAIN_ROWS, column, marks, num_classes), ""]
    lines += ["Attention CNN against each baseline:", "", *verdict_lines(main), ""]
    lines += backbone_lines(results)
    lines += [f"### Ablation {title}: the same network without attention (paper Tables 2 and 4)", ""]
    lines += [*method_table(params, results, ABLATION_ROWS, column, marks, num_classes), ""]
    lines += [*verdict_lines(ablation), *_twins(results), ""]
    return lines, comps


GATED_ROWS = ("se_resnet", "cbam_resnet")  # the attention-family baselines: their backbone's row is "resnet"


def backbone_lines(results: dict[str, MethodResult]) -> list[str]:
    """Each attention-family baseline minus its own backbone (same recipe, seeds paired where they started
    alike): a baseline many points below the net it adds a gate to is crippled, and gains over it say nothing."""
    base = next((r for r in results.values() if r.paper_row == "resnet"), None)
    gated = [r for r in results.values() if r.paper_row in GATED_ROWS]
    if base is None or not gated:
        return []
    out = [f"Each attention-family baseline against its own backbone ({base.label}), a sanity check:", ""]
    for r in gated:
        c = compare(r.top1, base.top1, paired=paired(r, base))
        out.append(f"- {r.label} minus {base.label}: {format_diff(c)}")
    return [*out, ""]


def _twins(results: dict[str, MethodResult]) -> list[str]:
    """Say so when two methods' rows are one unit (the ablation of a ResNet-backbone net *is* ResNet: the same
    network, start, data order and recipe): trained once, one run per seed, lest the equal rows look like a
    copying error."""
    rs = list(results.values())
    return [
        f"- {a.label} and {b.label} are the same network from the same start, data order and recipe: one run per "
        "seed, trained once, serves both rows (MLflow: the run's `methods` tag names both)."
        for i, a in enumerate(rs)
        for b in rs[i + 1 :]
        if a.units == b.units and all(a.units.values())
    ]


# ---------------------------------------------------------------------------------------------------------
# One data set


def dataset_report(params: Params, dataset: str, results: Path, data_root: Path) -> dict[str, Any]:
    """The markdown section, CSV rows and summary of one data set."""
    man = load_manifest(data_root / dataset)
    tuned = read_json(results / dataset / "tune.json")["methods"]
    kind = params.dataset(dataset).kind
    bench = benchmark(kind, man)
    column = bench.column
    units = collect(results, params, dataset)
    lines = [f"## Data set `{dataset}`", "", data_line(dataset, kind, man), "", settings_line(params, units["recipe"])]
    lines += ["", STATS_LINE, ""]
    rows, summary = [], {}
    for track, by_method in units.items():
        results_t = {m: method_result(params, m, u, man.num_classes) for m, u in by_method.items()}
        marks = {m: "NOT SEARCHED" for m in params.grid.methods if track == "searched" and m not in tuned}
        text, comps = track_section(params, track, results_t, column, marks, man.num_classes)
        if track != "recipe" and _same_units(units[track], units["recipe"]):
            text = [
                f"### Every method {TRACK_TITLES[track]}",
                "",
                "No search adopted a setting (see the search's outcome below): every method's searched recipe is "
                "its recipe, and the tables above are also the searched-recipe tables.",
                "",
            ]
        lines += text
        rows += csv_rows(dataset, track, results_t, comps, column, marks, man.num_classes)
        summary[track] = summary_of(results_t, comps)
        if track == "recipe":
            summary[HEADLINE] = headline(summary[track], comps)
    if column is None:
        lines += [
            f"The paper columns are its claims on CIFAR/ImageNet, for reference only: this data set is {bench.why}, "
            f"so no Δ vs paper and no published numbers. {DIRECTION_ONLY}",
            "",
        ]
    if tuned:
        lines += ["### The search: budget and outcome (Ray Tune, ASHA; held-out part of train)", ""]
        lines += [*search_lines(params, tuned, man.num_classes), ""]
    lines += registry_lines(params, results, dataset)
    summary[BENCHMARK] = {"is_benchmark": bench.is_benchmark, "column": column, "why": bench.why}
    return {
        "text": "\n".join(lines),
        "rows": rows,
        "summary": summary,
        "metrics": headline_metrics(summary[HEADLINE]),
        "manifest": man,
        "units": units,
    }


def headline(track: dict[str, Any], comps: list[ComparisonResult]) -> dict[str, Any]:
    """The data set's headline at the shared recipe, taken from that track's summary (``summary_of``): ours,
    ours minus its ablation and ours minus the best baseline (the highest mean), each difference with its 95 %
    CI and verdict per claims version."""
    if not comps:
        return {}
    ours = comps[0].ours.method
    out: dict[str, Any] = {"ours": {"method": ours, "label": comps[0].ours.label, **_pick(track[ours], "mean", "n")}}
    ablation = [c.other for c in comps if c.other.paper_row == "ablation"]
    baselines = [c.other for c in comps if c.other.paper_row != "ablation"]
    best = max(baselines, key=lambda r: r.summary.mean) if baselines else None
    for key, other in (("vs_ablation", ablation[0] if ablation else None), ("vs_best", best)):
        if other is not None:
            vs = _pick(track[f"ours_vs_{other.method}"], "diff", "ci_low", "ci_high", "verdict")
            out[key] = {"method": other.method, "label": other.label, **_pick(track[other.method], "mean"), **vs}
    return out


def _pick(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: d[k] for k in keys}


def headline_metrics(h: dict[str, Any]) -> dict[str, float]:
    """What ``dvc metrics show`` shows per data set (``reports/metrics.json``): ours' mean test top-1, its
    seeds, and ours minus its ablation and minus the best baseline, in points. The rest is in summary.json."""
    out = {"ours": h["ours"]["mean"], "n": h["ours"]["n"]} if "ours" in h else {}
    return out | {k: h[k]["diff"] for k in ("vs_ablation", "vs_best") if k in h}


def headline_lines(dataset: str, h: dict[str, Any], bench: dict[str, Any]) -> list[str]:
    """The headline as the report stage ends ``dvc repro`` with it."""
    if "ours" not in h:
        return [f"{dataset}: no attention CNN in grid.methods, no headline"]
    what = "the paper's benchmark" if bench["is_benchmark"] else "not a paper benchmark: direction only"
    o = h["ours"]
    out = [f"{dataset} ({what}): {o['label']} {o['mean']:.2f} % test top-1, mean of {o['n']} seeds"]
    for key, title in (("vs_ablation", "vs its ablation"), ("vs_best", "vs the best baseline")):
        if key in h:
            c = h[key]
            ci = f"95 % CI {c['ci_low']:+.2f} to {c['ci_high']:+.2f}" if c["ci_low"] is not None else "no CI"
            words = "; ".join(w if v == "gain" else f"{w} ({TABLE_NAMES.get(v, v)})" for v, w in c["verdict"].items())
            out.append(f"  {title}, {c['label']} ({c['mean']:.2f} %): {c['diff']:+.2f} points ({ci}): {words}")
    return out


def registry_lines(params: Params, results: Path, dataset: str) -> list[str]:
    """Where each method's trained net is in the MLflow Model Registry: the version this report's units are,
    the aliases naming it and the seed behind it (``pipeline.serving``)."""
    out = []
    for m in params.grid.methods:
        named: dict[tuple[str, int], list[str]] = {}  # (registered name, version) -> "@alias (seed k)"
        for f in sorted((results / dataset / "eval" / m).glob("*/seed*/mlflow_model.json")):
            model = read_json(f)
            if model.get("registered"):
                reg = model["registered"]
                named.setdefault((reg["name"], reg["version"]), []).extend(
                    f"`@{a}` ({f.parent.name.replace('seed', 'seed ')})" for a in model["aliases"]
                )
        out += [
            f"- {params.method(m).label}: `models:/{name}` version {version}: {', '.join(aliases)}"
            for (name, version), aliases in named.items()
        ]
    if not out:
        return []
    note = (
        "Each is the net of the lowest seed of a track, with its input normalisation: "
        "`mlflow.pyfunc.load_model('models:/<name>@recipe').predict(images)` takes uint8 images (N, H, W, 3) and "
        "gives logits; every other unit's net is a logged model in its own run."
    )
    return ["### The trained models (MLflow Model Registry)", "", note, "", *out, ""]


def _same_units(a: dict[str, dict[int, dict[str, Any]]], b: dict[str, dict[int, dict[str, Any]]]) -> bool:
    return all(a[m][s]["key"] == b[m][s]["key"] for m in a for s in a[m])


def csv_rows(
    dataset: str,
    track: str,
    results: dict[str, MethodResult],
    comps: list[ComparisonResult],
    column: str | None,
    marks: dict[str, str],
    num_classes: int,
) -> list[dict[str, Any]]:
    """One row per method; baselines carry ours-minus-them and its verdict. Test top-5 is left empty where the
    tables omit it (``TOP5_ABOVE`` classes or fewer)."""
    vs = {c.other.method: c for c in comps}
    rows = []
    for m, r in results.items():
        s = r.summary
        row: dict[str, Any] = {
            "dataset": dataset,
            "track": track,
            "method": m,
            "label": r.label,
            "paper_row": r.paper_row,
            "note": marks.get(m, ""),
            "n_seeds": s.n,
            "test_top1_mean": round(s.mean, 3),
            "test_top1_std": round(s.std, 3),
            "test_top1_ci_low": _round(s.ci_low),
            "test_top1_ci_high": _round(s.ci_high),
            "test_top1_values": " ".join(f"{r.top1[k]:.2f}" for k in sorted(r.top1)),
            "test_top5_mean": round(statistics.fmean(r.top5.values()), 3) if show_top5(num_classes) else "",
            "flags": "; ".join(r.flags),
            "params": r.params,
            "flops_per_image": r.flops,
            "train_images_per_s_per_device": r.speed,
            "published": _published(r.paper_row, column),
        }
        for v in CLAIMS:
            for c in COLUMNS:
                row[f"paper_{v}_{c}"] = _claim(v, r.paper_row, c)
            row[f"test_top1_minus_paper_{v}"] = delta_vs_paper(v, r, column)
        row.update(_comparison_fields(vs.get(m)))
        rows.append(row)
    return rows


def _comparison_fields(c: ComparisonResult | None) -> dict[str, Any]:
    keys = ("ours_minus_this", "diff_ci_low", "diff_ci_high", "p_value", "test", "verdicts")
    if c is None:
        return dict.fromkeys(keys, "")
    k = c.comparison
    words = "; ".join(f"{TABLE_NAMES.get(v, 'gain > 0')}: {x.word}" for v, x in c.verdicts.items())
    values = (round(k.diff, 3), _round(k.ci_low), _round(k.ci_high), _round(k.p_value, 5), k.test, words)
    return dict(zip(keys, values, strict=True))


def _round(x: float | None, nd: int = 3) -> float | str:
    return "" if x is None else round(x, nd)


def summary_of(results: dict[str, MethodResult], comps: list[ComparisonResult]) -> dict[str, Any]:
    """The figures as DVC metrics and MLflow see them: per method, and ours minus each other method."""
    out: dict[str, Any] = {}
    for m, r in results.items():
        s = r.summary
        out[m] = {
            "n": s.n,
            "mean": round(s.mean, 3),
            "std": round(s.std, 3),
            "ci_low": _json(s.ci_low),
            "ci_high": _json(s.ci_high),
            "at_chance": len(r.at_chance),
            "diverged": len(r.diverged),
        }
    for c in comps:
        k = c.comparison
        out[f"ours_vs_{c.other.method}"] = {
            "diff": round(k.diff, 3),
            "ci_low": _json(k.ci_low),
            "ci_high": _json(k.ci_high),
            "p_value": _json(k.p_value),
            "test": k.test,
            "verdict": {v or "gain": x.word for v, x in c.verdicts.items()},
            "claimed_gain": {v or "gain": x.claimed_gain for v, x in c.verdicts.items()},
            "size_tested": {v or "gain": x.size_tested for v, x in c.verdicts.items()},
            "direction": {v or "gain": x.direction for v, x in c.verdicts.items()},
            "seeds_needed": {v or "gain": x.seeds_needed for v, x in c.verdicts.items()},
            "seeds_for_direction": {v or "gain": x.seeds_for_direction for v, x in c.verdicts.items()},
            "seeds_for_size": {v or "gain": x.seeds_for_size for v, x in c.verdicts.items()},
        }
    return out


def _json(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 5)


# ---------------------------------------------------------------------------------------------------------
# Files and MLflow (figures: pipeline.report_figures; the page: pipeline.report_html)


def make_report(params: Params, results_dir: str | Path, data_root: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write ``out_dir``/{tables.md, index.html, tables.csv, summary.json, metrics.json, provenance.json,
    figures/} and log them to MLflow."""
    results, data_root, out_dir = Path(results_dir), Path(data_root), Path(out_dir)
    sections = {d: dataset_report(params, d, results, data_root) for d in params.grid.datasets}
    prov = provenance(datasets={d: _provenance(results, d, s) for d, s in sections.items()})
    git = prov["git"]
    header = [
        "# Attention-Based CNNs for Image Classification: reproduction report",
        "",
        f"Generated by `dvc repro` (stage `report`) at git commit `{git['commit'][:12]}`"
        f"{' (uncommitted changes)' if git['dirty'] else ''} on {prov['hardware']['host']} "
        f"({prov['hardware']['cpu_count']} CPUs, GPUs: {', '.join(prov['hardware']['gpus']) or 'none'}). "
        "Full provenance: `provenance.json`.",
        "",
    ]
    rows = [r for s in sections.values() for r in s["rows"]]
    summary = {d: s["summary"] for d, s in sections.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".report.") as tmp_s:  # same file system: renames
        tmp = Path(tmp_s)
        (tmp / "figures" / "confusion").mkdir(parents=True)
        texts = [
            "\n".join([s["text"], *write_figures(params, results, d, s["manifest"], tmp / "figures")])
            for d, s in sections.items()
        ]
        study_text, study_summary = study_section(_study(params, results), tmp / "figures")
        md = "\n".join(header + texts + study_text)
        (tmp / "tables.md").write_text(md)
        (tmp / "index.html").write_text(markdown_to_html(md))
        with open(tmp / "tables.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        write_json(tmp / "summary.json", summary)
        write_json(tmp / "metrics.json", {d: s["metrics"] for d, s in sections.items()})
        write_json(tmp / "provenance.json", prov)
        write_json(tmp / "study.json", study_summary)
        runs = _log_to_mlflow(params, summary, tmp, git["commit"])
        _move_into_place(tmp, out_dir)
    for d, s in summary.items():
        for line in headline_lines(d, s[HEADLINE], s[BENCHMARK]):
            log.info("report: %s", line)
    log.info("report: tables, verdicts and figures: %s", out_dir / "index.html")
    for d, path in runs.items():
        log.info("report: MLflow, report run of %s: %s", d, tracking.ui_url(path))
    return {"rows": rows, "summary": summary}


def _study(params: Params, results: Path) -> dict[str, Any]:
    """The study stage's output for the data set it studied; off when none did (or a results tree without one,
    a report of constructed results)."""
    for d in params.grid.datasets:
        f = results / d / "study.json"
        if f.is_file() and (study := read_json(f)).get("enabled"):
            return study
    return {"enabled": False, "how": STUDY_HOW_TO_RUN}


def _provenance(results: Path, dataset: str, section: dict[str, Any]) -> dict[str, Any]:
    man = section["manifest"]
    return {
        "source_sha256": man.source_sha256,
        "source_files": man.source_files or None,
        "source_origin": man.source_origin or None,
        "data_sha256": man.data_sha256,
        "parquet": man.files,
        "train_wall_time_s": read_json(results / dataset / "train_metrics.json")["wall_time_s"],
        "units": {
            f"{track}/{m}/seed{s}": u["spec"]
            for track, per_method in section["units"].items()
            for m, seeds in per_method.items()
            for s, u in seeds.items()
        },
    }


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Each output renamed into place only once all are written: a failed report leaves none half-made."""
    for name in OUTPUTS:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        (tmp / name).replace(target)


def _report_run_fields(per_track: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, float]]]:
    """The summary as tags (per claims version: verdict, claimed gain, whether the size was tested, direction,
    seeds) and metrics (the numbers), named ``<track>.<method or ours_vs_x>.<field>[.<version>]``."""
    bench = per_track[BENCHMARK]
    tags = [(f"{BENCHMARK}.{k}", str(v)) for k, v in bench.items()]
    metrics: list[tuple[str, float]] = []
    for track, entries in per_track.items():
        if track in (BENCHMARK, HEADLINE):  # the headline repeats the recipe track's figures
            continue
        for name, fields in entries.items():
            for k, v in fields.items():
                if isinstance(v, dict):
                    tags += [(f"{track}.{name}.{k}.{version}", str(x)) for version, x in v.items()]
                elif isinstance(v, (int, float)) and not isinstance(v, bool):
                    metrics.append((f"{track}.{name}.{k}", float(v)))
    return tags, metrics


def _log_to_mlflow(params: Params, summary: dict[str, Any], tmp: Path, commit: str) -> dict[str, str]:
    """One run per data set (``report | <dataset>``, tag stage=report) in the report experiment
    (``<prefix>-report``, apart from the training runs): the figures as metrics, the verdicts as tags, the
    files as artifacts. Linked both ways: the run names its training experiment (tags, description) and the
    training experiment its latest report run. A rerun with the same figures finds and reuses its run.
    Returns {dataset: the report run's URL path}."""
    c = tracking.client()
    now = int(time.time() * 1000)
    prefix = params.mlflow.experiment_prefix
    rexp = tracking.get_experiment(c, tracking.report_experiment_name(prefix))
    out = {}
    for d, per_track in summary.items():
        train_name = tracking.experiment_name(prefix, d)
        exp = tracking.get_experiment(c, train_name)
        tags = tracking.tags_for(run_key=config_hash(per_track), stage="report", dataset=d)
        tags |= tracking.source_tags("report", commit)
        run_id, existed = tracking.find_or_create_run(c, rexp, f"report | {d}", tags, {}, reopen=False)
        tracking.link_report(
            c, run_id, report_experiment=rexp, training_experiment=exp, train_name=train_name, dataset=d
        )
        out[d] = tracking.run_path(rexp, run_id)
        if existed:
            continue
        tags, metrics = _report_run_fields(per_track)
        for i in range(0, len(tags), 100):  # MLflow takes at most 100 tags per batch
            c.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags[i : i + 100]])
        for i in range(0, len(metrics), 1000):
            c.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics[i : i + 1000]])
        for name in ("tables.md", "index.html", "tables.csv", "summary.json", "metrics.json", "study.json"):
            c.log_artifact(run_id, str(tmp / name))
        c.log_artifacts(run_id, str(tmp / "figures"), "figures")
        tracking.finish(c, run_id)
    return out
