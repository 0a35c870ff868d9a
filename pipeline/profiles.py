"""Switch params.yaml to a named group of settings (e.g. the paper's), in place.

A profile is a YAML map of dotted keys to values (``train.epochs: 200``). Applying it edits params.yaml
with a round-trip parser, so comments, anchors and every other setting stay as they are; the result is
validated before anything is written. Undo with ``git checkout params.yaml``.

    python -m pipeline.profiles configs/paper.yaml [params.yaml]
    python -m pipeline.profiles --set compute.storage_path=s3://bucket/runs compute.max_failures=3
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from pipeline.config import ConfigError
from pipeline.io import atomic_path
from pipeline.models.checks import validate_all


def _set(doc: CommentedMap, dotted: str, value: Any, source: str) -> None:
    node: Any = doc
    parts = dotted.split(".")
    for i, p in enumerate(parts[:-1]):
        if not isinstance(node, dict) or p not in node:
            raise ConfigError(f"{source}: {dotted}: no key {'.'.join(parts[: i + 1])!r} in params.yaml")
        node = node[p]
    if not isinstance(node, dict):
        raise ConfigError(f"{source}: {dotted}: {'.'.join(parts[:-1])!r} is not a mapping")
    if isinstance(value, list):  # keep lists on one line, as params.yaml writes them
        value = CommentedSeq(value)
        value.fa.set_flow_style()
    node[parts[-1]] = value


def apply_overrides(overrides: dict[str, Any], source: str, params: str | Path = "params.yaml") -> list[str]:
    """Set dotted keys in ``params``; return them. Nothing is written if the result is invalid."""
    yaml = YAML()  # round-trip: keeps comments and anchors
    yaml.preserve_quotes = True
    yaml.width = 4096
    doc = yaml.load(Path(params).read_text())
    for key, value in overrides.items():
        _set(doc, str(key), value, source)
    buf = io.StringIO()
    yaml.dump(doc, buf)
    validate_all(YAML(typ="safe").load(buf.getvalue()), f"{params} with {source}")
    with atomic_path(params) as tmp:
        tmp.write_text(buf.getvalue())
    return list(overrides)


def apply_profile(profile: str | Path, params: str | Path = "params.yaml") -> list[str]:
    """Apply the profile file ``profile`` to ``params``; return the keys set."""
    overrides = YAML(typ="safe").load(Path(profile).read_text()) or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{profile}: expected a map of dotted keys to values")
    return apply_overrides(overrides, str(profile), params)


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings to {key: value}, each value read as YAML (``3``, ``null``, ``[0, 1]``, text)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        out[key] = YAML(typ="safe").load(value) if value else ""
    return out


def main(argv: list[str]) -> int:
    if not argv or (argv[0] != "--set" and len(argv) > 2):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        if argv[0] == "--set":
            keys, source = apply_overrides(parse_assignments(argv[1:]), "--set"), "the command line"
        else:
            keys, source = apply_profile(*argv), argv[0]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    target = argv[1] if argv[0] != "--set" and len(argv) > 1 else "params.yaml"
    print(f"{target}: set {len(keys)} keys from {source}: {', '.join(keys)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
