"""Which project code a stage runs: the import closure of a module, found by reading the source (nothing is
imported).

DVC re-runs a stage when one of its ``deps`` changes, so a stage whose deps omit a module it imports can
serve results computed by old code. ``check_deps`` compares each stage's ``deps`` in dvc.yaml with the
closure of the module its ``cmd`` runs; ``code_digest`` hashes a closure, so a content key cannot drift from
the code it names. ``python -m pipeline.codebase dvc.yaml`` prints the deps each stage should list.

The closure is static: ``importlib.import_module`` and ``__import__`` with computed names are not followed.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import logging
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
# Top-level packages that are this project's code; every other import is stdlib or third party.
PACKAGES = ("pipeline", "stages")

# `python -m mod`, `.venv/bin/python3.11 -u -m mod`, `python -mmod`, anywhere in a shell line
_MODULE_CMD = re.compile(r"(?:^|[\s;&|(])(?:\S*/)?python[\d.]*(?:\s+-[^\s-]\S*)*?\s+-m\s*([A-Za-z_][\w.]*)")


def _locate(name: str, root_dir: Path) -> tuple[bool, Path | None]:
    """(exists, file) for the dotted module ``name``: a package's ``__init__.py`` or a module's ``.py``.
    A directory without ``__init__.py`` is a namespace package: it exists and has no file."""
    base = root_dir.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return True, base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return True, base.with_suffix(".py")
    return base.is_dir(), None


def _is_package(name: str, root_dir: Path) -> bool:
    return root_dir.joinpath(*name.split(".")).is_dir()


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement in ``body``, nested ones included (in functions, classes, if/try/with/loop/match
    blocks); import statements can occur nowhere else, so this is all of a file's imports for a fraction of
    the cost of ``ast.walk``."""
    for node in body:
        yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            for child in getattr(node, field, ()):
                nested = isinstance(child, ast.excepthandler | ast.match_case)  # clauses, not statements
                yield from _statements(child.body if nested else [child])


@functools.lru_cache(maxsize=1024)
def _import_statements(source: bytes, filename: str) -> tuple[tuple[int, str, tuple[str, ...] | None, int], ...]:
    """(level, module, names or None for ``import x``, line) of every import statement in ``source``, nested
    ones included: at module level, inside functions (they run when the function is called) and under
    ``if TYPE_CHECKING:`` (counted, to err on the side of re-running). Keyed by content, so never stale."""
    out: list[tuple[int, str, tuple[str, ...] | None, int]] = []
    for node in _statements(ast.parse(source, filename=filename).body):
        if isinstance(node, ast.Import):
            out.extend((0, a.name, None, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or "", tuple(a.name for a in node.names), node.lineno))
    return tuple(out)


def _imports(file: Path, module: str, root_dir: Path) -> Iterator[str]:
    """The dotted project modules ``file`` (the module ``module``) imports anywhere in its body."""
    rel = file.relative_to(root_dir).as_posix()
    try:
        statements = _import_statements(file.read_bytes(), rel)
    except SyntaxError as e:
        raise ValueError(f"{rel} does not parse: {e}") from e
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    for level, name, names, line in statements:
        if level:
            parts = package.split(".") if package else []
            if level > len(parts):
                raise ValueError(f"{rel}: relative import beyond its top-level package (line {line})")
            base = ".".join(parts[: len(parts) - (level - 1)] + ([name] if name else []))
        elif name.partition(".")[0] in PACKAGES:
            base = name
        else:
            continue
        yield base
        # `from pkg import name`: name may be a submodule, which the statement then imports
        if names is not None and _is_package(base, root_dir):
            yield from (f"{base}.{n}" for n in names if n != "*" and _locate(f"{base}.{n}", root_dir)[0])


def import_closure(roots: Iterable[str], root_dir: Path = ROOT) -> list[Path]:
    """The project files (under ``PACKAGES``, relative to ``root_dir``, sorted) that importing the dotted
    modules ``roots`` executes, transitively: absolute and relative imports, ``from pkg import submodule``,
    imports inside functions (they run when the function is called) and under ``if TYPE_CHECKING:``
    (included: the closure errs toward re-running), and the ``__init__.py`` of every enclosing package.
    Stdlib and third-party imports, and roots outside ``PACKAGES``, are ignored. Raises ValueError, naming
    the importer, for a project import that resolves to no file."""
    root_dir = Path(root_dir)
    seen: set[str] = set()
    files: set[Path] = set()
    todo: list[tuple[str, str]] = []
    for r in roots:
        if r.partition(".")[0] in PACKAGES:
            todo.append((r, "root"))
        else:
            log.debug("root %s is not project code; ignored", r)
    while todo:
        name, importer = todo.pop()
        parts = name.split(".")
        # importing a.b.c runs a/__init__.py, then a/b/__init__.py, then a/b/c.py
        for i in range(1, len(parts) + 1):
            mod = ".".join(parts[:i])
            if mod in seen:
                continue
            found, file = _locate(mod, root_dir)
            if not found:
                raise ValueError(f"{importer} imports {mod}, which resolves to no file under {root_dir}")
            seen.add(mod)
            if file is not None:
                files.add(file.relative_to(root_dir))
                todo.extend((m, file.relative_to(root_dir).as_posix()) for m in _imports(file, mod, root_dir))
    return sorted(files)


def code_digest(roots: Iterable[str], root_dir: Path = ROOT) -> str:
    """First 12 hex chars of a sha256 over the relative paths and bytes of ``import_closure(roots)``."""
    h = hashlib.sha256()
    for rel in import_closure(roots, root_dir):
        data = (root_dir / rel).read_bytes()
        h.update(f"{rel.as_posix()}\0{len(data)}\0".encode() + data)
    return h.hexdigest()[:12]


# The floors of the project's code, lowest first. A module imports only modules on its own floor or below, and
# the packages and top-level modules (``unit``) form no import circle: ``upward_imports`` and ``circles`` say
# where that fails (tests/test_layers.py). A new module is placed here, on the lowest floor its imports allow.
# fmt: off
FLOORS: tuple[tuple[str, ...], ...] = (
    # leaves: nothing of the project below them (but one another)
    ("pipeline", "pipeline.errors", "pipeline.checksum", "pipeline.io", "pipeline.events", "pipeline.redact",
     "pipeline.codebase", "pipeline.provenance", "pipeline.plots", "pipeline.paper", "pipeline.stats",
     "pipeline.verdicts"),
    ("pipeline.config", "pipeline.config_checks", "pipeline.settings", "pipeline.device"),  # the settings; torch
    ("pipeline.compute", "pipeline.tracking", "pipeline.progress", "pipeline.records"),  # Ray, MLflow, records
    ("pipeline.data",),  # fetch and preprocess
    ("pipeline.models",),  # the nets (``models.checks`` checks them against the settings)
    ("pipeline.spec", "pipeline.units"),  # a unit, and the work of a data set
    ("pipeline.serving", "pipeline.plan"),  # a trained net as a model; the estimate before the spend
    ("pipeline.devices",),  # the plan priced for a GPU not at hand
    ("pipeline.train",),  # the training loop, its Ray workers and the train stage
    ("pipeline.trials", "pipeline.tune", "pipeline.study", "pipeline.evaluate"),  # stages training through it
    ("pipeline.report",),  # the report stage
    ("pipeline.cli", "pipeline.profiles"),  # entry points
)
# fmt: on


def unit(module: str) -> str:
    """The package or top-level module ``module`` belongs to (``pipeline.train.loop`` -> ``pipeline.train``)."""
    return ".".join(module.split(".")[:2])


def import_graph(package: str = "pipeline", root_dir: Path = ROOT) -> dict[str, set[str]]:
    """Every module under ``package`` -> the project modules it imports (anywhere in its body)."""
    base = root_dir / package
    mods = {}
    for f in _py_files(base, root_dir):
        name = ".".join(f.with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = root_dir / f
    return {m: {i for i in _imports(f, m, root_dir) if i in mods and i != m} for m, f in mods.items()}


def upward_imports(floors: tuple[tuple[str, ...], ...] = FLOORS, root_dir: Path = ROOT) -> list[str]:
    """One line per module on no floor, and per import from a floor to one above it."""
    floor = {u: i for i, names in enumerate(floors) for u in names}
    graph = import_graph(root_dir=root_dir)
    out = [f"{m} is on no floor (pipeline.codebase.FLOORS)" for m in sorted(graph) if unit(m) not in floor]
    for m, imported in sorted(graph.items()):
        for i in sorted(imported):
            if unit(m) in floor and unit(i) in floor and floor[unit(i)] > floor[unit(m)]:
                out.append(f"{m} (floor {floor[unit(m)]}) imports {i} (floor {floor[unit(i)]})")
    return out


def circles(root_dir: Path = ROOT) -> list[list[str]]:
    """The import circles between packages and top-level modules (``unit``), each sorted (Tarjan's algorithm)."""
    edges: dict[str, set[str]] = {}
    for m, imported in import_graph(root_dir=root_dir).items():
        edges.setdefault(unit(m), set()).update(unit(i) for i in imported if unit(i) != unit(m))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def _load(dvc_yaml: Path | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(dvc_yaml, Mapping):
        return dict(dvc_yaml.get("stages") or {})
    with open(dvc_yaml) as f:
        return dict((yaml.safe_load(f) or {}).get("stages") or {})


def _body(stage: Mapping[str, Any]) -> Mapping[str, Any]:
    return stage.get("do", stage) if "foreach" in stage else stage  # the older `foreach: / do:` form


def _run_modules(roots: Iterable[str], root_dir: Path) -> list[str]:
    """``python -m pkg`` runs ``pkg/__main__.py`` (after ``pkg/__init__.py``)."""
    return [f"{r}.__main__" if (root_dir.joinpath(*r.split(".")) / "__main__.py").is_file() else r for r in roots]


def stage_roots(dvc_yaml: Path | Mapping[str, Any]) -> dict[str, list[str]]:
    """For each stage in ``dvc_yaml`` (a path, or the parsed document), the modules its ``cmd`` runs with
    ``python -m`` (``cmd`` a string or a list; ``${...}`` placeholders are left as they are, since only the
    module name matters)."""
    out: dict[str, list[str]] = {}
    for name, stage in _load(dvc_yaml).items():
        cmd = _body(stage).get("cmd", "")
        cmds = [cmd] if isinstance(cmd, str) else list(cmd)
        out[name] = [m for c in cmds for m in _MODULE_CMD.findall(str(c))]
    return out


def _norm(dep: str) -> str:
    return Path(dep.strip()).as_posix().rstrip("/")


def _covers(dep: str, file: Path) -> bool:
    d = Path(dep).parts
    return file.parts[: len(d)] == d


def _deps(stage: Mapping[str, Any]) -> list[str]:
    deps = _body(stage).get("deps") or []
    return [_norm(next(iter(d)) if isinstance(d, Mapping) else str(d)) for d in deps]


def _is_code(dep: str) -> bool:
    return "${" not in dep and Path(dep).parts[:1] in {(p,) for p in PACKAGES}


def _py_files(d: Path, root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in d.rglob("*.py") if "__pycache__" not in p.parts)


def _stage_root(dvc_yaml: Path | Mapping[str, Any], stage: Mapping[str, Any]) -> Path:
    base = ROOT if isinstance(dvc_yaml, Mapping) else Path(dvc_yaml).resolve().parent
    return base / _body(stage).get("wdir", ".")


def check_deps(dvc_yaml: Path | Mapping[str, Any]) -> list[str]:
    """Problems with the code ``deps`` of the stages in ``dvc_yaml``, one line each: a module a stage imports
    that no dep covers (stale results), and a code dep under ``PACKAGES`` that is broader than what the stage
    imports (needless re-runs). Deps outside the code packages (data, results) are not checked, nor are
    non-.py files inside them (code may read them). ``dvc_yaml`` is a path, or the parsed document (then
    paths are relative to the repository root)."""
    problems: list[str] = []
    stages = _load(dvc_yaml)
    for name, roots in stage_roots(dvc_yaml).items():
        root = _stage_root(dvc_yaml, stages[name])
        roots = _run_modules(roots, root)
        closure = import_closure(roots, root)
        if not closure:
            log.debug("stage %s runs no project module (%s); not checked", name, roots)
            continue
        scripts = {f for f in closure if any(f.with_suffix("").parts == tuple(r.split(".")) for r in roots)}
        deps = _deps(stages[name])
        for f in closure:
            if not any(_covers(d, f) for d in deps if "${" not in d):
                verb = "runs" if f in scripts else "imports"
                problems.append(
                    f"stage '{name}' {verb} {f.as_posix()} but its deps do not list it (add `{f.as_posix()}`)"
                )
        for d in filter(_is_code, deps):
            path = root / d
            if path.is_dir():
                extra = [p.as_posix() for p in _py_files(path, root) if p not in closure]
                if extra:
                    shown = ", ".join(extra[:3]) + (", ..." if len(extra) > 3 else "")
                    problems.append(
                        f"stage '{name}' lists {d}, which holds code it never imports ({shown}): "
                        "a change there would re-run it needlessly; list the files instead"
                    )
            elif not path.exists():
                problems.append(f"stage '{name}' lists {d}, which does not exist")
            elif path.suffix == ".py" and Path(d) not in closure:
                problems.append(
                    f"stage '{name}' lists {d}, which it never imports: a change there would re-run it "
                    "needlessly; remove it"
                )
    return problems


def minimal_deps(roots: Iterable[str], root_dir: Path = ROOT) -> list[str]:
    """The code deps a stage running ``roots`` needs: its scripts first, then the rest of the closure, with
    a directory in place of its files where every .py file under it is in the closure."""
    roots = list(roots)
    closure = import_closure(roots, root_dir)
    inside = set(closure)

    def complete(d: Path) -> bool:
        return all(p in inside for p in _py_files(root_dir / d, root_dir))

    def entry(f: Path) -> str:
        dirs = [f.parents[i] for i in range(len(f.parts) - 2, -1, -1)]  # outermost first, root_dir excluded
        return next((d.as_posix() for d in dirs if complete(d)), f.as_posix())

    scripts = [f for r in roots for f in closure if f.with_suffix("").parts == tuple(r.split("."))]
    out: list[str] = []
    for f in scripts + [f for f in closure if f not in scripts]:
        if (e := entry(f)) not in out:
            out.append(e)
    return out


def main(argv: list[str]) -> int:
    """Print each stage's minimal deps (code, then the stage's other deps as listed) and the problems."""
    if len(argv) != 1:
        print("usage: python -m pipeline.codebase DVC_YAML", file=sys.stderr)
        return 2
    dvc_yaml = Path(argv[0])
    stages = _load(dvc_yaml)
    for name, roots in stage_roots(dvc_yaml).items():
        root = _stage_root(dvc_yaml, stages[name])
        code = minimal_deps(_run_modules(roots, root), root)
        rest = [d for d in _deps(stages[name]) if not _is_code(d)]
        print(f"{name}:\n  deps:")
        print("\n".join(f"    - {d}" for d in code + rest))
    problems = check_deps(dvc_yaml)
    if problems:
        print(f"\n{len(problems)} problem(s) in {dvc_yaml}:", file=sys.stderr)
        print("\n".join(f"  {p}" for p in problems), file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
