"""The code's floors (``pipeline.codebase.FLOORS``): no import runs back up them, no two packages or top-level
modules import each other, and no module under ``pipeline/`` grows past what a reader holds at once."""

from __future__ import annotations

from pathlib import Path

from pipeline.codebase import ROOT, circles, upward_imports

MAX_LINES = 450  # a module longer than this does more than one job: split it


def test_no_import_runs_back_up_the_floors() -> None:
    assert upward_imports() == []


def test_no_import_circles_between_packages() -> None:
    assert circles() == []


def test_an_upward_import_a_circle_and_a_module_on_no_floor_are_found(tmp_path: Path) -> None:
    files = {
        "pipeline/__init__.py": "",
        "pipeline/low.py": "def f():\n    from pipeline import high  # a function-local import counts too\n",
        "pipeline/high.py": "from pipeline.low import f\n",
        "pipeline/stray.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    floors = (("pipeline", "pipeline.low"), ("pipeline.high",))
    assert upward_imports(floors, tmp_path) == [
        "pipeline.stray is on no floor (pipeline.codebase.FLOORS)",
        "pipeline.low (floor 0) imports pipeline.high (floor 1)",
    ]
    assert circles(tmp_path) == [["pipeline.high", "pipeline.low"]]


def test_no_module_is_longer_than_a_reader_holds() -> None:
    lengths = {
        p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in (ROOT / "pipeline").rglob("*.py")
    }
    assert {f: n for f, n in lengths.items() if n > MAX_LINES} == {}
