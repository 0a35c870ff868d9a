"""Switch params.yaml to a named group of settings (e.g. the paper's), in place.

A profile is a YAML map of dotted keys to values (``train.epochs: 200``). Applying it edits params.yaml
with a round-trip parser, so comments, anchors and every other setting stay as they are; the result is
validated before anything is written. Undo with ``git checkout params.yaml``.

    python -m pipeline.profiles configs/paper.yaml [params.yaml]
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from pipeline.config import ConfigError, validate_params
from pipeline.io import atomic_path


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


def apply_profile(profile: str | Path, params: str | Path = "params.yaml") -> list[str]:
    """Apply ``profile`` to ``params``; return the keys set. Nothing is written if the result is invalid."""
    yaml = YAML()  # round-trip: keeps comments and anchors
    yaml.preserve_quotes = True
    yaml.width = 4096
    doc = yaml.load(Path(params).read_text())
    overrides = YAML(typ="safe").load(Path(profile).read_text()) or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{profile}: expected a map of dotted keys to values")
    for key, value in overrides.items():
        _set(doc, str(key), value, str(profile))
    buf = io.StringIO()
    yaml.dump(doc, buf)
    validate_params(YAML(typ="safe").load(buf.getvalue()), f"{params} with {profile}")
    with atomic_path(params) as tmp:
        tmp.write_text(buf.getvalue())
    return list(overrides)


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        keys = apply_profile(*argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{argv[1] if len(argv) > 1 else 'params.yaml'}: set {len(keys)} keys from {argv[0]}: {', '.join(keys)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
