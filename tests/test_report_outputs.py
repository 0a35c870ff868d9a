"""What the report stage writes besides the tables' words, on constructed results (no Ray, no training): the
per-method metrics file DVC shows, the pictures (every method's curves on one axis, a confusion matrix per
method in label order), Δ vs paper, test top-5 only where it says something, and the HTML page that opens
offline. The DVC checks run the real `dvc` on a throw-away repository with this project's dvc.yaml."""

from __future__ import annotations

import csv
import html
import html.parser
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import tracking
from pipeline.data.embedded import CLASSES as GLYPHS  # "zero", "one", ...: label order is not alphabetical
from pipeline.paper import CLAIMS
from pipeline.plots import plt
from pipeline.records import RowEval, TrainedRow, TrainedRows, unit_dir
from pipeline.report import build, figures, markdown, read, record
from pipeline.report import page as html_page
from pipeline.report.record import method_result
from pipeline.settings import validate_params

ROOT = Path(__file__).resolve().parents[1]
METHODS, SEEDS = ["resnet", "attn_resnet", "no_attention"], [0, 1]
ACCURACY = {"resnet": 0.6, "attn_resnet": 0.8, "no_attention": 0.7}  # + 2 points per seed
DATASETS = {"embedded": GLYPHS, "cifar100": [f"class{i:02d}" for i in range(99, -1, -1)]}  # 100, reversed
PER_CLASS = 50  # test images per class


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _fake_results(root: Path, train: dict) -> None:
    """What fetch/preprocess/tune/train/evaluate would leave for DATASETS x METHODS x SEEDS (recipe track)."""
    rng = random.Random(0)
    for d, classes in DATASETS.items():
        k = len(classes)
        _write_json(
            root / "data" / d / "manifest.json",
            {
                "classes": classes,
                "num_classes": k,
                "class_counts": {"train": [5] * k, "test": [PER_CLASS] * k},
                "source_sha256": "0" * 64,
                "data_sha256": "1" * 64,
                "files": {},
                # cifar100 stands for the whole published file (what the fetch stage records when its md5 matched)
                "source_origin": {"official": d == "cifar100", "published": "md5:" + "2" * 32},
            },
        )
        res = root / "results" / d
        _write_json(res / "tune.json", {"methods": {}})
        _write_json(res / "train_metrics.json", {"wall_time_s": 1.0})
        for m in METHODS:
            for s in SEEDS:
                # a confusion CSV whose accuracy is the method's; mistakes go to the next class in label order
                right = round((ACCURACY[m] + 0.02 * s) * PER_CLASS)
                pairs = [
                    (c, c if i < right else classes[(j + 1) % k])
                    for j, c in enumerate(classes)
                    for i in range(PER_CLASS)
                ]
                rng.shuffle(pairs)
                conf = res / "confusion" / m / "recipe" / f"seed{s}.csv"
                conf.parent.mkdir(parents=True, exist_ok=True)
                with open(conf, "w", newline="") as f:
                    csv.writer(f).writerows([("actual", "predicted"), *pairs])
                top1 = 100.0 * right / PER_CLASS
                unit = res / "eval" / m / "recipe" / f"seed{s}"
                metrics = {"test_top1": top1, "test_top5": 99.0, "params": 1000, "flops_per_image": 2e6}
                _write_json(
                    unit / "summary.json",
                    {
                        "key": f"{m}-{s}",
                        "spec": {"train": train, "model_args": {}},
                        "metrics": metrics | {"train_images_per_s_per_device": 100.0},
                        "num_test": PER_CLASS * k,
                        "pairing": {"init": f"i{s}", "data_order": f"o{s}"},
                        "diverged": False,
                    },
                )
                if m == "attn_resnet" and s == 0:
                    fig, ax = plt.subplots(figsize=(1, 1))
                    ax.imshow(np.zeros((4, 4)))
                    fig.savefig(unit / "attention.png")
                    plt.close(fig)
                curve = unit_dir(res / "train", f"{m}-{s}") / "history.csv"
                curve.parent.mkdir(parents=True)
                with open(curve, "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(["epoch", "train_loss", "val_top1", "val_top5"])
                    w.writerows((e, 2.0 / e, top1 * e / 3, 99.0) for e in (1, 2, 3))
        rows = [
            TrainedRow(method=m, track="recipe", seed=s, key=f"{m}-{s}", spec={}, run_id="r")
            for m in METHODS
            for s in SEEDS
        ]
        shared = {r.key: [r.method] for r in rows}
        trained = TrainedRows(dataset=d, experiment_id="0", rows=rows, shared_by=shared)
        (res / "train" / "rows.json").write_text(trained.model_dump_json())


def _params(raw: dict):
    raw["grid"].update(datasets=list(DATASETS), methods=METHODS, seeds=SEEDS)
    return validate_params(raw)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """make_report over the constructed results once, logging to a real MLflow store (sqlite, artifacts in the
    temporary directory); only the (slow) hardware probe is stubbed out."""
    root = tmp_path_factory.mktemp("report")
    with open(ROOT / "params.yaml") as f:
        params = _params(yaml.safe_load(f))
    _fake_results(root, params.train.model_dump())
    stub = {"git": {"commit": "0" * 40, "dirty": False}, "hardware": {"host": "h", "cpu_count": 2, "gpus": []}}
    uri = f"sqlite:///{root / 'mlflow.db'}"
    killed = _killed_report_stage(root / "reports")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # MLflow's default artifact root, ./mlruns, in the temporary directory
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setattr(build, "provenance", lambda **extra: stub | extra)
        out = build.make_report(params, root / "results", root / "data", root / "reports")
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(tracking.experiment_name(params.mlflow.experiment_prefix, "embedded"))
    rexp = c.get_experiment_by_name(tracking.report_experiment_name(params.mlflow.experiment_prefix))
    (run,) = c.search_runs([rexp.experiment_id], "tags.dataset = 'embedded'")
    logged = sorted(_artifacts(c, run.info.run_id))
    return {"root": root, "reports": root / "reports", "out": out, "logged": logged, "run": run, "params": params,
            "c": c, "exp": exp, "rexp": rexp, "killed": killed}  # fmt: skip


def _killed_report_stage(reports: Path) -> Path:
    """The scratch directory a report stage killed outright (SIGKILL: no cleanup runs) leaves in ``reports``."""
    code = (
        "import sys, time; from pipeline.io import scratch_dir\n"
        f"with scratch_dir({str(reports / 'report')!r}) as d:\n"
        "    print(d, flush=True); time.sleep(600)\n"
    )
    reports.mkdir(parents=True)
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    left = Path(p.stdout.readline().strip())
    p.kill()
    p.wait(timeout=30)
    assert left.is_dir()
    return left


def test_a_killed_report_stages_scratch_directory_is_removed_by_the_next_report(made) -> None:
    assert not made["killed"].exists()
    assert not [p for p in made["reports"].iterdir() if p.name.startswith(".")]


def _artifacts(c, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for f in c.list_artifacts(run_id, path):
        out += _artifacts(c, run_id, f.path) if f.is_dir else [f.path]
    return out


# ---------------------------------------------------------------------------------------------------------
# Pictures


def test_confusion_matrix_is_in_label_order_with_class_names(made) -> None:
    root, params = made["root"], made["params"]
    counts = read.confusion_counts(root / "results", "embedded", "resnet", SEEDS, GLYPHS)
    # per class, seed 0: 30 of 50 right, seed 1: 31; the rest predicted as the next class in label order
    assert counts.sum() == PER_CLASS * len(GLYPHS) * len(SEEDS)
    assert counts[0, 0] == 61 and counts[0, 1] == 39  # "zero" -> "one", not "eight" (alphabetical order's next)
    fig = figures.confusion_figure(counts, GLYPHS, "t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == GLYPHS != sorted(GLYPHS)
    assert [t.get_text() for t in ax.get_yticklabels()] == GLYPHS
    shown = ax.images[0].get_array()
    assert np.allclose(shown.sum(axis=1), 100.0) and shown[0, 0] == pytest.approx(61.0)  # rows: % of true class
    assert len(ax.texts) == len(GLYPHS) ** 2  # each cell's % written
    plt.close(fig)
    hundred = DATASETS["cifar100"]
    counts = read.confusion_counts(root / "results", "cifar100", "resnet", SEEDS, hundred)
    fig = figures.confusion_figure(counts, hundred, "t")
    ax = fig.axes[0]
    assert not set(hundred) & {t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()}
    assert not ax.texts and "label order" in ax.get_xlabel()
    plt.close(fig)
    for d in DATASETS:
        for m in METHODS:
            assert (made["reports"] / "figures" / "confusion" / f"{d}-{m}.png").read_bytes()[:4] == b"\x89PNG"
    assert params.grid.methods == METHODS


def test_one_curves_figure_per_data_set_overlays_every_method(made) -> None:
    params, root = made["params"], made["root"]
    fig = figures.curves_figure(params, "embedded", read.read_curves(root / "results", params, "embedded")["recipe"])
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == [params.method(m).label for m in METHODS]
    assert ax.get_ylabel() == "test top-1 (%)" and "test split" in ax.get_title()
    assert ax.get_lines()[1].get_ydata()[-1] == pytest.approx(81.0)  # attn_resnet's last epoch: mean of 80, 82
    plt.close(fig)
    for d in DATASETS:
        assert (made["reports"] / "figures" / f"curves-{d}.png").read_bytes()[:4] == b"\x89PNG"
    assert (made["reports"] / "figures" / "maps" / "attention-embedded.png").is_file()


def test_methods_that_are_one_unit_are_one_line_named_for_both(made) -> None:
    """The ablation trained as the ResNet's very unit: one line, labelled with both, not two lines on top of each
    other (the default grid's case)."""
    params, root = made["params"], made["root"]
    curves = read.read_curves(root / "results", params, "embedded")["recipe"]
    shared = {**curves, METHODS[-1]: curves[METHODS[0]]}  # the last method's every seed is the first's unit
    fig = figures.curves_figure(params, "embedded", shared)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    both = f"{params.method(METHODS[0]).label} = {params.method(METHODS[-1]).label}"
    assert labels == [both] + [params.method(m).label for m in METHODS[1:-1]]
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# Tables


def _table(md: str, heading: str) -> list[dict[str, str]]:
    """The first pipe table after the line ``heading``, as {column: cell} rows."""
    lines = md.split("\n")
    i = lines.index(heading)
    while not lines[i].startswith("|"):
        i += 1
    rows = []
    while i < len(lines) and lines[i].startswith("|"):
        rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
        i += 1
    return [dict(zip(rows[0], r, strict=True)) for r in rows[2:]]


def test_delta_vs_paper_and_top5_only_with_more_than_ten_classes(made) -> None:
    params = made["params"]
    metrics = {"test_top5": 99.5, "params": 1, "flops_per_image": 1.0}
    units = {
        s: RowEval(key=f"k{s}", spec={}, metrics={"test_top1": 90.0 + s, **metrics}, num_test=1000, pairing=None,
                   diverged=False)
        for s in SEEDS
    }  # fmt: skip
    results = {m: method_result(params, m, units, 10, None) for m in METHODS}
    for column, classes in (("CIFAR-10", 10), ("CIFAR-100", 100)):
        lines = markdown.method_table(params, results, markdown.MAIN_ROWS, column, {}, classes)
        rows = [dict(zip(html_page._cells(lines[0]), html_page._cells(x), strict=True)) for x in lines[2:]]
        assert ("test top-5" in rows[0]) == (classes > 10)
        by = {r["Method"]: r for r in rows}
        for v in params.report.claims:
            claim = CLAIMS[v]["resnet"][column]
            assert by["ResNet"][f"Δ vs {markdown.TABLE_NAMES[v]}"] == f"{90.5 - claim:+.2f}"
    # the ablation has no ImageNet claim: "-"; off the paper's benchmarks: "n/a", never a difference
    lines = markdown.method_table(params, results, markdown.ABLATION_ROWS, "ImageNet", {}, 1000)
    by = {
        r["Method"]: r
        for r in (dict(zip(html_page._cells(lines[0]), html_page._cells(x), strict=True)) for x in lines[2:])
    }
    assert (
        by["CNN without attention"]["Δ vs Tables 1-2"] == "-" and by["Attention CNN (ours)"]["Δ vs Tables 1-2"] != "-"
    )
    assert record.delta_vs_paper("table1", results["no_attention"], "ImageNet") == "-"
    assert record.delta_vs_paper("table1", results["resnet"], None) == "n/a"

    md = (made["reports"] / "tables.md").read_text()
    embedded = _table(md, "### Every method at the shared recipe (paper Tables 1 and 3)")
    assert "test top-5" not in embedded[0] and {r["Δ vs Tables 1-2"] for r in embedded} == {"n/a"}
    c100 = md[md.index("## Data set `cifar100`") :].split("\n")
    c100_rows = _table("\n".join(c100), "### Every method at the shared recipe (paper Tables 1 and 3)")
    ours = next(r for r in c100_rows if r["Method"] == "Attention CNN (ours)")
    assert ours["test top-5"] == "99.00" and ours["Δ vs Tables 1-2"] == f"{81.0 - 80.5:+.2f}"
    with open(made["reports"] / "tables.csv") as f:
        rows = {(r["dataset"], r["method"]): r for r in csv.DictReader(f)}
    assert rows[("embedded", "resnet")]["test_top5_mean"] == "" and rows[("cifar100", "resnet")]["test_top5_mean"]
    assert rows[("embedded", "resnet")]["test_top1_minus_paper_table1"] == "n/a"
    assert float(rows[("cifar100", "resnet")]["test_top1_minus_paper_table1"]) == pytest.approx(61.0 - 72.7)


def test_one_name_per_metric(made) -> None:
    """The per-epoch curve is the test top-1 measured after each epoch: the report never calls it otherwise."""
    md = (made["reports"] / "tables.md").read_text()
    assert "val_top1" not in md and "validation" not in md.lower() and "| top-5 |" not in md
    assert "test top-1 after each epoch" in md.lower()


# ---------------------------------------------------------------------------------------------------------
# Metrics for DVC and the HTML page


def test_metrics_file_is_the_headline_per_data_set(made) -> None:
    """What `dvc metrics show` shows: per data set ours' mean and seeds, and ours minus its ablation and minus
    the best baseline (the baseline with the highest mean), as summary.json has them."""
    metrics = json.loads((made["reports"] / "metrics.json").read_text())
    summary = json.loads((made["reports"] / "summary.json").read_text())
    assert set(metrics) == set(DATASETS)
    for d, h in metrics.items():
        s = summary[d]["recipe"]
        best = max((m for m in METHODS if m not in ("attn_resnet", "no_attention")), key=lambda m: s[m]["mean"])
        assert h == {
            "ours": s["attn_resnet"]["mean"],
            "n": len(SEEDS),
            "vs_ablation": s["ours_vs_no_attention"]["diff"],
            "vs_best": s[f"ours_vs_{best}"]["diff"],
        }
        assert summary[d]["headline"]["vs_best"]["method"] == best
    assert metrics["embedded"]["ours"] == pytest.approx(81.0)
    assert {"index.html", "metrics.json", "tables.md", "figures/curves-embedded.png"} <= set(made["logged"])


def test_report_runs_have_their_own_experiment_linked_both_ways(made) -> None:
    """The report runs are not in the training experiment (whose charts they would crowd); each names its
    training experiment, and the training experiment names its latest report run."""
    c, exp, rexp, run = made["c"], made["exp"], made["rexp"], made["run"]
    assert not c.search_runs([exp.experiment_id], "tags.stage = 'report'")
    assert rexp.name == "attncnn-report" and rexp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.tags["training_experiment_id"] == exp.experiment_id
    assert f"(#/experiments/{exp.experiment_id})" in run.data.tags["mlflow.note.content"]
    tags = c.get_experiment(exp.experiment_id).tags
    assert tags["report_run_id"] == run.info.run_id and tags["report_experiment_id"] == rexp.experiment_id
    assert tracking.run_path(rexp.experiment_id, run.info.run_id) in tags["mlflow.note.content"]


def test_the_report_ends_with_its_headline(made, caplog) -> None:
    """The report stage's last lines (the end of `dvc repro`): each data set's headline verdicts, where the page
    is and the MLflow address of the report run."""
    summary = json.loads((made["reports"] / "summary.json").read_text())["embedded"]
    h = summary["headline"]
    lines = markdown.headline_lines("embedded", h, summary["benchmark"])
    assert lines[0].startswith(
        f"embedded (not a paper benchmark: direction only): Attention CNN (ours) {h['ours']['mean']:.2f} %"
    )
    converged = {True: "converged", False: "NOT converged"}[h["ours"]["converged"]]
    assert f"seeds ({converged}, " in lines[0]
    late = h["unconverged"]
    assert lines[1].startswith(
        f"  convergence: NOT plateaued by epoch {h['epochs']}: {', '.join(late)}"
        if late
        else f"  convergence: every method's curves had plateaued by epoch {h['epochs']}"
    )
    ab = h["vs_ablation"]
    assert lines[2] == (
        f"  vs its ablation, {ab['label']} ({ab['mean']:.2f} %): {ab['diff']:+.2f} points (95 % CI "
        f"{ab['ci_low']:+.2f} to {ab['ci_high']:+.2f}): {ab['verdict']['gain']}"
    )
    assert lines[3].startswith(f"  vs the best baseline, {h['vs_best']['label']}")


def test_the_report_run_names_its_source(made) -> None:
    """The report's MLflow run carries the standard source tags (the UI's Source column) and its figures."""
    run = made["run"]
    assert run.info.run_name == "report | embedded" and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.source.git.commit"] == "0" * 40
    assert run.data.tags["mlflow.source.name"] == "dvc repro report"
    assert run.data.metrics["recipe.attn_resnet.mean"] == pytest.approx(81.0)
    assert not any(k.startswith("headline.") for k in run.data.metrics)  # the recipe track's figures, once
    verdicts = {k: v for k, v in run.data.tags.items() if ".verdict" in k or ".claimed" in k}
    assert verdicts and "None" not in verdicts.values()  # a version without a claim has no tag, not "None"


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, list[dict[str, str | None]]] = {}

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.setdefault(tag, []).append(dict(attrs))


def test_html_page_has_the_tables_and_its_pictures_offline(made) -> None:
    reports = made["reports"]
    md, page = (reports / "tables.md").read_text(), (reports / "index.html").read_text()
    parsed = _Page()
    parsed.feed(page)
    assert len(parsed.tags["table"]) == md.count("\n|---") > 0
    srcs = [t["src"] for t in parsed.tags["img"]]
    assert srcs == re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md) and len(srcs) == len(DATASETS) * (2 + len(METHODS))
    assert all((reports / s).is_file() for s in srcs)  # relative to the page, all there
    assert "script" not in parsed.tags and "link" not in parsed.tags and not re.search(r"https?://", page)
    summary = json.loads((reports / "summary.json").read_text())["embedded"]["recipe"]
    labels = {v for k, c in summary.items() if k.startswith("ours_vs_") for v in c["verdict"].values()}
    assert labels and all(f"<strong>{html.escape(label, quote=False)}</strong>" in page for label in labels)
    assert "<td>Attention CNN (ours)</td>" in page and "<code>embedded</code>" in page
    assert "<em>reproduced</em>" in page  # the statistics line's italics


def test_markdown_subset() -> None:
    page = html_page.markdown_to_html(
        "# T\n\nA `a*b*c` and **b** and *i* & <x>.\n\n- one\n- two\n\n| h | k |\n|---|---|\n| 1 | ![p](f/p.png) |\n"
    )
    assert "<h1>T</h1>" in page and "<title>T</title>" in page
    assert "<p>A <code>a*b*c</code> and <strong>b</strong> and <em>i</em> &amp; &lt;x&gt;.</p>" in page
    assert "<ul>\n<li>one</li>\n<li>two</li>\n</ul>" in page
    assert "<thead><tr><th>h</th><th>k</th></tr></thead>" in page and '<td><img src="f/p.png" alt="p"></td>' in page


# ---------------------------------------------------------------------------------------------------------
# The real DVC on this project's dvc.yaml


def _dvc(args: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    r = subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_dvc_shows_one_metrics_file_and_image_plots_offline(made, tmp_path) -> None:
    """dvc.yaml as shipped: the per-seed metrics are no DVC metrics, `dvc metrics show` (what `dvc exp show`
    puts in columns) has the per-method summary, and `dvc plots show` writes a page of the report's PNGs only
    (no Vega, nothing fetched), curves first, then the confusion matrices, then the attention maps."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["grid"].update(datasets=["embedded"], methods=METHODS, seeds=SEEDS)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(made["reports"], repo / "reports")
    res = made["root"] / "results" / "embedded"
    shutil.copytree(res / "train", repo / "results/embedded/train")
    shutil.copytree(res / "confusion", repo / "results/embedded/confusion")
    for m in METHODS:  # the evaluate stage's per-seed metrics, as it writes them
        _write_json(
            repo / f"results/embedded/metrics/{m}.json", {"recipe": {f"seed{s}": {"test_top1": 1.0} for s in SEEDS}}
        )
    _write_json(repo / "results/embedded/train_metrics.json", {"units_trained": 0, "wall_time_s": 1.0})
    _dvc(["init", "--no-scm", "-q"], repo)

    shown = json.loads(_dvc(["metrics", "show", "--json"], repo))
    files = shown[""]["data"]
    assert set(files) == {"reports/metrics.json"}  # the train stage's counts are a plain output
    assert files["reports/metrics.json"]["data"]["embedded"]["n"] == len(SEEDS)
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    _write_json(repo / "reports/metrics.json", {"embedded": metrics["embedded"]})  # the default: one data set
    table = _dvc(["metrics", "show"], repo)
    assert max(len(ln) for ln in table.splitlines()) <= 120, table

    _dvc(["plots", "show", "-o", "plots"], repo)
    page = (repo / "plots" / "index.html").read_text()
    named = re.findall(r"<p>(reports/figures/[^<]+)</p>", page)
    assert named[0] == "reports/figures/curves-cifar100.png" and named[1] == "reports/figures/curves-embedded.png"
    assert [n.split("/")[2] for n in named] == ["curves-cifar100.png", "curves-embedded.png"] + ["confusion"] * (
        len(DATASETS) * len(METHODS)
    ) + ["maps"] * len(DATASETS)
    assert "<script" not in page and not re.search(r"https?://", page)
    assert all((repo / "plots" / s).is_file() for s in re.findall(r'<img src="([^"]+)"', page))


def test_attention_picture_title_fits(tmp_path) -> None:
    """The evaluate stage's attention picture of a one-module net is two images wide: its title used to be wider
    than the figure and was cut at both edges."""
    from pipeline.plots import attention_grid, save

    title = "attn_resnet seed 0: attention maps (map 0 of each module)"
    images, maps = np.zeros((2, 8, 8, 3), np.uint8), [np.ones((2, 2, 2))]
    fig = attention_grid(images, maps, ["stage_attn.2.softmax (2x2)"], ["seven -> one"] * 2, title)
    fig.canvas.draw()
    box, page = fig._suptitle.get_window_extent(), fig.bbox  # matplotlib has no public getter for the Text
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1
    assert " ".join(fig.get_suptitle().split()) == title  # wrapped, not cut
    save(fig, tmp_path / "attention.png")
    assert (tmp_path / "attention.png").read_bytes()[:4] == b"\x89PNG"


def test_the_report_says_what_repeats_and_what_drifts(made) -> None:
    """The report, like the README, says its numbers are one machine's: bit for bit on the same CPU model, moving
    within their intervals on another."""
    md = (made["reports"] / "tables.md").read_text()
    assert build.REPEATABLE in md and "bit for bit" in build.REPEATABLE and "another CPU" in build.REPEATABLE
