"""The attention study (``pipeline.study``) for real: ``dvc repro study@embedded`` on a small copy of the
project trains every (cell, seed) through Ray with the diagnostics, one MLflow run each; a second run with
one scaling added trains only the new cells; the report's section is built from what it measured."""

from __future__ import annotations

import json
import math
import re
import subprocess

import pytest
import yaml
from scipy import stats as sp

from pipeline.report.study import cells, study_section, versus
from tests.project import make_project, mlflow_client, run

pytestmark = pytest.mark.slow

STUDY = {
    "enabled": True,
    "seeds": [0, 1],
    "epochs": 2,
    "placements": ["final", "stage", "stage_branch"],
    "scalings": ["none", "hw"],
    "variants": {"stage-hw-T4": {"placement": "stage", "scaling": "hw", "temperature": 4.0}},
    "diagnostics": 16,
}
SETTINGS = {
    "grid": {"datasets": ["embedded"], "methods": ["attn_resnet"], "seeds": [0]},
    "datasets": {"embedded": {"fetch": {"seed": 0, "num_train": 600, "num_test": 200, "clutter": 4, "noise": 0.08}}},
    "compute": {"num_workers": 1},
    "study": STUDY,
}


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    proj = make_project(tmp_path_factory.mktemp("study"), SETTINGS)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["study"]["variants"] = STUDY["variants"]  # exactly these (make_project merges mappings)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "variants"], cwd=proj, check=True
    )
    first = run(["dvc", "repro", "study@embedded"], proj, timeout=1500)
    return proj, first


def test_every_cell_and_seed_trained_with_its_diagnostics(studied) -> None:
    proj, first = studied
    study = json.loads((proj / "results/embedded/study.json").read_text())
    assert set(study["cells"]) == {
        "final/none",
        "final/hw",
        "stage/none",
        "stage/hw",
        "stage_branch/none",
        "stage_branch/hw",
        "stage-hw-T4",
    }
    assert "study@embedded: 7 cells x 2 seeds = 14 units, 0 already in the unit store, 14 to train" in first.stdout
    modules = {
        "final": ["stage_attn.2"],
        "stage": ["stage_attn.0", "stage_attn.1", "stage_attn.2"],
        "stage_branch": ["stages.0.0.attn", "stages.1.0.attn", "stages.2.0.attn"],
    }
    for name, cell in study["cells"].items():
        for unit in cell["seeds"].values():
            assert [h["epoch"] for h in unit["history"]] == [1, 2]
            assert unit["test_top1"] == unit["history"][-1]["val_top1"]
            got = sorted({k.split("/")[1] for k in unit["history"][-1] if k.count("/") == 2})
            assert got == modules[cell["args"]["placement"]], name
            assert set(unit["diag_start"]) == set(k for k in unit["history"][-1] if k.startswith("diag/"))
            for k, v in unit["diag_start"].items():  # the net as it starts: uniform maps
                if k.endswith("/entropy"):
                    assert v == pytest.approx(1.0)
    # literal scaling on the trunk: the features shrink by H*W at every module from the start
    start = study["cells"]["stage/none"]["seeds"]["0"]["diag_start"]
    assert start["diag/stage_attn.0/scale"] == pytest.approx(1 / 1024, rel=1e-3)
    assert start["diag/stage_attn.2/scale"] == pytest.approx(1 / 64, rel=1e-3)


def test_one_mlflow_run_per_cell_and_seed_with_diagnostics_per_epoch(studied) -> None:
    proj, _ = studied
    c = mlflow_client(proj)
    exp = c.get_experiment_by_name("attncnn-embedded-study")
    runs = c.search_runs([exp.experiment_id], "tags.stage = 'study'")
    assert len(runs) == 14 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.info.run_name for r in runs} >= {"stage/none seed 0", "stage-hw-T4 seed 1"}
    r = next(r for r in runs if r.info.run_name == "stage/hw seed 1")
    assert r.data.tags["placement"] == "stage" and r.data.tags["scaling"] == "hw" and r.data.tags["cell"] == "stage/hw"
    steps = [m.step for m in c.get_metric_history(r.info.run_id, "diag/stage_attn.1/entropy")]
    assert steps == [0, 1, 2]  # before training and after each epoch
    assert [m.step for m in c.get_metric_history(r.info.run_id, "val_top1")] == [1, 2]


def test_the_report_section_follows_from_the_numbers(studied, tmp_path) -> None:
    proj, _ = studied
    study = json.loads((proj / "results/embedded/study.json").read_text())
    lines, summary = study_section(study, tmp_path)
    md = "\n".join(lines)
    assert md.startswith("## Where attention helps (the paper's Sec. 7.2)")
    assert "| `stage_branch` | " in md and "### What the study found" in md
    assert (tmp_path / "study" / "diagnostics.png").read_bytes()[:4] == b"\x89PNG"
    cs = cells(study)
    intervals_checked = 0
    for name, cell in cs.items():
        if cell.placement == "final" and "/" in name:
            continue
        ref = cs[f"final/{cell.scaling}"]
        diffs = [cell.top1[s] - ref.top1[s] for s in sorted(cell.top1)]
        c, word = versus(cell, ref)
        assert c.test == "paired"  # for each seed: the same backbone start and data order in every cell
        assert c.diff == pytest.approx(sum(diffs) / len(diffs))
        if len(set(diffs)) > 1:  # equal differences have no spread: scipy gives no interval to compare
            # scipy's paired t-test for the seeds' part, then the test set's error added (pipeline.verdicts.RULES)
            t = sp.ttest_rel(list(cell.top1.values()), [ref.top1[s] for s in cell.top1])
            qa, qb = cell.summary.mean / 100, ref.summary.mean / 100
            se_test = 100 * math.sqrt((qa * (1 - qa) + qb * (1 - qb)) / study["num_test"])
            se_seeds = c.diff / t.statistic
            se = math.sqrt(se_seeds**2 + se_test**2)
            half = sp.t.ppf(0.975, se**4 / (se_seeds**4 / t.df)) * se
            assert (c.ci_low, c.ci_high) == pytest.approx((c.diff - half, c.diff + half), abs=1e-6)
            intervals_checked += 1
        expected = "better" if c.ci_low > 0 else "worse" if c.ci_high < 0 else "no difference shown"
        assert word == expected and summary["cells"][name]["vs_final"] == word
    assert intervals_checked > 0  # the interval rule met scipy at least once, not skipped everywhere
    assert re.search(r"The one-module network \(`final/hw`\) reaches \d+\.\d %", md)


def test_changing_one_setting_trains_only_the_new_cells(studied) -> None:
    proj, _ = studied
    out = run(["dvc", "exp", "run", "-S", "study.scalings=[none,hw,gated]", "study@embedded"], proj, timeout=1500)
    # 3 placements x 1 new scaling x 2 seeds; the 14 units of the first run come from the unit store
    assert "study@embedded: 10 cells x 2 seeds = 20 units, 14 already in the unit store, 6 to train" in out.stdout
    study = json.loads((proj / "results/embedded/study.json").read_text())
    assert study["units_trained"] == 6 and study["units_reused"] == 14
