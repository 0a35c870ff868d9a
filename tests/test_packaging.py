"""Every third-party package the code imports is declared in pyproject.toml, and constraints.txt pins each one."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions

import tomllib

from tests.project import ROOT

OWN = {"pipeline", "stages", "tests", "benchmarks"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(reqs: list[str]) -> set[str]:
    return {_norm(re.match(r"[A-Za-z0-9_.-]+", r).group(0)) for r in reqs}


def _imports(folder: str) -> set[str]:
    out = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                out.add(node.module.split(".")[0])
    return out - OWN - set(sys.stdlib_module_names) - {"__future__"}


def test_every_imported_package_is_declared_and_pinned() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _requirement_names(meta["dependencies"])
    dev = runtime | _requirement_names(meta["optional-dependencies"]["dev"])
    dists = packages_distributions()
    undeclared = {}
    for folder, declared in (("pipeline", runtime), ("stages", runtime), ("tests", dev), ("benchmarks", dev)):
        for module in sorted(_imports(folder)):
            names = {_norm(d) for d in dists.get(module, [module])}
            if not names & declared:
                undeclared[f"{folder}: import {module}"] = sorted(names)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    pinned = {
        _norm(line.split("==")[0]) for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line
    }
    assert not dev - pinned, f"declared but not pinned in constraints.txt: {sorted(dev - pinned)}"
