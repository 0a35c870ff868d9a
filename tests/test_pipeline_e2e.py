"""The whole pipeline for real: `dvc repro` on a small copy of the project (local Ray, MLflow in sqlite, the
embedded data set, every method searched with the same budget), then the records it leaves in DVC and
MLflow, and the report's statistics and verdicts checked against the per-seed numbers."""

from __future__ import annotations

import csv
import json
import math
import re
import shlex
import subprocess

import pytest
import torch
import yaml
from scipy import stats as sp

from pipeline.data.manifest import load_split
from tests.project import ROOT, TINY, make_project, mlflow_client, run, trained_unit

pytestmark = pytest.mark.slow

METHODS, SEEDS, EPOCHS = TINY["grid"]["methods"], TINY["grid"]["seeds"], TINY["train"]["epochs"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    proj = make_project(tmp_path_factory.mktemp("e2e"), TINY, width=None)
    # Ray Train's state tracking on, as where a dashboard runs (clusters): it printed Ray's own deprecation notice
    first = run(["env", "RAY_TRAIN_ENABLE_STATE_TRACKING=1", "dvc", "repro"], proj, timeout=1500)
    return proj, first


def pq_split(proj, split: str):
    return load_split(proj / "data" / "processed" / "embedded", split)


def _csv(proj) -> list[dict[str, str]]:
    with open(proj / "reports" / "tables.csv") as f:
        return list(csv.DictReader(f))


def test_outputs_and_report(project) -> None:
    proj, _ = project
    md = (proj / "reports" / "tables.md").read_text()
    assert "NOT CIFAR" in md and "`embedded`" in md
    # an unedited commit: dvc.lock, autostaged by the run itself before the report read git's state, is no change
    assert "(uncommitted changes)" not in md
    for label in ("ResNet", "Attention CNN (ours)", "CNN without attention"):
        assert f"| {label} | " in md
    assert "Paper Tables 1-2: CIFAR-10" in md and "96.2" in md  # the paper's claim beside the measurement
    assert "| test top-1 | 95 % CI | n |" in md and "paired t-test over the seeds" in md
    assert "### The search: budget and outcome" in md and "2 trials x 2 epochs over train.lr" in md
    rows = _csv(proj)
    assert {(r["track"], r["method"]) for r in rows} == {(t, m) for t in ("recipe", "searched") for m in METHODS}
    for r in rows:
        values = [float(v) for v in r["test_top1_values"].split()]
        assert len(values) == len(SEEDS) == int(r["n_seeds"])
        assert abs(sum(values) / len(values) - float(r["test_top1_mean"])) < 1e-2
        low, high = sp.t.interval(0.95, len(values) - 1, loc=sp.tmean(values), scale=sp.sem(values))
        assert abs(float(r["test_top1_ci_low"]) - low) < 1e-2 and abs(float(r["test_top1_ci_high"]) - high) < 1e-2
        # cost columns: torch's flop counter and the measured training speed per device
        assert float(r["flops_per_image"]) > 0 and float(r["train_images_per_s_per_device"]) > 0
    assert "![attention maps on embedded](figures/maps/attention-embedded.png)" in md
    # the attention study is off by default: its section says so and how to run it
    assert "## Where attention helps (the paper's Sec. 7.2)\n\nNot run in this `dvc repro`" in md
    assert "`dvc exp run -S study.enabled=true`" in md
    confusion = [f"confusion/embedded-{m}.png" for m in METHODS]
    for png in ("curves-embedded.png", "maps/attention-embedded.png", *confusion):
        assert (proj / "reports" / "figures" / png).read_bytes()[:4] == b"\x89PNG"
    prov = json.loads((proj / "reports" / "provenance.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=proj, capture_output=True, text=True).stdout.strip()
    assert prov["git"]["commit"] == head and prov["hardware"]["cpu_count"]


def test_verdicts_follow_from_the_numbers(project) -> None:
    """Each comparison's difference, CI and p-value recomputed from the per-seed values in tables.csv: scipy's
    paired t-test for the seeds' part, the test set's sampling error added (pipeline/verdicts.py:RULES); its
    verdict is the one its interval and Holm-adjusted p imply, with what qualifies it; the report's verdict line
    and tables.csv say the same words."""
    proj, _ = project
    md = (proj / "reports" / "tables.md").read_text()
    summary = json.loads((proj / "reports" / "summary.json").read_text())["embedded"]
    rows = {(r["track"], r["method"]): r for r in _csv(proj)}
    n_test = sum(json.loads((proj / "data/processed/embedded/manifest.json").read_text())["class_counts"]["test"])
    for track in ("recipe", "searched"):
        ours = [float(v) for v in rows[(track, "attn_resnet")]["test_top1_values"].split()]
        for other in ("resnet", "no_attention"):
            theirs = [float(v) for v in rows[(track, other)]["test_top1_values"].split()]
            c = summary[track][f"ours_vs_{other}"]
            assert c["test"] == "paired"  # same seed, same data order, same backbone at the start
            diffs = [a - b for a, b in zip(ours, theirs, strict=True)]
            diff = sum(diffs) / len(diffs)
            assert abs(c["diff"] - diff) < 1e-2
            qa, qb = sum(ours) / len(ours) / 100, sum(theirs) / len(theirs) / 100
            se_test = 100 * math.sqrt((qa * (1 - qa) + qb * (1 - qb)) / n_test)
            assert c["test_set_se"] == pytest.approx(se_test, abs=1e-4)
            if len(set(diffs)) > 1:
                ref = sp.ttest_rel(ours, theirs)
                se_seeds = diff / ref.statistic
                se = math.sqrt(se_seeds**2 + se_test**2)
                df = se**4 / (se_seeds**4 / ref.df)
                half = sp.t.ppf(0.975, df) * se
                assert abs(c["ci_low"] - (diff - half)) < 1e-2 and abs(c["ci_high"] - (diff + half)) < 1e-2
                assert abs(c["p_value"] - 2 * sp.t.sf(abs(diff) / se, df)) < 1e-3
            word, label = c["word"]["gain"], c["verdict"]["gain"]
            shown = c["ci_low"] > 0 and c["p_holm"]["gain"] < 0.05
            expected = "reproduced" if shown else "not reproduced" if c["ci_high"] <= 0 else "inconclusive"
            assert word == expected, c
            assert label.startswith(word)
            converged = {summary[track][m]["convergence"]["converged"] for m in ("attn_resnet", other)}
            assert ("before" in label and "converged" in label) == (False in converged), label
            assert rows[(track, other)]["verdicts"] == f"gain > 0: {label}"
            if track == "recipe":
                name = {"resnet": "ResNet", "no_attention": "CNN without attention"}[other]
                assert f"- **Attention CNN (ours) vs {name}**: **{label}**: {c['diff']:+.2f} points" in md


def test_searches_are_equal_and_start_from_the_recipe(project) -> None:
    proj, _ = project
    tuned = json.loads((proj / "results/embedded/tune.json").read_text())["methods"]
    assert set(tuned) == set(METHODS)
    for r in tuned.values():
        assert r["budget"]["trials"] == TINY["tune"]["num_samples"] and r["budget"]["epochs_per_trial"] == 2
        assert r["budget"]["space"][:2] == ["train.lr", "train.weight_decay"]  # one shared recipe space
        assert [t["config"] for t in r["trials"]].count(r["recipe"]) == 1  # the recipe's own trial
        assert r["adopted"] == bool(r["chosen"]) and r["reason"]
    assert tuned["attn_resnet"]["budget"]["space"] == ["train.lr", "train.weight_decay", "args.placement"]
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]  # TINY keeps the shipped lr and decay
    assert tuned["resnet"]["recipe"] == {"train.lr": shipped["lr"], "train.weight_decay": shipped["weight_decay"]}


def test_the_searches_show_their_budget_and_tuning_curves(project) -> None:
    """TPE at the same budget for every search; what each consumed is the sum over its trials as Tune recorded
    them; the report's tuning curve per search is Dodge et al.'s estimator over the trials' last held-out top-1,
    with a sentence per search, a figure, and the curve in summary.json and the MLflow report run."""
    proj, _ = project
    tuned = json.loads((proj / "results/embedded/tune.json").read_text())["methods"]
    summary = json.loads((proj / "reports" / "summary.json").read_text())["embedded"]["search"]
    md = (proj / "reports" / "tables.md").read_text()
    assert set(summary) == {"resnet", "attn_resnet"}  # no_attention's search is resnet's
    for m, s in summary.items():
        r = tuned[m]
        assert r["searcher"] == s["searcher"] == "tpe" and r["resumed"] is None
        assert r["consumed"]["trials"] == s["consumed_trials"] == TINY["tune"]["num_samples"]
        assert s["consumed_trial_epochs"] == sum(len(tr["history"]) for tr in r["trials"]) <= s["budget_trial_epochs"]
        assert s["device_seconds"] == pytest.approx(sum(tr["time_s"] for tr in r["trials"]), abs=0.2)
        assert s["device_seconds"] > 0 and s["device"] == "CPU"
        last = sorted(tr["history"][-1] for tr in r["trials"])
        n = len(last)
        dodge = sum(v * ((i + 1) ** n - i**n) / n**n for i, v in enumerate(last))  # Dodge et al.'s eq. 1 at k = n
        assert s["expected_best"][-1] == pytest.approx(dodge)
        assert s["expected_best"][0] == pytest.approx(sum(last) / n)
        label = {"resnet": "ResNet = CNN without attention", "attn_resnet": "Attention CNN (ours)"}[m]
        word = "AT CHANCE" if s["at_chance"] else f"{'flattened' if s['flattened'] else 'still climbing'} at {n} trials"
        assert f"- **{label}** (tpe): **{word}**" in md
    assert "![tuning curves on embedded](figures/tuning-embedded.png)" in md
    assert (proj / "reports" / "figures" / "tuning-embedded.png").read_bytes()[:4] == b"\x89PNG"


def test_dvc_metrics_plots_and_experiments(project) -> None:
    proj, _ = project
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], proj).stdout)
    files = next(iter(shown.values()))["data"]
    # DVC shows the per-method summary; the per-seed files are outputs, out of `dvc exp show`'s way
    assert not any(f.startswith("results/embedded/metrics/") for f in files)
    for m in METHODS:
        per_seed = json.loads((proj / f"results/embedded/metrics/{m}.json").read_text())
        for s in SEEDS:
            metrics = per_seed["recipe"][f"seed{s}"]
            assert 0 <= metrics["test_top1"] <= 100 and metrics["params"] > 0
    # DVC shows the headline per data set, in a 120-column terminal; the train stage's counts are plain outputs
    assert set(files) == {"reports/metrics.json"}
    headline = files["reports/metrics.json"]["data"]["embedded"]
    summary = json.loads((proj / "reports/summary.json").read_text())["embedded"]["recipe"]
    assert headline["n"] == len(SEEDS) and headline["ours"] == summary["attn_resnet"]["mean"]
    assert headline["vs_ablation"] == summary["ours_vs_no_attention"]["diff"]
    assert max(len(ln) for ln in run(["dvc", "metrics", "show"], proj).stdout.splitlines()) <= 120
    train = json.loads((proj / "results/embedded/train_metrics.json").read_text())
    assert train["units_reused"] == 0 and train["rows"] >= len(METHODS) * len(SEEDS)
    # resnet and no_attention are one network from one start: their rows share a unit, trained once
    assert train["units_trained"] == train["units"] < train["rows"]
    # the grid ran as two jobs at once (2 cores, 1 worker each): each job's units overlap the other's in time
    assert train["jobs_side_by_side"] == 2
    walls = {}
    for m in METHODS:
        for s in SEEDS:
            rec = torch.load(trained_unit(proj, m, s) / "model.pt", weights_only=True)
            walls.setdefault(rec["provenance"]["job"], []).append(rec["wall"])
            assert rec["pairing"]["init"] and rec["pairing"]["data_order"]
    (a, b) = walls.values()
    spans = [(min(w["started_at"] for w in j), max(w["finished_at"] for w in j)) for j in (a, b)]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans
    # evaluation, the net rebuilt from its checkpoint alone, reproduces the test accuracy training measured
    for m in METHODS:
        for s in SEEDS:
            with open(trained_unit(proj, m, s) / "history.csv") as f:
                last = list(csv.DictReader(f))[-1]
            assert int(last["epoch"]) == EPOCHS
            per_seed = json.loads((proj / f"results/embedded/metrics/{m}.json").read_text())
            measured = per_seed["recipe"][f"seed{s}"]["test_top1"]
            assert abs(measured - float(last["val_top1"])) < 1e-6
    run(["dvc", "plots", "show", "-o", "plots_html"], proj)
    assert (proj / "plots_html" / "index.html").stat().st_size > 1000
    exp = run(["dvc", "exp", "show", "--json"], proj).stdout
    assert "train.epochs" in exp or '"epochs"' in exp
    # the documented narrow `dvc exp show` (docs/report.md): the headline beside two settings, nothing else
    page = (ROOT / "docs/report.md").read_text().split("<!-- exp-show:begin -->")[1].split("<!-- exp-show:end -->")[0]
    (cmd,) = re.findall(r"```bash\n(.*?)\n```", page, re.S)
    table = list(csv.reader(run([*shlex.split(cmd), "--csv"], proj).stdout.splitlines()))
    cols = [f"embedded.{k}" for k in ("n", "ours", "vs_ablation", "vs_best")]
    assert table[0] == ["Experiment", *cols, "train.epochs", "train.lr"], table[0]
    assert [float(v) for v in table[1][1:5]] == [headline[k] for k in ("n", "ours", "vs_ablation", "vs_best")]


def test_mlflow_records(project) -> None:
    proj, _ = project
    c = mlflow_client(proj)
    exp = c.get_experiment_by_name("attncnn-embedded")
    assert exp is not None
    runs = c.search_runs([exp.experiment_id], "tags.stage = 'train'")
    recipe = [r for r in runs if r.data.tags["track"] == "recipe"]
    # one run per unit, tagged with every method whose row it is: resnet's runs are no_attention's too
    assert sorted((m, r.data.tags["seed"]) for r in recipe for m in r.data.tags["methods"].split(",")) == sorted(
        (m, str(s)) for m in METHODS for s in SEEDS
    )
    shared = [r for r in recipe if r.data.tags["methods"] == "resnet,no_attention"]
    assert len(shared) == len(SEEDS) and all(r.info.run_name.endswith("(also no_attention)") for r in shared)
    # grouping the experiment by `method` shows training runs only (searches are tagged searched_method)
    assert {r.info.run_id for r in c.search_runs([exp.experiment_id], "tags.method != ''")} == {
        r.info.run_id for r in runs
    }
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=proj, capture_output=True, text=True).stdout.strip()
    sha = json.loads((proj / "data/processed/embedded/manifest.json").read_text())["data_sha256"]
    spans = []
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.tags["git_commit"] == head and r.data.tags["data_sha256"] == sha
        # what the UI's Source, Dataset and Models columns show
        assert r.data.tags["mlflow.source.git.commit"] == head
        assert r.data.tags["mlflow.source.name"] == "dvc repro train@embedded"
        (ds,) = r.inputs.dataset_inputs
        assert ds.dataset.name == "embedded" and sha.startswith(ds.dataset.digest)
        assert len(r.outputs.model_outputs) == 1
        # method and seed first, so the UI's cut-off name column shows both
        assert r.info.run_name.startswith(f"{r.data.tags['method']} seed {r.data.tags['seed']}")
        for key in ("train_loss", "val_top1", "val_top5", "lr", "images_per_s", "epoch_time_s"):
            assert [m.step for m in c.get_metric_history(r.info.run_id, key)] == list(range(1, EPOCHS + 1)), key
        assert "test_top1" in r.data.metrics  # logged by the evaluate stage into the same run
        assert r.data.params["train.epochs"] == str(EPOCHS)
        # where the data is, as the repository names it (not this machine's path); epoch times are timestamps
        assert r.data.params["dataset.path"] == "data/processed/embedded" and "timestamp_ms" not in r.data.metrics
        arts = {a.path for a in c.list_artifacts(r.info.run_id)} | {
            a.path for a in c.list_artifacts(r.info.run_id, "checkpoint")
        }
        assert {"checkpoint/model.pt", "curves.png", "history.csv"} <= arts
        spans.append((r.info.start_time, r.info.end_time))
    # each run starts and ends with its own unit: the two jobs' units overlap, one job's follow each other
    assert len(set(spans)) == len(spans) and max(e - s for s, e in spans) < max(e for _, e in spans) - min(spans)[0]
    assert any(k.startswith("system/cpu_utilization") for r in runs for k in r.data.metrics)
    # the lowest seed's net, registered per method: loads by its alias and predicts from uint8 test images what
    # the evaluate stage measured
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{proj / 'mlflow.db'}")
    test = pq_split(proj, "test")
    for m in METHODS:
        logits = mlflow.pyfunc.load_model(f"models:/attncnn-embedded-{m}@recipe").predict(test.images)
        measured = json.loads((proj / f"results/embedded/metrics/{m}.json").read_text())["recipe"][f"seed{SEEDS[0]}"]
        assert 100.0 * float((logits.argmax(1) == test.labels).mean()) == pytest.approx(measured["test_top1"], abs=0.3)
    md = (proj / "reports" / "tables.md").read_text()
    assert "- Attention CNN (ours): `models:/attncnn-embedded-attn_resnet` version 1: `@recipe` (seed 0)" in md
    parents = c.search_runs([exp.experiment_id], "tags.stage = 'tune'")
    assert all(p.info.status == "FINISHED" for p in parents)
    # one search per distinct search: resnet's is no_attention's too (one network, recipe and space)
    tuned = json.loads((proj / "results/embedded/tune.json").read_text())["methods"]
    assert len(parents) == len({r["key"] for r in tuned.values()}) == len(METHODS) - 1
    (shared,) = [p for p in parents if p.data.tags["searched_methods"] == "resnet,no_attention"]
    assert tuned["no_attention"]["shared_with"] == "resnet"
    assert tuned["no_attention"]["mlflow_parent_run"] == shared.info.run_id == tuned["resnet"]["mlflow_parent_run"]
    for p in parents:
        trials = c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{p.info.run_id}'")
        assert len(trials) == TINY["tune"]["num_samples"]
        assert sum(t.data.tags.get("baseline") == "recipe" for t in trials) == 1
        epochs = TINY["tune"]["epochs"]
        for t in trials:  # FINISHED when it trained every epoch; KILLED only when ASHA stopped it earlier
            reached = len(c.get_metric_history(t.info.run_id, "val_top1"))
            assert reached and t.info.status == ("FINISHED" if reached == epochs else "KILLED"), (reached, t.info)
            if t.info.status == "KILLED":
                assert t.data.tags["stopped_by"] == "ASHA" and t.data.tags["stopped_at_epoch"] == str(reached)
    # the report's run is in the report experiment, linked to the training experiment both ways
    assert not c.search_runs([exp.experiment_id], "tags.stage = 'report'")
    (report,) = c.search_runs([c.get_experiment_by_name("attncnn-report").experiment_id], "tags.stage = 'report'")
    assert report.data.tags["training_experiment_id"] == exp.experiment_id
    assert c.get_experiment(exp.experiment_id).tags["report_run_id"] == report.info.run_id
    summary = json.loads((proj / "reports" / "summary.json").read_text())["embedded"]["recipe"]
    assert report.data.metrics["recipe.ours_vs_no_attention.diff"] == pytest.approx(
        summary["ours_vs_no_attention"]["diff"]
    )
    for field in ("verdict", "claimed_gain", "size_tested", "direction"):
        value = summary["ours_vs_no_attention"][field]["gain"]  # a field that does not apply has no tag
        assert report.data.tags.get(f"recipe.ours_vs_no_attention.{field}.gain") == (
            None if value is None else str(value)
        )
    assert summary["ours_vs_no_attention"]["size_tested"] == {"gain": False}  # the embedded set: direction only
    assert {a.path for a in c.list_artifacts(report.info.run_id)} >= {"tables.md", "tables.csv", "summary.json"}
    searched = json.loads((proj / "reports" / "summary.json").read_text())["embedded"]["search"]["attn_resnet"]
    curve = c.get_metric_history(report.info.run_id, "search.attn_resnet.expected_best")
    curve.sort(key=lambda m: m.step)
    assert [m.step for m in curve] == list(range(1, len(searched["expected_best"]) + 1))
    assert [m.value for m in curve] == pytest.approx(searched["expected_best"])


def test_second_repro_does_nothing(project) -> None:
    proj, _ = project
    out = run(["dvc", "repro"], proj).stdout
    assert "Running stage" not in out and "Data and pipelines are up to date" in out


def test_changing_one_method_reruns_only_that_method(project) -> None:
    proj, _ = project
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["methods"]["resnet"]["args"]["width"] = 6
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], proj, timeout=1500).stdout
    train = json.loads((proj / "results/embedded/train_metrics.json").read_text())
    assert train["units_reused"] >= (len(METHODS) - 1) * len(SEEDS) and train["units_trained"] >= len(SEEDS)
    # one evaluate stage per data set, which evaluates only the units it has not evaluated before: resnet's
    # new ones (its rows no longer share no_attention's units, which were evaluated already)
    assert "Running stage 'evaluate@embedded'" in out
    said = re.search(r"evaluate@embedded: \d+ rows, (\d+) units, (\d+) evaluated now, (\d+) from the eval store", out)
    assert said and int(said[2]) == train["units_trained"] and int(said[3]) == int(said[1]) - int(said[2])
    assert "Running stage 'tune@embedded'" in out  # it reads every method's settings, but reuses their searches
    tuned = json.loads((proj / "results/embedded/tune.json").read_text())["methods"]
    assert [m for m, r in tuned.items() if not r["cached"]] == ["resnet"]
    assert "Running stage 'fetch@embedded'" not in out  # a net changed: no data is fetched again


ANSI = re.compile(r"\x1b\[[0-9;]*m")
RAY_PREFIX = re.compile(r"^\([\w:]+ pid=\d+(?:, ip=[\d.]+)?\)\s*")
# The pipeline's own lines (stage messages, unit progress) and DVC's; anything else is somebody else's noise
OWN = re.compile(
    r"^(?:(?:check|fetch|preprocess|tune|train|evaluate|study|report)(?:@[\w-]+)?[: ]|\[[\w-]+ seed \d+\]|worker rank "
    r"|Running stage|> |(?:Updating|Generating) lock file|To track the changes|To enable auto staging|git add "
    r"|dvc config|Use `dvc push`|$)"
)


def test_the_terminal_shows_the_pipelines_own_lines_once(project) -> None:
    """At most 1 line in 10 of `dvc repro`'s output is not the pipeline's (or DVC's) own, and each unit's
    progress is printed once: as many "starting epoch 1" lines in the train stage as units it trained."""
    _, first = project
    lines = [RAY_PREFIX.sub("", ANSI.sub("", ln)).strip() for ln in (first.stdout + first.stderr).splitlines()]
    foreign = [ln for ln in lines if not OWN.match(ln)]
    assert not [ln for ln in lines if "DeprecationWarning" in ln]  # Ray's own notices are no news to a user
    assert len(foreign) <= len(lines) / 10, f"{len(foreign)} of {len(lines)} lines are not the pipeline's: {foreign}"
    trained = int(re.search(r"train@embedded: \d+ rows .*?, (\d+) to train", first.stdout)[1])
    out = first.stdout
    train_part = out[out.index("Running stage 'train@embedded'") :]
    train_part = train_part[: train_part.find("Running stage", 10)]
    assert len(re.findall(r"\] starting epoch 1/", train_part)) == trained


def test_dvc_repro_ends_with_the_headline(project) -> None:
    """The report stage ends `dvc repro` with the headline of each data set (ours, vs its ablation, vs the best
    baseline, each with its verdict), where the report page is and the MLflow address of the report run; after
    it only DVC's own lines (the lock file is staged by `core.autostage`, so no `git add` hint)."""
    proj, first = project
    lines = [ln for ln in first.stdout.splitlines() if ln.strip()]
    start = max(i for i, ln in enumerate(lines) if ln.startswith("Running stage 'report'"))
    own = [ln for ln in lines[start + 2 :] if ln.startswith("report: ")]
    h = json.loads((proj / "reports/summary.json").read_text())["embedded"]["headline"]
    assert own[0].startswith(
        f"report: embedded (not a paper benchmark: direction only): Attention CNN (ours) {h['ours']['mean']:.2f} %"
    )
    assert own[1].startswith("report:   convergence: ")
    assert own[2].startswith(f"report:   vs its ablation, {h['vs_ablation']['label']}") and own[2].endswith(
        h["vs_ablation"]["verdict"]["gain"]
    )
    assert own[3].startswith(f"report:   vs the best baseline, {h['vs_best']['label']}")
    assert own[4] == "report: tables, verdicts and figures: reports/index.html"
    c = mlflow_client(proj)
    rexp = c.get_experiment_by_name("attncnn-report").experiment_id
    # the first run's report run (later tests of this module change a method, and the report runs again)
    report = min(c.search_runs([rexp], "tags.dataset = 'embedded'"), key=lambda r: r.info.start_time)
    assert own[5].startswith(
        f"report: MLflow, report run of embedded: http://127.0.0.1:5000/#/experiments/{rexp}/runs/{report.info.run_id}"
    )
    after = lines[lines.index(own[-1]) + 1 :]
    assert all(ln.startswith(("Updating lock file", "Use `dvc push`")) for ln in after), after
    assert "To track the changes with git" not in first.stdout + first.stderr


ACCURACY = ("test_top1", "test_top5", "test_loss")


def test_a_truncated_or_edited_eval_store_entry_is_set_aside_and_its_unit_evaluated_again(project) -> None:
    """The evaluate stage as a user reruns it (last in this module: it rewrites the evaluation), after one unit's
    stored evaluation was cut short (a crash, a partial copy) and another's edited to ``test_top1: 99.99``: one
    warning each naming the file, why, and that the unit is evaluated again; both evaluated again, to the same
    results as before; no traceback."""
    proj, _ = project
    metrics = {p.name: json.loads(p.read_text()) for p in (proj / "results/embedded/metrics").glob("*.json")}
    # the two written last: units of the current rows (the store also keeps those of settings changed since)
    truncated, edited = sorted((proj / ".ray_results/eval/embedded").glob("*.json"), key=lambda p: p.stat().st_mtime)[
        -2:
    ]
    truncated.write_bytes(truncated.read_bytes()[:100])
    text, n = re.subn(r'"test_top1": [\d.]+', '"test_top1": 99.99', edited.read_text())
    assert n == 1
    edited.write_text(text)
    out = run(["dvc", "repro", "-f", "-s", "evaluate@embedded"], proj)
    said = out.stdout + out.stderr
    assert "Traceback" not in said, said[-3000:]
    for p, why in ((truncated, "not valid JSON"), (edited, "its checksum does not match its content")):
        warning = f"set aside the unreadable eval-store entry {p}: {why}"
        assert said.count(warning) == 1 and said.count(str(p)) == 1, said[-3000:]
        assert (p.with_name(p.name + ".unreadable")).is_file() and p.is_file()  # set aside, then written anew
    assert said.count("; the unit is evaluated again") == 2
    assert re.search(r"evaluate@embedded: \d+ rows, \d+ units, 2 evaluated now, \d+ from the eval store", said), said
    for name, before in metrics.items():  # the same accuracy (inference speed is measured anew)
        after = json.loads((proj / "results/embedded/metrics" / name).read_text())
        for track, seeds in before.items():
            for seed, m in seeds.items():
                got = after[track][seed]
                assert [got[k] for k in ACCURACY] == [m[k] for k in ACCURACY], (name, track, seed)
