"""Switch params.yaml to a named group of settings (e.g. the paper's), in place -- exactly as DVC would.

There is one way to set a parameter, and it is DVC's: ``dvc exp run -S key=value`` edits params.yaml through
``dvc.utils.hydra.apply_overrides`` (Hydra's override grammar), and so does this tool, on a copy that is
validated before it replaces params.yaml. The result is byte for byte what ``-S`` writes (tests/test_profiles.py
checks it against ``dvc exp run -S``): params.yaml is plain YAML in the style DVC writes (no anchors or merge
keys, block lists, ``null`` as an empty value), so an edit changes exactly the lines of the keys it sets, and
comments stay where they are.

A profile is a YAML map of dotted keys to values (``train.epochs: 200``); each becomes ``++key=value`` (set,
or add where params.yaml has no such key yet). Undo with ``git checkout params.yaml``.

    python -m pipeline.profiles configs/paper.yaml [params.yaml]
    python -m pipeline.profiles --set compute.storage_path=s3://bucket/runs compute.max_failures=3
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import yaml
from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

from pipeline.config import ConfigError
from pipeline.io import atomic_path
from pipeline.models.checks import validate_all
from pipeline.settings import read_yaml


def override_value(v: Any) -> str:
    """``v`` in Hydra's override grammar (what ``dvc exp run -S key=<this>`` takes)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ",".join(override_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{override_value(x)}" for k, x in v.items()) + "}"
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"  # quoted: a string stays a string


def apply_overrides(overrides: list[str], source: str, params: str | Path = "params.yaml") -> list[str]:
    """Apply Hydra overrides (``key=value``, ``+key=value``, ``++key=value``: DVC's ``-S`` grammar) to
    ``params`` with DVC's own function; return the keys. Nothing is written if the result is invalid."""
    params = Path(params)
    keys = [o.partition("=")[0].lstrip("+~") for o in overrides]
    with atomic_path(params) as tmp:
        shutil.copy2(params, tmp)
        try:
            dvc_apply_overrides(tmp, overrides)
        except Exception as e:  # DVC's InvalidArgumentError hides Hydra's reason in its cause
            why = " ".join(str(e.__cause__ or e).split())
            raise ConfigError(f"{source}: {why}") from None
        validate_all(read_yaml(tmp), f"{params} with {source}")
    return keys


def apply_profile(profile: str | Path, params: str | Path = "params.yaml") -> list[str]:
    """Apply the profile file ``profile`` to ``params``; return the keys set."""
    try:
        overrides = yaml.safe_load(Path(profile).read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{profile}: not readable as YAML: {e}") from None
    if not isinstance(overrides, dict):
        raise ConfigError(f"{profile}: expected a map of dotted keys to values")
    return apply_overrides([f"++{k}={override_value(v)}" for k, v in overrides.items()], str(profile), params)


def main(argv: list[str]) -> int:
    if not argv or (argv[0] != "--set" and len(argv) > 2):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        if argv[0] == "--set":
            keys, source = apply_overrides(argv[1:], "--set"), "the command line"
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
