"""The report's section "Where attention helps (the paper's Sec. 7.2)", from ``results/<dataset>/study.json``
(``pipeline.study``).

Every cell's test top-1 over seeds (mean ± sample std, Student-t 95 % CI, n) in a placement x scaling table;
every cell against ``final`` at the same scaling (a variant: at its own scaling) as a paired difference over
seeds (the cells of one seed share the backbone's initial weights and the data order), with the main tables'
rules read for this question: **better** when the CI lies above 0, **worse** when it lies below, **no
difference shown** when it holds 0; runs at or near chance and diverged runs flagged. Then the cost of each
placement, the diagnostics of the reference and of the worst multi-module cell as pictures, and a paragraph
of what was found, every number in it read from the table.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.plots import plt, save
from pipeline.stats import Comparison, Summary, chance_level, compare, near_chance, same_start, summarize

TITLE = "## Where attention helps (the paper's Sec. 7.2)"
MULTI = ("stage", "stage_branch", "block")  # placements with a module in every stage or block


@dataclass(frozen=True)
class Cell:
    name: str
    args: dict[str, Any]
    top1: dict[int, float]
    summary: Summary
    at_chance: tuple[int, ...]
    diverged: tuple[int, ...]
    params: int
    speed: float
    units: dict[int, dict[str, Any]]
    num_test: int  # the test images each seed was scored on

    @property
    def placement(self) -> str:
        return self.args.get("placement", "final")

    @property
    def scaling(self) -> str:
        return self.args.get("scaling", "hw")

    @property
    def flags(self) -> list[str]:
        n = len(self.top1)
        out = [f"{len(self.at_chance)} of {n} seeds AT CHANCE"] if self.at_chance else []
        return out + ([f"{len(self.diverged)} of {n} DIVERGED"] if self.diverged else [])

    @property
    def trains(self) -> bool:
        return not self.at_chance and not self.diverged

    @property
    def pairing(self) -> dict[int, dict[str, Any]]:
        return {s: u["pairing"] for s, u in self.units.items()}

    @property
    def modules(self) -> list[str]:
        """The attention modules of the cell's network (as its lowest seed recorded them)."""
        return modules_of(self.units[min(self.units)])


def cells(study: dict[str, Any]) -> dict[str, Cell]:
    out = {}
    for name, c in study["cells"].items():
        units = {int(s): u for s, u in c["seeds"].items()}
        top1 = {s: u["test_top1"] for s, u in units.items()}
        out[name] = Cell(
            name=name,
            args=c["args"],
            top1=top1,
            summary=summarize(list(top1.values())),
            at_chance=tuple(s for s, v in top1.items() if near_chance(v, study["num_classes"], study["num_test"])),
            diverged=tuple(s for s, u in units.items() if u["diverged"]),
            params=c["params"],
            speed=statistics.fmean(u["images_per_s"] for u in units.values()),
            units=units,
            num_test=study["num_test"],
        )
    return out


def reference(cs: dict[str, Cell], cell: Cell) -> Cell | None:
    """The ``final`` cell a cell is judged against: the one at its scaling, else ``final/hw``."""
    return cs.get(f"final/{cell.scaling}") or cs.get("final/hw")


def versus(cell: Cell, ref: Cell) -> tuple[Comparison, str]:
    c = compare(cell.top1, ref.top1, paired=same_start(cell.pairing, ref.pairing), n_test=cell.num_test)
    if c.ci_low is None:
        return c, "one seed: no interval"
    word = "better" if c.ci_low > 0 else "worse" if c.ci_high < 0 else "no difference shown"
    return c, word


def _fmt(cell: Cell) -> str:
    s = cell.summary
    text = f"{s.mean:.1f} ± {s.std:.1f}" + (f" [{s.ci_low:.1f}, {s.ci_high:.1f}]" if s.ci_low is not None else "")
    return f"**{'; '.join(cell.flags)}**: {text}" if cell.flags else text


def _diff(cell: Cell, ref: Cell) -> str:
    c, word = versus(cell, ref)
    ci = f" [{c.ci_low:+.1f}, {c.ci_high:+.1f}]" if c.ci_low is not None else ""
    return f"{c.diff:+.1f}{ci} **{word}**"


def tables(study: dict[str, Any], cs: dict[str, Cell]) -> list[str]:
    pl, sc = study["placements"], study["scalings"]
    n = len(study["seeds"])
    head = "| placement \\ scaling | " + " | ".join(f"`{s}`" for s in sc) + " |"
    rule = "|" + "---|" * (len(sc) + 1)
    acc = [head, rule] + [f"| `{p}` | " + " | ".join(_fmt(cs[f"{p}/{s}"]) for s in sc) + " |" for p in pl]
    diff = [head, rule] + [
        f"| `{p}` | " + " | ".join(_diff(cs[f"{p}/{s}"], cs[f"final/{s}"]) for s in sc) + " |"
        for p in pl
        if p != "final"
    ]
    lines = [
        f"Test top-1 (%) of each cell, mean ± std over {n} seeds [95 % CI]:",
        "",
        *acc,
        "",
        "Each cell minus `final` at the same scaling, paired over seeds: difference [95 % CI] and verdict:",
        "",
        *diff,
        "",
    ]
    variants = [c for name, c in cs.items() if "/" not in name]
    if variants:
        lines += ["Variants (each against `final` at its own scaling):", ""]
        lines += ["| variant | arguments | test top-1 | minus final |", "|---|---|---|---|"]
        for c in variants:
            ref = reference(cs, c)
            args = ", ".join(f"{k}={v}" for k, v in c.args.items())
            lines.append(f"| `{c.name}` | {args} | {_fmt(c)} | {_diff(c, ref) if ref else '-'} |")
        lines.append("")
    return lines


def default_scaling(study: dict[str, Any]) -> str:
    """The scaling the cost table and the figure use: the project's default ``hw`` if the study ran it."""
    return "hw" if "hw" in study["scalings"] else study["scalings"][0]


def cost_lines(study: dict[str, Any], cs: dict[str, Cell]) -> list[str]:
    """Parameters and training speed of each placement (at ``hw``, or the first scaling), against ``final``."""
    s0 = default_scaling(study)
    base = cs[f"final/{s0}"]
    lines = [
        "| placement | attention modules | parameters | vs final | train img/s | vs final |",
        "|---|---|---|---|---|---|",
    ]
    for p in study["placements"]:
        c = cs[f"{p}/{s0}"]
        lines.append(
            f"| `{p}` | {len(c.modules)} | {c.params:,} | {c.params - base.params:+,} | {c.speed:,.0f} | "
            f"{c.speed / base.speed:.2f}x |"
        )
    return [f"Cost of each placement (scaling `{s0}`, training speed measured on this machine):", "", *lines, ""]


STATS = (
    ("entropy", "map entropy / uniform", False),
    ("scale", "features out / in (RMS)", True),
    ("map_grad", "gradient at the map conv", True),
    ("in_grad", "gradient reaching the module's input", True),
)


def _series(unit: dict[str, Any], module: str, stat: str) -> tuple[list[int], list[float]]:
    recs = [{"epoch": 0, **unit["diag_start"]}, *unit["history"]]
    key = f"diag/{module}/{stat}"
    pts = [(int(r["epoch"]), float(r[key])) for r in recs if key in r]
    return [e for e, _ in pts], [v for _, v in pts]


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def modules_of(unit: dict[str, Any]) -> list[str]:
    """The unit's attention modules, in the order the input meets them."""
    return sorted(
        {k.split("/")[1] for k in unit["history"][-1] if k.startswith("diag/") and k.count("/") == 2}, key=_natural
    )


def diagnostics_figure(rows: list[Cell], seed: int):
    """Per module and epoch (0 = before training): entropy, feature scale and gradients, a row per cell."""
    cols = len(STATS) + 1
    fig, axes = plt.subplots(
        len(rows), cols, figsize=(3.2 * cols, 3.0 * len(rows)), layout="constrained", squeeze=False
    )
    for row, cell in enumerate(rows):
        unit = cell.units[seed]
        for col, (stat, label, log) in enumerate(STATS):
            ax = axes[row, col]
            for m in modules_of(unit):
                ep, v = _series(unit, m, stat)
                ax.plot(ep, [max(x, 1e-12) for x in v] if log else v, marker=".", label=m)
            ax.set(title=label, xlabel="epoch (0 = start)")
            if log:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
        ax = axes[row, -1]
        recs = [{"epoch": 0, **unit["diag_start"]}, *unit["history"]]
        ax.plot([r["epoch"] for r in recs], [max(r.get("diag/stem_grad", 0.0), 1e-12) for r in recs], marker=".")
        ax.set(title="gradient at the first conv", xlabel="epoch (0 = start)", yscale="log")
        ax.grid(alpha=0.3)
        axes[row, 0].set_ylabel(f"{cell.name}\n{cell.summary.mean:.1f} % test top-1", fontsize=9)
        axes[row, 0].legend(fontsize=6)
    fig.suptitle(f"Attention diagnostics per module and epoch (seed {seed})", fontsize=10)
    return fig


def as_good(cell: Cell, ref: Cell | None, margin: float) -> bool:
    """Trains as well as ``ref``: both train (neither at chance nor diverged), and the CI of the difference lies
    above ``-margin`` points."""
    if ref is None or not cell.trains or not ref.trains:
        return False
    c, _ = versus(cell, ref)
    return c.ci_low is not None and c.ci_low > -margin


def _inner_stats(cell: Cell) -> tuple[float, float, float]:
    """Median over seeds, after the last epoch, of the modules before the last one: their lowest map entropy,
    their smallest and their largest feature scale."""
    ents, los, his = [], [], []
    for u in cell.units.values():
        inner = modules_of(u)[:-1]
        last = u["history"][-1]
        ents.append(min(last[f"diag/{m}/entropy"] for m in inner))
        los.append(min(last[f"diag/{m}/scale"] for m in inner))
        his.append(max(last[f"diag/{m}/scale"] for m in inner))
    return statistics.median(ents), statistics.median(los), statistics.median(his)


def _grad_ratio(cell: Cell, working: Cell) -> float:
    """The gradient at the first conv after epoch 1 over the working network's, median over common seeds."""
    seeds = sorted(set(cell.units) & set(working.units))
    r = [
        cell.units[s]["history"][0]["diag/stem_grad"] / max(working.units[s]["history"][0]["diag/stem_grad"], 1e-30)
        for s in seeds
    ]
    return statistics.median(r)


def _names(cs: list[Cell]) -> str:
    return ", ".join(f"`{c.name}` ({c.summary.mean:.1f} %)" for c in sorted(cs, key=lambda c: -c.summary.mean))


def findings(study: dict[str, Any], cs: dict[str, Cell], working: Cell, good: list[Cell]) -> list[str]:
    """The paragraph: which multi-module cells train as well as ``final`` (``good``), which do worse, and what
    the diagnostics say about why, every number read from the cells."""
    margin, chance = study.get("margin", 1.0), chance_level(study["num_classes"])
    multi = [c for c in cs.values() if c.placement in MULTI]
    worse = [c for c in multi if c not in good and (c.at_chance or _word(cs, c) == "worse")]
    unclear = [c for c in multi if c not in good and c not in worse]
    text = [f"The one-module network (`{working.name}`) reaches {working.summary.mean:.1f} % (chance: {chance:.0f} %)."]
    if good:
        best = max(good, key=lambda c: c.summary.mean)
        text.append(
            f"Multi-module configurations that train as well as `final` at their scaling (both train, and the CI "
            f"of the difference lies above -{margin:g} point): {_names(good)}. The best, `{best.name}`, costs "
            f"{best.params - working.params:+,} parameters and trains at {best.speed / working.speed:.2f}x the "
            f"speed of `{working.name}`."
        )
    else:
        text.append(f"No multi-module configuration trains as well as `final` (difference CI above -{margin:g}).")
    if worse:
        text.append(f"Worse than `final`, or at chance: {_names(worse)}.")
    if unclear:
        text.append(
            f"Undecided with {len(study['seeds'])} seeds (the CI holds 0 but reaches below -{margin:g}): "
            f"{_names(unclear)}."
        )
    text += _why(working, good, [c for c in multi if c.summary.mean < (chance + working.summary.mean) / 2])
    same = _same_networks(cs)
    if same:
        text.append(f"At this depth {same} (one block per stage).")
    return [" ".join(text), ""]


def _word(cs: dict[str, Cell], c: Cell) -> str:
    ref = reference(cs, c)
    return versus(c, ref)[1] if ref is not None else ""


def _why(working: Cell, good: list[Cell], collapsed: list[Cell]) -> list[str]:
    """What the diagnostics show: the modules before the last in collapsed cells (below the midpoint between
    chance and ``final``) against those in cells that train, and the literal scaling's shrinkage."""
    out = []
    scaled = [c for c in collapsed if c.scaling != "none" and len(c.modules) > 1]
    fine = [c for c in good if len(c.modules) > 1]
    if scaled and fine:
        f, g = [_inner_stats(c) for c in scaled], [_inner_stats(c) for c in fine]
        med = statistics.median
        out.append(
            f"Why: in the {len(scaled)} collapsed cells with a scaled map (below the midpoint between chance and "
            f"`final`), the modules before the last end training with maps at {med(x[0] for x in f):.2f} of "
            f"uniform entropy and scale the features by up to {med(x[2] for x in f):.3g}x (lowest entropy and "
            "largest scale among those modules, median over seeds and cells): a sharpened map times H*W piles the "
            "features onto a few positions and all but removes the rest, and each later module works on what is "
            f"left. In the {len(fine)} that train, those modules stay near the identity (entropy "
            f"{med(x[0] for x in g):.2f}, scale up to {med(x[2] for x in g):.3g}x). After epoch 1 the gradient "
            f"reaching the first conv is {med(_grad_ratio(c, working) for c in scaled):.2g}x the working "
            f"network's in the collapsed cells, {med(_grad_ratio(c, working) for c in fine):.2g}x in the ones "
            "that train."
        )
    literal = [c for c in collapsed if c.scaling == "none" and len(c.modules) > 1]
    if literal:
        c = min(literal, key=lambda c: c.summary.mean)
        u = c.units[min(c.units)]
        shrink = math.prod(u["diag_start"][f"diag/{m}/scale"] for m in c.modules)
        out.append(
            f"The literal scaling fails from the first step: in `{c.name}` the {len(c.modules)} sum-to-one "
            f"maps multiply the features by {shrink:.2g} in all, and after epoch 1 the gradient at the first conv "
            f"is {_grad_ratio(c, working):.2g}x the working network's."
        )
    return out


def _same_networks(cs: dict[str, Cell]) -> str:
    """``block`` and ``stage_branch`` put their modules in the very same places when every stage has one block:
    said, lest identical rows look like a copying error."""
    blocks = [c for c in cs.values() if c.placement == "block" and "/" in c.name]
    branch = {c.scaling: c for c in cs.values() if c.placement == "stage_branch" and "/" in c.name}
    same = all(
        x.scaling in branch and x.modules == branch[x.scaling].modules and x.top1 == branch[x.scaling].top1
        for x in blocks
    )
    return "`block` and `stage_branch` are the same network" if blocks and same else ""


def study_section(study: dict[str, Any], fig_dir: Path) -> tuple[list[str], dict[str, Any]]:
    """The markdown section and its summary (for ``reports/study.json``); figures into ``fig_dir``."""
    if not study.get("enabled"):
        return [
            TITLE,
            "",
            "Not run in this `dvc repro` (`study.enabled: false` in params.yaml): the study trains every "
            "placement x scaling cell over several seeds, about as long again as the default pipeline. To run "
            f"it: `{study['how']}`.",
            "",
        ], {"enabled": False}
    cs = cells(study)
    default = default_scaling(study)
    working = cs[f"final/{default}"]
    multi = [c for c in cs.values() if c.placement in MULTI and c.modules]
    margin = study.get("margin", 1.0)
    good = [c for c in multi if as_good(c, reference(cs, c), margin)]
    # the figure: the working network, the paper's Sec. 3.1 network at the default scaling, the worst cell,
    # and the best multi-module cell that trains
    rows = [working, cs.get(f"stage/{default}"), min(multi, key=lambda c: c.summary.mean) if multi else None]
    rows += [max(good, key=lambda c: c.summary.mean)] if good else []
    rows = list({c.name: c for c in rows if c is not None}.values())
    lines = [
        TITLE,
        "",
        f"The paper's attention net (`{study['method']}`) on `{study['dataset']}` in every cell of placement x "
        f"scaling and in each variant, {study['epochs']} epochs, seeds {study['seeds']}: "
        f"{len(cs) * len(study['seeds'])} units ({study['units_trained']} trained by this run, "
        f"{study['units_reused']} reused), {study['wall_time_s']:.0f} s. MLflow: experiment "
        f"`{study['mlflow_experiment']}`, one run per cell and seed, with the diagnostics as `diag/...` metrics.",
        "",
        *tables(study, cs),
        *cost_lines(study, cs),
    ]
    if len(rows) > 1:
        seed = min(working.units)
        (fig_dir / "study").mkdir(parents=True, exist_ok=True)
        save(diagnostics_figure(rows, seed), fig_dir / "study" / "diagnostics.png")
        named = ", ".join(f"`{c.name}`" for c in rows)
        lines += [
            f"Diagnostics per attention module and epoch, one row per cell ({named}; seed {seed}): map entropy "
            "relative to uniform, features after the module over before (RMS), the gradient at the map conv and "
            "reaching the module's input, and the gradient at the net's first conv:",
            "",
            f"![attention diagnostics of {named}](figures/study/diagnostics.png)",
            "",
        ]
    lines += ["### What the study found", "", *findings(study, cs, working, good)]
    summary = {
        "enabled": True,
        "cells": {
            name: {
                "n": c.summary.n,
                "mean": round(c.summary.mean, 3),
                "std": round(c.summary.std, 3),
                "ci_low": c.summary.ci_low,
                "ci_high": c.summary.ci_high,
                "at_chance": len(c.at_chance),
                **(
                    {"vs_final": v[1], "diff": round(v[0].diff, 3)}
                    if (ref := reference(cs, c)) is not None and ref is not c and (v := versus(c, ref))
                    else {}
                ),
            }
            for name, c in cs.items()
        },
    }
    return lines, summary
