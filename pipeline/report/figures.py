"""The report's pictures (``reports/figures/``, also DVC image plots, in the order ``dvc plots show`` sorts
them): ``curves-<d>.png``, every method's test top-1 per epoch on one axis; ``confusion/<d>-<method>.png``,
each method's confusion matrix summed over seeds, classes in label order; ``maps/attention-<d>.png``, the
paper's attention maps; ``tuning-<d>.png``, the searches' tuning curves (``pipeline.report.search``).
Here, not in ``pipeline.plots``, which the train stage imports: a change to a report
picture re-runs only the report. What they show is read by ``pipeline.report.read``."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from pipeline.config import Params
from pipeline.plots import plt, save
from pipeline.report.read import VAL_TOP1, Inputs
from pipeline.report.search import SearchCurve, tuning_figure

CLASS_NAMES_UP_TO = 20  # a confusion matrix names each class on its axes up to this many; beyond, index ticks
CELL_VALUES_UP_TO = 12  # and writes each cell's percentage up to this many


def _one_unit(a: dict[int, list[dict[str, float]]], b: dict[int, list[dict[str, float]]]) -> bool:
    """Whether two methods' curves are one unit's at every seed: the very history read once per unit
    (``read.read_curves``), or equal ones (a NaN of a diverged run is not equal to itself, the object is)."""
    return a.keys() == b.keys() and all(a[s] is b[s] or a[s] == b[s] for s in a)


def curves_figure(params: Params, dataset: str, per_method: dict[str, dict[int, list[dict[str, float]]]]):
    """Every method's test top-1 after each epoch (recipe track) on one axis: mean over seeds, band min to max.
    Methods whose every seed is one unit (the ablation *is* the ResNet) are one line, labelled with both names:
    two lines drawn exactly on top of each other would hide one of them."""
    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    n = 0
    drawn: list[tuple[dict[int, list[dict[str, float]]], list[str]]] = []  # (curves, the methods they are)
    for m, by_seed in per_method.items():
        same = next((names for curves, names in drawn if _one_unit(curves, by_seed)), None)
        if same is None:
            drawn.append((by_seed, [m]))
        else:
            same.append(m)
    for by_seed, names in drawn:
        runs = list(by_seed.values())
        n = max(n, len(runs))
        epochs = [r["epoch"] for r in runs[0]]
        vals = [[run[i][VAL_TOP1] for run in runs] for i in range(len(epochs))]
        label = " = ".join(params.method(m).label for m in names)
        line = ax.plot(epochs, [statistics.fmean(v) for v in vals], marker=".", label=label)[0]
        ax.fill_between(epochs, [min(v) for v in vals], [max(v) for v in vals], color=line.get_color(), alpha=0.15)
    ax.set(xlabel="epoch", ylabel="test top-1 (%)")
    ax.set_title(f"{dataset}: test top-1 after each epoch (test split)\nmean over {n} seeds; band: min to max", size=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8)
    return fig


def confusion_figure(counts: np.ndarray, classes: list[str], title: str):
    """Rows as % of each true class, classes in the given (label) order; class names on the axes up to
    ``CLASS_NAMES_UP_TO`` classes (index ticks beyond), each cell's % written up to ``CELL_VALUES_UP_TO``."""
    k = len(classes)
    pct = 100.0 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(3.5, 0.38 * k + 1.5), 6.5)
    fig, ax = plt.subplots(figsize=(side + 1.3, side), layout="constrained")
    named = k <= CLASS_NAMES_UP_TO
    im = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100, interpolation="nearest" if named else "antialiased")
    fig.colorbar(im, ax=ax, shrink=0.8, label="% of the true class")
    if named:
        ax.set_xticks(range(k), classes, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        ax.set(xlabel="predicted class", ylabel="true class")
    else:
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(10, integer=True))
        ax.set(xlabel=f"predicted class (index in label order, 0-{k - 1})", ylabel="true class (index)")
    if k <= CELL_VALUES_UP_TO:
        for (i, j), v in np.ndenumerate(pct):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v > 60 else "black")
    ax.set_title(title, fontsize=9)
    return fig


def write_figures(params: Params, inputs: Inputs, searches: list[SearchCurve], fig_dir: Path) -> list[str]:
    """Draw a data set's pictures into ``fig_dir`` (curves, the searches' tuning curves, a confusion matrix per
    method, the attention maps); return the markdown that shows them, paths relative to the report."""
    dataset, seeds = inputs.dataset, list(params.grid.seeds)
    save(curves_figure(params, dataset, inputs.curves["recipe"]), fig_dir / f"curves-{dataset}.png")
    lines = [
        "### Figures",
        "",
        f"Test top-1 after each epoch, every method (recipe track; measured on the test split after each epoch, so "
        f"the last point is the test top-1 of the tables; mean over {len(seeds)} seeds, band: min to max):",
        "",
        f"![test top-1 per epoch on {dataset}](figures/curves-{dataset}.png)",
        "",
    ]
    if searches:
        save(tuning_figure(params, dataset, searches, inputs.manifest.num_classes), fig_dir / f"tuning-{dataset}.png")
        lines += [
            "Tuning curves: each search's expected best held-out top-1 after k trials (the table and rule in "
            '"The search: tuning curves" above):',
            "",
            f"![tuning curves on {dataset}](figures/tuning-{dataset}.png)",
            "",
        ]
    lines += [
        f"Confusion matrices (recipe track, test split, the {len(seeds)} seeds summed; each row is a true class, in "
        "label order, as % of its test images):",
        "",
    ]
    pictures = []
    classes = inputs.manifest.classes
    for m in params.grid.methods:
        label = params.method(m).label
        title = f"{label} on {dataset}\ntest split, {len(seeds)} seeds summed"
        save(confusion_figure(inputs.confusion[m], classes, title), fig_dir / "confusion" / f"{dataset}-{m}.png")
        pictures.append(f"![confusion matrix of {label} on {dataset}](figures/confusion/{dataset}-{m}.png)")
    lines += [" ".join(pictures), ""]
    if inputs.attention is not None:
        (fig_dir / "maps").mkdir(exist_ok=True)
        shutil.copyfile(inputs.attention, fig_dir / "maps" / f"attention-{dataset}.png")
        lines += [
            f"Attention maps of the paper's method on `{dataset}` (seed {seeds[0]}; each module's map upsampled over "
            "the test image; title: true -> predicted class):",
            "",
            f"![attention maps on {dataset}](figures/maps/attention-{dataset}.png)",
            "",
        ]
    return lines
