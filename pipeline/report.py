"""The paper's tables regenerated from what was measured, beside what the paper claims.

Measured numbers are test top-1 (%) as mean ± sample std over seeds, read from the evaluate stage's
outputs; every table says which data set and settings they come from, and a measured column is only put
under a paper column when the data set *is* that benchmark (the embedded set never is).
"""

from __future__ import annotations

import csv
import shutil
import statistics
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from pipeline.config import Params
from pipeline.io import atomic_path, read_json, write_json
from pipeline.paper import CLAIMS, COLUMN_OF_KIND, COLUMNS, TABLE_NAMES
from pipeline.plots import plt, save
from pipeline.provenance import provenance

MAIN_ROWS = ("resnet", "densenet_bc", "se_resnet", "cbam_resnet", "ours")
ABLATION_ROWS = ("ablation", "ours")


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    m, s = mean_std(values)
    return f"{m:.2f} ± {s:.2f}"


def collect(results: Path, params: Params, dataset: str) -> dict[str, Any]:
    """Per method: seeds' test metrics, specs and curves for one data set."""
    out: dict[str, Any] = {}
    for m in params.grid.methods:
        seeds = {}
        for s in params.grid.seeds:
            summ = read_json(results / dataset / "eval" / m / f"seed{s}" / "summary.json")
            with open(results / dataset / "curves" / f"{m}-seed{s}.csv") as f:
                curve = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
            seeds[s] = {"metrics": summ["metrics"], "spec": summ["spec"], "curve": curve}
        out[m] = seeds
    return out


def _claim(version: str, row: str | None, column: str) -> str:
    v = CLAIMS[version].get(row or "", {}).get(column)
    return "-" if v is None else f"{v:.1f}"


def _sources(man: dict[str, Any]) -> str:
    """The source checksums, as the fetch stage verified them."""
    files = man.get("source_files") or {}
    named = [
        f"`{name}` " + ", ".join(f"{k} `{v}`" for k, v in sums.items() if k in ("md5", "sha256"))
        for name, sums in files.items()
    ]
    if named:
        return "source " + "; ".join(named)
    return f"source index sha256 `{man['source_sha256']}`"


def _settings_line(params: Params, dataset: str, data: dict[str, Any], man: dict[str, Any]) -> str:
    spec = next(iter(data[params.grid.methods[0]].values()))["spec"]
    t = spec["train"]
    kind = params.dataset(dataset).kind
    what = {
        "embedded": "the embedded cluttered-glyphs set (synthetic, made from a seed; NOT CIFAR or ImageNet, so its "
        "numbers are not comparable with the paper's)",
        "cifar10": "CIFAR-10 (official binary archive)",
        "cifar100": "CIFAR-100 (official binary archive, fine labels)",
        "imagenet": "ImageNet ILSVRC2012 (test split = the official validation set)",
    }[kind]
    prep = man.get("preprocess", {})
    subset = {k: v for k, v in prep.get("subset", {}).items() if v is not None}
    if subset or prep.get("classes") is not None:
        what += (
            f", A SUBSET (per class: {subset or 'all'}; classes: {prep.get('classes') or 'all'}), so its numbers are "
            "not comparable with the paper's"
        )
    counts = {k: v["rows"] for k, v in man["files"].items()}
    return (
        f"Data: `{dataset}` = {what}; {counts.get('train')} train / {counts.get('test')} test images, "
        f"{man['num_classes']} classes; {_sources(man)}. "
        f"Settings: {t['epochs']} epochs, batch {t['batch_size']}, {t['schedule']} schedule from lr {t['lr']:g} "
        f"(tuned methods: see below), SGD momentum {t['momentum']}, seeds {params.grid.seeds}. "
        f"Measured: test top-1 %, mean ± std over {len(params.grid.seeds)} seeds."
    )


def build_tables(
    params: Params, dataset: str, data: dict[str, Any], man: dict[str, Any], tuned: dict[str, Any]
) -> tuple[str, list[dict[str, Any]]]:
    kind = params.dataset(dataset).kind
    col = COLUMN_OF_KIND.get(kind)
    versions = params.report.claims
    lines = [f"## Data set `{dataset}`", "", _settings_line(params, dataset, data, man), ""]
    rows_csv: list[dict[str, Any]] = []

    def measured(m: str, metric: str = "test_top1") -> list[float]:
        return [v["metrics"][metric] for v in data[m].values()]

    def train_speed(m: str) -> float | None:
        """Mean over seeds of the measured training images/s per device."""
        vals = [v["metrics"].get("train_images_per_s_per_device") for v in data[m].values()]
        return None if None in vals else round(mean_std(vals)[0], 1)

    def table(title: str, paper_rows: tuple[str, ...], paper_cols: tuple[str, ...]) -> None:
        head = ["Method", f"Measured on `{dataset}`", "top-5", "params", "GFLOPs/img", "train img/s/device"]
        for v in versions:
            head += [f"Paper {TABLE_NAMES[v]}: {c}" for c in paper_cols]
        lines.extend([f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)])
        for m in params.grid.methods:
            row = params.method(m).paper_row
            if row not in paper_rows:
                continue
            first, speed = next(iter(data[m].values()))["metrics"], train_speed(m)
            cells = [
                params.method(m).label,
                fmt(measured(m)),
                fmt(measured(m, "test_top5")),
                f"{first['params']:,}",
                f"{first['flops_per_image'] / 1e9:.3g}" if "flops_per_image" in first else "-",
                f"{speed:,.0f}" if speed is not None else "-",
            ]
            for v in versions:
                cells += [_claim(v, row, c) for c in paper_cols]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")

    cols = COLUMNS if col is None else (col,)
    table("Comparison with the baselines (paper Tables 1 and 3)", MAIN_ROWS, cols)
    table(
        "Ablation: the same network without attention (paper Tables 2 and 4)",
        ABLATION_ROWS,
        tuple(c for c in cols if c != "ImageNet") or cols,
    )
    if col is None:
        lines += [
            "The paper columns are the paper's claims on CIFAR/ImageNet, shown for reference only: "
            "this data set is not one of those benchmarks.",
            "",
        ]
    if tuned:
        lines += ["### Searched settings (Ray Tune, ASHA; held-out part of train)", ""]
        for m, r in tuned.items():
            best = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in r["best"].items())
            lines.append(
                f"- {params.method(m).label}: {best} (val top-1 {r['val_top1']:.1f}% over {len(r['trials'])} trials)"
            )
        lines.append("")
    for m in params.grid.methods:
        tm, tt = mean_std(measured(m)), mean_std(measured(m, "test_top5"))
        rec: dict[str, Any] = {
            "dataset": dataset,
            "method": m,
            "label": params.method(m).label,
            "paper_row": params.method(m).paper_row,
            "n_seeds": len(data[m]),
            "test_top1_mean": round(tm[0], 3),
            "test_top1_std": round(tm[1], 3),
            "test_top5_mean": round(tt[0], 3),
            "test_top5_std": round(tt[1], 3),
            "test_top1_values": " ".join(f"{x:.2f}" for x in measured(m)),
            "params": next(iter(data[m].values()))["metrics"]["params"],
            "flops_per_image": next(iter(data[m].values()))["metrics"].get("flops_per_image"),
            "train_images_per_s_per_device": train_speed(m),
        }
        for v in versions:
            for c in COLUMNS:
                rec[f"paper_{v}_{c}"] = _claim(v, params.method(m).paper_row, c)
        rows_csv.append(rec)
    return "\n".join(lines), rows_csv


def curves_figure(params: Params, datasets: dict[str, dict[str, Any]]):
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4), squeeze=False)
    for ax, (d, data) in zip(axes[0], datasets.items(), strict=True):
        for m, seeds in data.items():
            curves = [s["curve"] for s in seeds.values()]
            epochs = [r["epoch"] for r in curves[0]]
            vals = [[c[i]["val_top1"] for c in curves] for i in range(len(epochs))]
            mean = [statistics.fmean(v) for v in vals]
            lo = [min(v) for v in vals]
            hi = [max(v) for v in vals]
            line = ax.plot(epochs, mean, marker=".", label=params.method(m).label)[0]
            ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set(xlabel="epoch", ylabel="test top-1 (%)", title=f"{d}: mean over seeds (band: min-max)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def make_report(params: Params, results_dir: str | Path, data_root: str | Path, out_dir: str | Path) -> dict[str, Any]:
    results, data_root = Path(results_dir), Path(data_root)
    sections, rows, all_data, prov = [], [], {}, {}
    for d in params.grid.datasets:
        data = collect(results, params, d)
        all_data[d] = data
        man = read_json(data_root / d / "manifest.json")
        tuned = read_json(results / d / "tune.json")["methods"]
        text, r = build_tables(params, d, data, man, tuned)
        sections.append(text)
        rows += r
        train = read_json(results / d / "train_metrics.json")
        prov[d] = {
            "source_sha256": man["source_sha256"],
            "source_files": man.get("source_files"),
            "data_sha256": man["data_sha256"],
            "parquet": man["files"],
            "train_wall_time_s": train["wall_time_s"],
            "units": {f"{m}/seed{s}": v["spec"] for m, seeds in data.items() for s, v in seeds.items()},
        }
    prov_all = provenance(datasets=prov)
    git = prov_all["git"]
    header = [
        "# Attention-Based CNNs for Image Classification: reproduction report",
        "",
        f"Generated by `dvc repro` (stage `report`) at git commit `{git['commit'][:12]}`"
        f"{' (uncommitted changes)' if git['dirty'] else ''} on {prov_all['hardware']['host']} "
        f"({prov_all['hardware']['cpu_count']} CPUs, GPUs: {', '.join(prov_all['hardware']['gpus']) or 'none'}). "
        f"Full provenance: `provenance.json`.",
        "",
    ]
    attn = _attention_pictures(params, results)
    figures = ["![training curves](curves.png)", ""]
    for d in attn:
        figures += [
            f"Attention maps of the paper's method on `{d}` (each module's map upsampled over the test image; "
            "title: true -> predicted class):",
            "",
            f"![attention maps on {d}](attention-{d}.png)",
            "",
        ]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        (tmp / "tables.md").write_text("\n".join(header + sections + figures))
        with open(tmp / "tables.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        save(curves_figure(params, all_data), tmp / "curves.png")
        for d, picture in attn.items():
            shutil.copyfile(picture, tmp / f"attention-{d}.png")
        write_json(tmp / "provenance.json", prov_all)
    return {"rows": rows}


def _attention_pictures(params: Params, results: Path) -> dict[str, Path]:
    """Per data set, the attention-map picture of the paper's method (first seed)."""
    out = {}
    for d in params.grid.datasets:
        for m in params.grid.methods:
            p = results / d / "eval" / m / f"seed{params.grid.seeds[0]}" / "attention.png"
            if params.method(m).paper_row == "ours" and p.is_file():
                out[d] = p
                break
    return out
