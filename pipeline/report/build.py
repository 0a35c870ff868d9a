"""The report stage: for each data set of the grid, what the stages wrote (``read``) turned into the record of
its numbers (``record``), its words and tables (``markdown``) and pictures (``figures``); the attention study's
section (``study``); all of it written to ``reports/`` in one move and logged to MLflow (``runs``)."""

from __future__ import annotations

import csv
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.config import Params
from pipeline.io import scratch_dir, write_json
from pipeline.provenance import provenance
from pipeline.report import figures, markdown, record, search
from pipeline.report.page import markdown_to_html
from pipeline.report.read import Inputs, read_inputs, read_study
from pipeline.report.runs import log_report_runs
from pipeline.report.setting import paper_setting
from pipeline.report.study import study_section

log = logging.getLogger(__name__)
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


@dataclass(frozen=True)
class Section:
    """One data set's part of the report: what was read, the record of its numbers, and its Markdown text."""

    inputs: Inputs
    record: record.DatasetRecord
    searches: list[search.SearchCurve]  # the searches' tuning curves; [] when no search ran
    text: str

    @property
    def summary(self) -> dict[str, Any]:
        out = record.summary(self.record)
        if self.searches:
            out[search.SEARCH] = search.search_summary(self.searches)
        return out

    @property
    def rows(self) -> list[dict[str, Any]]:
        return record.csv_rows(self.record)


def dataset_report(params: Params, dataset: str, results: Path, data_root: Path, paper: Params | None) -> Section:
    """The record, text and inputs of one data set; ``paper``: the paper's setting (``paper_setting``)."""
    inputs = read_inputs(params, results, data_root, dataset)
    rec = record.record_of(
        params, dataset, inputs.kind, inputs.manifest, inputs.rows, inputs.tuned, curves=inputs.curves, paper=paper
    )
    searches = search.curves_of(params, inputs.tuned)
    return Section(inputs, rec, searches, markdown.dataset_text(params, inputs, rec, searches))


def make_report(params: Params, results_dir: str | Path, data_root: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write ``out_dir``/{tables.md, index.html, tables.csv, summary.json, metrics.json, provenance.json,
    study.json, figures/} and log them to MLflow; the report ends with each data set's headline."""
    results, data_root, out_dir = Path(results_dir), Path(data_root), Path(out_dir)
    paper = paper_setting(params)
    sections = {d: dataset_report(params, d, results, data_root, paper) for d in params.grid.datasets}
    prov = provenance(datasets={d: _provenance(s.inputs) for d, s in sections.items()})
    summary = {d: s.summary for d, s in sections.items()}
    rows = [r for s in sections.values() for r in s.rows]
    out_dir.mkdir(parents=True, exist_ok=True)
    # beside the outputs (renames, not copies); a killed stage's is removed by the next run (``scratch_dir``)
    with scratch_dir(out_dir / "report") as tmp:
        (tmp / "figures" / "confusion").mkdir(parents=True)
        fig_dir = tmp / "figures"
        texts = [
            "\n".join([s.text, *figures.write_figures(params, s.inputs, s.searches, fig_dir)])
            for s in sections.values()
        ]
        study_text, study_summary = study_section(read_study(params, results), fig_dir)
        md = "\n".join(_header(prov) + texts + study_text)
        (tmp / "tables.md").write_text(md)
        (tmp / "index.html").write_text(markdown_to_html(md))
        with open(tmp / "tables.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        write_json(tmp / "summary.json", summary)
        write_json(tmp / "metrics.json", {d: record.headline_metrics(s[record.HEADLINE]) for d, s in summary.items()})
        write_json(tmp / "provenance.json", prov)
        write_json(tmp / "study.json", study_summary)
        runs = log_report_runs(params, summary, tmp, prov["git"]["commit"])
        _move_into_place(tmp, out_dir)
    for d, s in summary.items():
        for line in markdown.headline_lines(d, s[record.HEADLINE], s[record.BENCHMARK]):
            log.info("report: %s", line)
    log.info("report: tables, verdicts and figures: %s", out_dir / "index.html")
    for d, path in runs.items():
        log.info("report: MLflow, report run of %s: %s", d, tracking.ui_url(path))
    return {"rows": rows, "summary": summary}


REPEATABLE = (
    "These numbers are this machine's: the same commit and settings on the same CPU model, thread count and torch "
    "build give them again bit for bit; on another CPU the arithmetic rounds differently and the means move, "
    'within their intervals (docs/report.md, "Exactly repeatable, and what drifts").'
)


def _header(prov: dict[str, Any]) -> list[str]:
    git, hw = prov["git"], prov["hardware"]
    return [
        "# Attention-Based CNNs for Image Classification: reproduction report",
        "",
        f"Generated by `dvc repro` (stage `report`) at git commit `{git['commit'][:12]}`"
        f"{' (uncommitted changes)' if git['dirty'] else ''} on {hw['host']} "
        f"({hw['cpu_count']} CPUs, GPUs: {', '.join(hw['gpus']) or 'none'}). "
        "Full provenance: `provenance.json`.",
        "",
        REPEATABLE,
        "",
    ]


def _provenance(inputs: Inputs) -> dict[str, Any]:
    man = inputs.manifest
    return {
        "source_sha256": man.source_sha256,
        "source_files": man.source_files or None,
        "source_origin": man.source_origin or None,
        "data_sha256": man.data_sha256,
        "parquet": man.files,
        "train_wall_time_s": inputs.train_wall_time_s,
        "units": {
            f"{track}/{m}/seed{s}": u.spec
            for track, per_method in inputs.rows.items()
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
