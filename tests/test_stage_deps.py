"""Each stage's code deps in dvc.yaml match what the stage imports (pipeline.codebase), so DVC cannot serve
results computed by code that has since changed, nor re-run a stage for code it never runs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from pipeline import codebase
from pipeline.codebase import check_deps, code_digest, import_closure, minimal_deps, stage_roots

ROOT = Path(__file__).resolve().parents[1]


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return root


def closure(root: Path, *roots: str) -> set[str]:
    return {p.as_posix() for p in import_closure(roots, root)}


BASE = {"stages/__init__.py": "", "pipeline/__init__.py": "", "pipeline/unused.py": ""}
RUN = {"stages/__init__.py", "stages/s.py", "pipeline/__init__.py"}

# feature: (files besides BASE, expected closure of `stages.s` besides RUN); pipeline/unused.py is never reached
CASES = {
    "absolute import": ({"stages/s.py": "import pipeline.a", "pipeline/a.py": ""}, {"pipeline/a.py"}),
    "absolute from-import": ({"stages/s.py": "from pipeline.a import x", "pipeline/a.py": "x = 1"}, {"pipeline/a.py"}),
    "transitive": (
        {"stages/s.py": "from pipeline.a import x", "pipeline/a.py": "from pipeline.b import x", "pipeline/b.py": ""},
        {"pipeline/a.py", "pipeline/b.py"},
    ),
    "relative sibling": (
        {"stages/s.py": "import pipeline.a", "pipeline/a.py": "from .b import x", "pipeline/b.py": ""},
        {"pipeline/a.py", "pipeline/b.py"},
    ),
    "relative parent": (
        {"stages/s.py": "import pipeline.p.a", "pipeline/p/__init__.py": "", "pipeline/p/a.py": "from ..b import x"}
        | {"pipeline/b.py": ""},
        {"pipeline/p/__init__.py", "pipeline/p/a.py", "pipeline/b.py"},
    ),
    "from package import submodule": (
        {"stages/s.py": "from pipeline.p import mod", "pipeline/p/__init__.py": "", "pipeline/p/mod.py": ""}
        | {"pipeline/p/other.py": ""},
        {"pipeline/p/__init__.py", "pipeline/p/mod.py"},
    ),
    "from . import submodule": (
        {"stages/s.py": "import pipeline.p", "pipeline/p/__init__.py": "from . import mod, attr"}
        | {"pipeline/p/mod.py": "", "pipeline/p/other.py": ""},
        {"pipeline/p/__init__.py", "pipeline/p/mod.py"},
    ),
    "function-local import": (
        {"stages/s.py": "def main():\n    from pipeline import a\n", "pipeline/a.py": ""},
        {"pipeline/a.py"},
    ),
    "TYPE_CHECKING import": (
        {"stages/s.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pipeline.a\n"}
        | {"pipeline/a.py": ""},
        {"pipeline/a.py"},
    ),
    "parent package __init__": (
        {"stages/s.py": "import pipeline.x.y.z", "pipeline/x/__init__.py": "", "pipeline/x/y/__init__.py": ""}
        | {"pipeline/x/y/z.py": "", "pipeline/x/y/w.py": ""},
        {"pipeline/x/__init__.py", "pipeline/x/y/__init__.py", "pipeline/x/y/z.py"},
    ),
    # numpy/ and pipelinex/ exist under the root, yet are not project packages
    "stdlib and third party ignored": (
        {"stages/s.py": "import os, json\nimport numpy\nfrom torch import nn\nimport pipelinex\nimport pipeline\n"}
        | {"numpy/__init__.py": "", "pipelinex/__init__.py": ""},
        set(),
    ),
}


@pytest.mark.parametrize("files, expected", CASES.values(), ids=CASES.keys())
def test_closure_follows_imports(tmp_path: Path, files: dict[str, str], expected: set[str]) -> None:
    write(tmp_path, BASE | files)
    assert closure(tmp_path, "stages.s") == RUN | expected


def test_closure_is_sorted_relative_paths(tmp_path: Path) -> None:
    write(tmp_path, BASE | {"stages/s.py": "import pipeline.b, pipeline.a", "pipeline/a.py": "", "pipeline/b.py": ""})
    got = import_closure(["stages.s"], tmp_path)
    assert got == sorted(got) and all(not p.is_absolute() for p in got)
    assert [p.as_posix() for p in got][:2] == ["pipeline/__init__.py", "pipeline/a.py"]


@pytest.mark.parametrize(
    "source, missing",
    [
        ("from pipeline.gone import x", "pipeline.gone"),
        ("import pipeline.gone.deeper", "pipeline.gone"),
        ("def f():\n    from .gone import x\n", "stages.gone"),
    ],
)
def test_closure_rejects_an_import_with_no_file(tmp_path: Path, source: str, missing: str) -> None:
    write(tmp_path, BASE | {"stages/s.py": source})
    with pytest.raises(ValueError, match=rf"stages/s\.py imports {missing}\b"):
        import_closure(["stages.s"], tmp_path)


# A small project and a dvc.yaml whose deps are exact: every form of cmd, matrix placeholders, data deps.
PROJECT = BASE | {
    "stages/fetch.py": "from pipeline.data import load",
    "stages/train.py": "import sys\nfrom pipeline.train.run import go\n",
    "stages/report.py": "import json",
    "pipeline/data/__init__.py": "",
    "pipeline/data/load.py": "from .fmt import parse",
    "pipeline/data/fmt.py": "",
    "pipeline/train/__init__.py": "",
    "pipeline/train/run.py": "from pipeline.data.load import x\n\ndef go():\n    from pipeline.spec import key\n",
    "pipeline/train/extra.py": "",
    "pipeline/spec.py": "",
}
DVC_YAML = """\
stages:
  fetch:
    matrix:
      dataset: [a, b]
    cmd: python -m stages.fetch ${item.dataset} data/raw/${item.dataset}
    deps:
      - stages/__init__.py
      - stages/fetch.py
      - pipeline/__init__.py
      - pipeline/data
    outs:
      - data/raw/${item.dataset}
  train:
    matrix:
      dataset: [a, b]
    cmd: >-
      python -m stages.train ${item.dataset} data/raw/${item.dataset}
      results/${item.dataset}/train
    deps:
      - stages/__init__.py
      - stages/train.py
      - pipeline/__init__.py
      - pipeline/data/
      - pipeline/spec.py
      - pipeline/train/__init__.py
      - pipeline/train/run.py
      - data/raw/${item.dataset}
  report:
    cmd:
      - mkdir -p reports
      - python -m stages.report results reports
    deps:
      - stages/__init__.py
      - stages/report.py
      - results
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write(tmp_path, PROJECT | {"dvc.yaml": DVC_YAML})
    return tmp_path / "dvc.yaml"


def edit_deps(dvc_yaml: Path, stage: str, remove: str | None = None, add: str | None = None) -> None:
    doc = yaml.safe_load(dvc_yaml.read_text())
    deps = doc["stages"][stage]["deps"]
    if remove:
        deps.remove(remove)
    if add:
        deps.append(add)
    dvc_yaml.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_stage_roots(project: Path) -> None:
    assert stage_roots(project) == {"fetch": ["stages.fetch"], "train": ["stages.train"], "report": ["stages.report"]}


def test_exact_deps_pass(project: Path) -> None:
    assert check_deps(project) == []


@pytest.mark.parametrize(
    "stage, dep, named",
    [
        ("train", "pipeline/spec.py", ["pipeline/spec.py"]),  # imported only inside a function
        ("train", "pipeline/train/__init__.py", ["pipeline/train/__init__.py"]),  # a parent package
        ("train", "stages/train.py", ["stages/train.py"]),  # the script itself
        ("fetch", "pipeline/data", ["pipeline/data/__init__.py", "pipeline/data/load.py", "pipeline/data/fmt.py"]),
    ],
)
def test_a_removed_dep_is_reported(project: Path, stage: str, dep: str, named: list[str]) -> None:
    edit_deps(project, stage, remove=dep)
    problems = check_deps(project)
    assert len(problems) == len(named), problems
    for module in named:
        wanted = f"{module} but its deps do not list it (add `{module}`)"
        assert any(p.startswith(f"stage '{stage}' ") and p.endswith(wanted) for p in problems), (module, problems)


def test_the_reported_line_reads_as_documented(project: Path) -> None:
    edit_deps(project, "train", remove="pipeline/spec.py")
    assert check_deps(project) == [
        "stage 'train' imports pipeline/spec.py but its deps do not list it (add `pipeline/spec.py`)"
    ]


def test_a_too_broad_directory_dep_is_reported(project: Path) -> None:
    edit_deps(project, "train", remove="pipeline/train/run.py", add="pipeline/train")
    assert check_deps(project) == [
        "stage 'train' lists pipeline/train, which holds code it never imports (pipeline/train/extra.py): "
        "a change there would re-run it needlessly; list the files instead"
    ]


def test_a_listed_file_never_imported_is_reported(project: Path) -> None:
    edit_deps(project, "fetch", add="pipeline/spec.py")
    (problem,) = check_deps(project)
    assert problem.startswith("stage 'fetch' lists pipeline/spec.py, which it never imports")


def test_non_code_deps_are_not_checked(project: Path) -> None:
    edit_deps(project, "fetch", add="data/anything/${item.dataset}")
    edit_deps(project, "report", add="configs")
    assert check_deps(project) == []


def test_main_prints_deps_that_pass_the_check(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_deps(project, "train", remove="pipeline/spec.py")
    assert codebase.main([str(project)]) == 1
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["deps"] == [
        "stages/train.py",
        "pipeline/__init__.py",
        "pipeline/data",  # every .py under it is imported: compressed
        "pipeline/spec.py",
        "pipeline/train/__init__.py",  # pipeline/train/extra.py is not: listed file by file
        "pipeline/train/run.py",
        "stages/__init__.py",
        "data/raw/${item.dataset}",
    ]
    doc = yaml.safe_load(project.read_text())
    for name, stage in printed.items():
        doc["stages"][name]["deps"] = stage["deps"]
    project.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert check_deps(project) == []
    assert codebase.main([str(project)]) == 0


def test_minimal_deps_lists_the_script_first(tmp_path: Path) -> None:
    write(tmp_path, PROJECT)
    assert minimal_deps(["stages.fetch"], tmp_path)[0] == "stages/fetch.py"


def test_code_digest_follows_the_closure(tmp_path: Path) -> None:
    write(tmp_path, PROJECT)
    digest = code_digest(["pipeline.train.run"], tmp_path)
    assert len(digest) == 12 and int(digest, 16) >= 0

    def after(rel: str, text: str) -> str:
        before = (tmp_path / rel).read_text() if (tmp_path / rel).exists() else None
        (tmp_path / rel).write_text(text)
        try:
            return code_digest(["pipeline.train.run"], tmp_path)
        finally:
            if before is None:
                (tmp_path / rel).unlink()
            else:
                (tmp_path / rel).write_text(before)

    for inside in ("pipeline/spec.py", "pipeline/data/fmt.py", "pipeline/train/__init__.py", "pipeline/__init__.py"):
        assert after(inside, "# changed\n") != digest, inside
    for outside in ("pipeline/train/extra.py", "pipeline/unused.py", "stages/fetch.py", "pipeline/train/new.py"):
        assert after(outside, "# changed\n") == digest, outside
    assert code_digest(["pipeline.train.run"], tmp_path) == digest


def test_real_dvc_yaml_deps_match_the_imports() -> None:
    problems = check_deps(ROOT / "dvc.yaml")
    assert not problems, "\n".join(["dvc.yaml deps (run `python -m pipeline.codebase dvc.yaml`):", *problems])


def test_the_committed_dvc_lock_is_current() -> None:
    """dvc.lock is committed and matches the tree: no stage's code or params dependency differs from what the
    lock records (``dvc status``). Outputs absent, as in a fresh clone, and data a local run rewrote are fine:
    what must not happen is a commit that changes pipeline code or settings without the lock of its run."""
    import json
    import os
    import subprocess
    import sys

    tracked = subprocess.run(["git", "ls-files", "dvc.lock"], cwd=codebase.ROOT, capture_output=True, text=True)
    assert tracked.stdout.strip() == "dvc.lock", "dvc.lock is not committed"
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    r = subprocess.run(
        ["dvc", "status", "--json"], cwd=codebase.ROOT, capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    stale = {}
    for stage, changes in json.loads(r.stdout or "{}").items():
        for change in changes if isinstance(changes, list) else []:
            if not isinstance(change, dict):
                stale.setdefault(stage, []).append(change)  # e.g. "changed command", "always changed"
                continue
            code = [p for p in change.get("changed deps", {}) if p.startswith(("pipeline/", "stages/"))]
            params = change.get("changed params", {})
            if code or params:
                stale.setdefault(stage, []).append({"code": code, "params": params})
    assert not stale, f"dvc.lock is stale (run `dvc repro` and commit dvc.lock): {stale}"


def test_every_output_of_any_data_set_is_ignored_by_git() -> None:
    """Every output dvc.yaml declares, for a data set not in the default grid too, is git-ignored before any stage
    ran: DVC writes an output's own .gitignore entry only once its stage succeeded, so a failed or killed fetch
    left the archive, its Parquet and tune.json as untracked files a `git add -A` commits."""
    import subprocess

    stages = yaml.safe_load((codebase.ROOT / "dvc.yaml").read_text())["stages"]
    outs = [
        next(iter(o)) if isinstance(o, dict) else o
        for s in stages.values()
        for key in ("outs", "metrics")
        for o in s.get(key, [])
    ]
    paths = [o.replace("${item.dataset}", "cifar10") for o in outs]
    paths += [p + "/x.parquet" for p in paths if p.startswith("data/")]
    r = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=codebase.ROOT, capture_output=True, text=True)
    ignored = set(r.stdout.split())
    assert set(paths) <= ignored, sorted(set(paths) - ignored)
