"""The report's words and Markdown tables, from the record of its numbers (``pipeline.report.record``): per
data set what the data is, the recipe, the statistics line that states the rules, every method's table beside
the paper's claims, each comparison's verdict, the search's budget and outcome, and where the trained models
are in the MLflow registry; and the headline the report stage ends ``dvc repro`` with."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from pipeline.config import Params
from pipeline.data.manifest import Manifest
from pipeline.paper import TABLE_NAMES
from pipeline.report.page import md_row
from pipeline.report.read import VAL_TOP1, Curve, Inputs
from pipeline.report.record import (
    ABLATION,
    COLUMNS,
    TOP5_ABOVE,
    ComparisonResult,
    DatasetRecord,
    MethodResult,
    TrackRecord,
    claim,
    delta_vs_paper,
    paired,
    published,
    same_units,
    show_top5,
)
from pipeline.report.search import SearchCurve, curve_lines, outcome_lines
from pipeline.stats import Summary, compare, format_diff
from pipeline.verdicts import RULES as VERDICT_RULES
from pipeline.verdicts import rules_text, verdict_definitions

MAIN_ROWS = ("resnet", "densenet_bc", "se_resnet", "cbam_resnet", "ours")
ABLATION_ROWS = (ABLATION, "ours")
TRACK_TITLES = {"recipe": "at the shared recipe", "searched": "at its searched recipe"}


# ---------------------------------------------------------------------------------------------------------
# Words around the tables


def data_line(dataset: str, kind: str, man: Manifest) -> str:
    """What the data set is, and whether it is the published file (only when the published checksum matched)."""
    origin = man.source_origin
    if kind == "embedded":
        what = (
            "the embedded glyphs set (synthetic, made from a seed: the class is the bright digit among dimmer "
            "digits of other classes; NOT CIFAR or ImageNet, so its numbers are not comparable with the paper's)"
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


def settings_line(params: Params, specs: Mapping[str, Mapping[str, Any]]) -> str:
    """The recipe every method trained with, and the options that differ from the baselines' own papers;
    ``specs``: each method's resolved settings (a row's ``RowEval.spec``)."""
    spec = next(iter(specs.values()))
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
        + gate_rules(params, specs)
    )


def gate_rules(params: Params, specs: Mapping[str, Mapping[str, Any]]) -> str:
    """Which rule set each gated baseline's channel-gate width (``models.attention.gate_width``)."""
    rules = []
    for m, spec in specs.items():
        args = spec["model_args"]
        if "reduction" not in args:
            continue
        r, d = args["reduction"], args.get("rd_divisor", 1)
        rule = f"C/{r} rounded to a multiple of {d}, at least {d} (timm's rule)" if d > 1 else f"C // {r} (its paper's)"
        rules.append(f"{params.method(m).label} {rule}")
    return f" Channel-gate widths: {'; '.join(rules)}." if rules else ""


STATS_LINE = (
    "Statistics: test top-1 %, mean ± sample std over n seeds, with a Student-t 95 % CI. Differences are ours "
    f"minus the baseline. Rules: {rules_text()}. Verdicts (a gain's size is tested only where the paper's own "
    "experiment was run: its benchmark, its nets and its recipe; elsewhere only its direction): "
    f"{verdict_definitions()}. Runs at or near "
    "chance (below 1.5 x chance or within 3 binomial standard errors of it) or diverged (NaN loss) are flagged. "
    "Δ vs paper = the measured mean minus the paper's claim for that row on this data set (n/a off the paper's "
    f"benchmarks). Test top-5 is shown only for data sets of more than {TOP5_ABOVE} classes."
)
DIRECTION_ONLY = "Each verdict tests only the direction of a gain (ours better or not), never the paper's claimed size."


def fmt_summary(r: MethodResult) -> str:
    s = r.summary
    text = f"{s.mean:.2f} ± {s.std:.2f}"
    return f"**{'; '.join(r.flags)}**: {text}" if r.flags else text


def fmt_ci(s: Summary) -> str:
    return "-" if s.ci_low is None else f"{s.ci_low:.2f} to {s.ci_high:.2f}"


def fmt_delta(d: float | str, r: MethodResult) -> str:
    if isinstance(d, str):
        return d
    return f"**flagged**: {d:+.2f}" if r.flags else f"{d:+.2f}"


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
            cells += [*(claim(v, r.paper_row, c) for c in cols), fmt_delta(delta_vs_paper(v, r, column), r)]
        cells += [published(r.paper_row, column)] if column is not None else []
        lines.append(md_row(cells))
    return lines


def verdict_lines(comps: list[ComparisonResult]) -> list[str]:
    """One line per comparison: the verdict (per claims version) with what qualifies it, the numbers behind it,
    the bootstrap's view, and why no size was tested where the data set is the paper's benchmark."""
    out = []
    for c in comps:
        parts = []
        for version, v in c.verdicts.items():
            claim = f"vs {TABLE_NAMES[version]}'s claimed {c.claimed[version]:+.1f}: " if version else ""
            parts.append(f"{claim}**{v.label}**: {v.reason}")
        b = c.bootstrap
        boot = (
            f" Bootstrap: 95 % CI {b.ci_low:+.2f} to {b.ci_high:+.2f}; P(ours > {c.other.label}) = {b.poi:.2f} "
            f"(95 % CI {b.poi_low:.2f} to {b.poi_high:.2f})."
            if b
            else ""
        )
        off = f" No size tested: not the paper's setting ({c.size_off})." if c.size_off else ""
        flags = f" Flagged: {'; '.join(c.flags)}." if c.flags else ""
        out.append(f"- **{c.ours.label} vs {c.other.label}**: {' '.join(parts)}{boot}{off}{flags}")
    return out


def convergence_lines(t: TrackRecord) -> list[str]:
    """Per method: whether its learning curves had plateaued (``pipeline.verdicts.RULES["convergence"]``)."""
    head = ["Method", "epochs", "mean rise over the last k epochs", "test-set margin", "converged"]
    lines = [md_row(head), "|" + "---|" * len(head)]
    for r in t.results.values():
        p = r.plateau
        if p is None:
            lines.append(md_row([r.label, "-", "-", "-", "no curves"]))
            continue
        rise = "-" if p.gain is None else f"{p.gain:+.2f} (k = {p.k})"
        lines.append(md_row([r.label, str(p.epochs), rise, f"{p.noise:.2f}", "yes" if p.converged else "**NO**"]))
    return lines


def epoch_lines(params: Params, curves: Mapping[str, Mapping[int, Curve]]) -> list[str]:
    """Test top-1 after each epoch, mean over seeds, one column per method (the recipe track)."""
    if not curves:
        return []
    labels = [params.method(m).label for m in curves]
    epochs = min(len(c) for by_seed in curves.values() for c in by_seed.values())
    lines = [md_row(["epoch", *labels]), "|" + "---|" * (len(labels) + 1)]
    for e in range(epochs):
        means = [statistics.fmean(c[e][VAL_TOP1] for c in by_seed.values()) for by_seed in curves.values()]
        lines.append(md_row([str(e + 1), *(f"{x:.2f}" for x in means)]))
    return lines


def track_lines(params: Params, t: TrackRecord, num_classes: int, column: str | None) -> list[str]:
    """One track's tables (paper Tables 1-4), each comparison's verdict, and the gated baselines' sanity check."""
    main = [c for c in t.comparisons if c.other.paper_row != ABLATION]
    ablation = [c for c in t.comparisons if c.other.paper_row == ABLATION]
    title = TRACK_TITLES[t.track]
    lines = [f"### Every method {title} (paper Tables 1 and 3)", ""]
    lines += [*method_table(params, t.results, MAIN_ROWS, column, t.marks, num_classes), ""]
    lines += ["Attention CNN against each baseline:", "", *verdict_lines(main), ""]
    lines += backbone_lines(t.results)
    lines += [f"### Ablation {title}: the same network without attention (paper Tables 2 and 4)", ""]
    lines += [*method_table(params, t.results, ABLATION_ROWS, column, t.marks, num_classes), ""]
    lines += [*verdict_lines(ablation), *_twins(t.results), ""]
    lines += [f"Convergence {title} (rule: {VERDICT_RULES['convergence']}):", "", *convergence_lines(t), ""]
    return lines


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
        c = compare(r.top1, base.top1, paired=paired(r, base), n_test=min(r.num_test, base.num_test))
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


def registry_lines(params: Params, models: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    """Where each method's trained net is in the MLflow Model Registry: the version this report's units are,
    the aliases naming it and the seed behind it (``pipeline.serving``); ``models``: per method, its rows'
    registry entries that hold a version (``pipeline.report.read.Inputs.models``)."""
    out = []
    for m in params.grid.methods:
        named: dict[tuple[str, int], list[str]] = {}  # (registered name, version) -> "@alias (seed k)"
        for model in models.get(m, []):
            reg = model["registered"]
            named.setdefault((reg["name"], reg["version"]), []).extend(
                f"`@{a}` (seed {model['seed']})" for a in model["aliases"]
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


# ---------------------------------------------------------------------------------------------------------
# One data set


def dataset_text(params: Params, inputs: Inputs, rec: DatasetRecord, searches: list[SearchCurve]) -> str:
    """The Markdown section of one data set (without its figures); ``searches``: its searches' tuning curves."""
    man, bench = inputs.manifest, rec.benchmark
    specs = {m: next(iter(by_seed.values())).spec for m, by_seed in inputs.rows["recipe"].items()}
    lines = [f"## Data set `{rec.dataset}`", "", data_line(rec.dataset, inputs.kind, man), ""]
    lines += [settings_line(params, specs), "", STATS_LINE, ""]
    for track, t in rec.tracks.items():
        if track != "recipe" and same_units(t, rec.tracks["recipe"]):
            lines += [
                f"### Every method {TRACK_TITLES[track]}",
                "",
                "No search adopted a setting (see the search's outcome below): every method's searched recipe is "
                "its recipe, and the tables above are also the searched-recipe tables.",
                "",
            ]
        else:
            lines += track_lines(params, t, rec.num_classes, bench.column)
    if bench.column is None:
        lines += [
            f"The paper columns are its claims on CIFAR/ImageNet, for reference only: this data set is {bench.why}, "
            f"so no Δ vs paper and no published numbers. {DIRECTION_ONLY}",
            "",
        ]
    lines += ["### Test top-1 after each epoch at the shared recipe, mean over seeds", ""]
    lines += [*epoch_lines(params, inputs.curves.get("recipe", {})), ""]
    if inputs.tuned:
        lines += ["### The search: budget and outcome (Ray Tune, ASHA; held-out part of train)", ""]
        lines += [*outcome_lines(params, inputs.tuned, man.num_classes), ""]
        lines += ["### The search: tuning curves (did the budget suffice?)", ""]
        lines += curve_lines(params, rec.dataset, searches)
    lines += registry_lines(params, inputs.models)
    return "\n".join(lines)


def headline_lines(dataset: str, h: dict[str, Any], bench: dict[str, Any]) -> list[str]:
    """The headline as the report stage ends ``dvc repro`` with it."""
    if "ours" not in h:
        return [f"{dataset}: no attention CNN in grid.methods, no headline"]
    what = "the paper's benchmark" if bench["is_benchmark"] else "not a paper benchmark: direction only"
    o = h["ours"]
    state = {True: "converged", False: "NOT converged", None: "convergence unknown"}[o["converged"]]
    at = f"AT THE {o['bound'].upper()}" if o["bound"] else "below the ceiling"
    out = [f"{dataset} ({what}): {o['label']} {o['mean']:.2f} % test top-1, mean of {o['n']} seeds ({state}, {at})"]
    if h.get("epochs"):
        late = h.get("unconverged", [])
        out.append(
            f"  convergence: every method's curves had plateaued by epoch {h['epochs']}"
            if not late
            else f"  convergence: NOT plateaued by epoch {h['epochs']}: {', '.join(late)} (verdicts on them compare "
            "learning speed, not final accuracy)"
        )
    for key, title in (("vs_ablation", "vs its ablation"), ("vs_best", "vs the best baseline")):
        if key in h:
            c = h[key]
            ci = f"95 % CI {c['ci_low']:+.2f} to {c['ci_high']:+.2f}" if c["ci_low"] is not None else "no CI"
            words = "; ".join(w if v == "gain" else f"{w} ({TABLE_NAMES.get(v, v)})" for v, w in c["verdict"].items())
            out.append(f"  {title}, {c['label']} ({c['mean']:.2f} %): {c['diff']:+.2f} points ({ci}): {words}")
    return out
