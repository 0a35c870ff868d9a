"""The building blocks of the settings' schema: the frozen base model, number and name types that refuse what
YAML would let through (booleans as numbers, names that are not paths), the one error type, and the helpers
its messages and content keys use."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from pipeline.redact import carries_credentials, redact


class ConfigError(ValueError):
    """Invalid settings; the message lists every bad key, its value and what is allowed."""


class Frozen(BaseModel):
    # allow_inf_nan: .inf / .nan are never a setting (a timeout of .inf crashes the fetch, an lr of .nan trains
    # nothing); load_params names them wherever they are, free-form sections included (``_non_finite``)
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _not_bool(v: Any) -> Any:
    """pydantic's lax mode reads ``true`` as 1: ``epochs: true`` would train one epoch. Numbers only."""
    if isinstance(v, bool):
        raise ValueError(f"a boolean ({str(v).lower()}) where a number is expected; allowed: a number")
    return v


NotBool = BeforeValidator(_not_bool)
Int = Annotated[int, NotBool]  # an int field that refuses true/false
Float = Annotated[float, NotBool]  # a float field that refuses true/false
PosInt = Annotated[Int, Field(gt=0)]
# Seeds are combined before they seed torch (``pipeline.train.engine.epoch_seed(seed, epoch) * 1_000 + rank``
# must stay below 2**63, where torch's seeding overflows): 32 bits, numpy's range too
SEED_MAX = 2**32 - 1
Seed = Annotated[Int, Field(ge=0, le=SEED_MAX)]

# Data set and method names become paths (data/raw/<d>, results/<d>/<m>) through dvc.yaml: no `/`, no `..`
NAME_PATTERN = r"[A-Za-z0-9_-]+"


def _name(v: str) -> str:
    if carries_credentials(v):  # a name is printed, plotted and becomes a path: never a token (ghp_...)
        raise ValueError(f"{redact(v)!r} is shaped as a credential; allowed: a plain name")
    if not re.fullmatch(NAME_PATTERN, v):
        raise ValueError(
            f"{v!r} is not a valid name; allowed: letters, digits, '_' and '-' ({NAME_PATTERN}), "
            "as it becomes a path through dvc.yaml"
        )
    return v


Name = Annotated[str, AfterValidator(_name)]

LABEL_MAX = 80


def _label(v: str) -> str:
    """A label is one printable line (it is a table cell, a legend entry, a console headline) and never a
    credential: labels are printed, plotted and written to report files that are not redacted."""
    if carries_credentials(v):  # first: the other messages quote the value
        raise ValueError(f"{redact(v)!r} holds something shaped as a credential; allowed: a plain name of the method")
    if not v.strip() or len(v) > LABEL_MAX or not v.isprintable():
        raise ValueError(
            f"{v!r} is not a label; allowed: 1 to {LABEL_MAX} printable characters on one line, not only spaces"
        )
    return v


Label = Annotated[str, AfterValidator(_label)]


def unique_entries(v: list) -> list:
    if len(set(v)) != len(v):
        raise ValueError(f"entries must be unique, got {v}")
    return v


def fmt_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def did_you_mean(word: str, choices: Iterable[str], prefix: str = "") -> str:
    """`` (did you mean `<prefix><choice>`?)`` for the choice closest to a mistyped ``word``, or ""."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.7)
    return f" (did you mean `{prefix}{close[0]}`?)" if close else ""


def format_errors(source: str, errors: list[str]) -> str:
    return f"{source}: invalid settings:\n" + "\n".join(f"  - {e}" for e in errors)


def config_hash(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (run names, resume keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]
