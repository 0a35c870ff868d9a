"""Reading ``params.yaml`` into the settings' schema (``pipeline.config``), refusing what is not settings.

``load_params`` reads the file (YAML syntax errors with their line and column, keys written twice, values
that are not finite numbers), validates it into ``Params`` (pydantic's errors rewritten as one line per
setting: the key, the value and what is allowed) and applies the cross-section rules
(``pipeline.config_checks``): every problem in one ``ConfigError``.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config import DATASET_KINDS, ConfigError, Params, did_you_mean, fmt_loc, format_errors
from pipeline.config_checks import cross_checks
from pipeline.redact import redact

ROOT = Path(__file__).resolve().parent.parent


_MISSING = object()


def _key_loc(raw: dict, loc: tuple) -> tuple:
    """``loc`` without pydantic's union/validator tags (e.g. ``constrained-int``), which are not keys."""
    out: list = []
    cur: Any = raw
    for p in loc:
        if (isinstance(cur, dict) and p in cur) or (isinstance(cur, list) and isinstance(p, int) and p < len(cur)):
            cur = cur[p]
        elif isinstance(p, str) and ("[" in p or "-" in p or p in DATASET_KINDS):
            continue  # a union member's tag, not a key
        else:
            cur = _MISSING
        out.append(p)
    return tuple(out)


def _lookup(raw: dict, loc: tuple) -> Any:
    cur: Any = raw
    for p in loc:
        if (isinstance(cur, dict) and p in cur) or (isinstance(cur, list) and isinstance(p, int) and p < len(cur)):
            cur = cur[p]
        else:
            return None
    return cur


def validate_params(raw: dict, source: str = "params.yaml") -> Params:
    """Validate a raw params mapping; raise one ``ConfigError`` listing every problem: those of the schema and,
    where the rest of the file still validates without the settings at fault, the cross-section rules too."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    non_finite = _non_finite(raw)
    nf_errs = [
        f"{fmt_loc(loc)} = {v!r}: not a finite number; allowed: a finite number (.inf, -.inf and .nan never are "
        "a setting)"
        for loc, v in non_finite
    ]
    try:
        p = Params.model_validate(raw)
    except ValidationError as e:
        errs = _schema_errors(raw, e, {loc for loc, _ in non_finite})
        rest = _rest_checked(raw, [_key_loc(raw, tuple(x["loc"])) for x in e.errors()])
        raise ConfigError(format_errors(source, nf_errs + errs + rest)) from None
    if nf_errs:  # in a free-form section (model arguments, recipe overrides): the models took them
        raise ConfigError(format_errors(source, nf_errs))
    errs = cross_checks(p) + _keys_dvc_reads(raw, p)
    if errs:
        raise ConfigError(format_errors(source, errs))
    return p


def _schema_errors(raw: dict, e: ValidationError, said: set[tuple]) -> list[str]:
    """pydantic's errors as one line per setting: the key, the value and what is allowed."""
    grouped: dict[tuple, list[str]] = {}
    locs = [_key_loc(raw, tuple(x["loc"])) for x in e.errors()]
    deeper = {loc[:i] for loc in locs for i in range(len(loc))}
    for x, loc in zip(e.errors(), locs, strict=True):
        if x["type"] == "literal_error" and loc in deeper:
            continue  # a union's other branch (e.g. a list) got further: its error is the one that matters
        if loc in said:
            continue  # a non-finite number: said once, wherever it is
        msg = x["msg"].removeprefix("Value error, ")
        if x["loc"] and x["loc"][-1] == "[key]":  # a bad key of a mapping (a data set or method name)
            grouped.setdefault((loc[:-1], ""), []).append(f"key {msg}")
            continue
        if x["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc, msg = (*loc, "kind"), f"unknown data set kind; allowed: {', '.join(DATASET_KINDS)}"
        if x["type"] == "extra_forbidden":
            known = fields_at(loc[:-1])
            hint = did_you_mean(loc[-1], known, fmt_loc(loc[:-1]) + "." if loc[:-1] else "")
            msg = f"not a setting{hint}; allowed here: {', '.join(sorted(known))}"
        field = re.match(r"(\w+)=", msg)  # a model-level rule names its field first: point at it
        if x["type"] == "value_error" and field and isinstance(_lookup(raw, loc), dict):
            loc = (*loc, field.group(1))
            msg = msg.split(": ", 1)[-1] if ": " in msg else msg
        shown = "" if x["type"] == "missing" else f" = {redact(repr(_lookup(raw, loc)))}"  # a refused secret too
        grouped.setdefault((loc, shown), []).append(msg)
    # a union gives one message per alternative: join them into one line; a rule's message may quote the value
    return [
        f"{fmt_loc(loc)}{shown}: {redact(' or '.join(dict.fromkeys(msgs)))}" for (loc, shown), msgs in grouped.items()
    ]


# stand-ins for a required setting taken out: the first the schema takes is used (cross-section rules need a
# whole ``Params``; what they then say about the stand-in is dropped with the rest about that setting)
_STAND_INS: tuple[Any, ...] = (1, 0.1, [0], {}, "x")


def _rest_checked(raw: dict, bad: list[tuple], tries: int = 4) -> list[str]:
    """The cross-section rules' problems with the rest of the file: the settings at fault (``bad``) taken out
    (defaults, or for a required one a stand-in, in their place), so one run of the check says everything.
    None where the rest still does not validate; a rule's problem naming a setting taken out is dropped (its
    own problem is said already)."""
    fixed, gone = copy.deepcopy(raw), set()
    for _ in range(tries):
        for loc in bad:
            while loc and not isinstance(loc[-1], str):  # a list item: take the list out
                loc = loc[:-1]
            parent = _lookup(fixed, loc[:-1]) if loc else None
            if isinstance(parent, dict) and loc[-1] in parent:
                del parent[loc[-1]]
                gone.add(fmt_loc(loc))
        try:
            p = Params.model_validate(fixed)
        except ValidationError as e:
            missing = [tuple(x["loc"]) for x in e.errors() if x["type"] == "missing"]
            if not missing or not all(_stand_in(fixed, loc) for loc in missing):
                bad = [_key_loc(fixed, tuple(x["loc"])) for x in e.errors() if x["type"] != "missing"]
            else:
                bad = []
            gone |= {fmt_loc(loc) for loc in missing}
            continue
        errs = cross_checks(p) + _keys_dvc_reads(fixed, p)
        return [m for m in errs if not any(re.search(rf"(^|\W){re.escape(g)}(\W|$)", m) for g in gone)]
    return []


def _stand_in(raw: dict, loc: tuple) -> bool:
    """Put the first of ``_STAND_INS`` the schema takes at ``loc`` (a required setting); whether one was."""
    parent = _lookup(raw, loc[:-1])
    if not isinstance(parent, dict) or not loc or not isinstance(loc[-1], str):
        return False
    for v in _STAND_INS:
        parent[loc[-1]] = v
        try:
            Params.model_validate(raw)
            return True
        except ValidationError as e:
            if not any(_key_loc(raw, tuple(x["loc"]))[: len(loc)] == loc for x in e.errors()):
                return True  # this one is taken; what is still wrong is elsewhere
    del parent[loc[-1]]
    return False


def _members(kind: Any) -> list[Any]:
    """The types a field's annotation admits: unions and ``Annotated`` unwrapped."""
    origin = get_origin(kind)
    if origin is typing.Annotated:
        return _members(get_args(kind)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for a in get_args(kind) for m in _members(a)]
    return [kind]


def fields_at(loc: tuple) -> set[str]:
    """The setting names the schema allows in the mapping at ``loc`` (``("train",)`` -> epochs, lr, ...)."""
    kinds: list[Any] = [Params]
    for part in loc:
        nxt = []
        for a in (m for k in kinds for m in _members(k)):
            if isinstance(a, type) and issubclass(a, BaseModel) and part in a.model_fields:
                nxt.append(a.model_fields[part].annotation)
            elif get_origin(a) is dict:
                nxt.append(get_args(a)[1])
            elif get_origin(a) is list and isinstance(part, int):
                nxt.append(get_args(a)[0])
        kinds = nxt
    return {f for k in kinds for a in _members(k) if isinstance(a, type) and issubclass(a, BaseModel)
            for f in a.model_fields}  # fmt: skip


@functools.cache
def dvc_dataset_keys(dvc_yaml: Path = ROOT / "dvc.yaml") -> tuple[str, ...]:
    """The keys of each data set that ``dvc.yaml``'s stages list as params (``datasets.${item.dataset}.kind``,
    ...): DVC fails on a missing one, so validation says so first. Read from dvc.yaml itself; none without it."""
    try:
        stages = yaml.safe_load(dvc_yaml.read_text()).get("stages", {})
    except (OSError, yaml.YAMLError, AttributeError):
        return ()
    found = re.findall(
        r"^datasets\.\$\{[\w.]+\}\.(\w+)$",
        "\n".join(str(k) for st in stages.values() for k in (st.get("params") or []) if isinstance(k, str)),
        re.M,
    )
    return tuple(sorted(set(found)))


def _keys_dvc_reads(raw: dict, p: Params) -> list[str]:
    return [
        f"datasets.{d}.{k}: missing; the DVC stages read it (write `{k}: {{}}` for no settings)"
        for d in p.grid.datasets
        if d in p.datasets
        for k in dvc_dataset_keys()
        if k not in raw["datasets"][d]
    ]


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file (run from the repository root, or pass its path)")
    return validate_params(read_yaml(path), str(path))


_MERGE_TAG = "tag:yaml.org,2002:merge"


def read_yaml(path: str | Path) -> Any:
    """``path`` parsed as YAML (safe types only), or one ``ConfigError``: a syntax error with its line and
    column, or a key written twice in one mapping (YAML would silently keep the last), with both lines."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        loader = yaml.SafeLoader(text)  # decodes and checks every byte: a NUL or a control byte fails here
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not readable as YAML: {_reader_problem(e)}") from None
    try:
        node = loader.get_single_node()
        dups = _duplicate_keys(node) if node is not None else []
        if dups:
            raise ConfigError(format_errors(str(path), dups))
        return loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        raise ConfigError(f"{path}: {_yaml_problem(e)}") from None
    except yaml.YAMLError as e:  # one with no place in the text (the reader checked every byte above)
        raise ConfigError(f"{path}: not readable as YAML: {_reader_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be settings") from None
    finally:
        loader.dispose()


def _reader_problem(e: yaml.YAMLError) -> str:
    """A reader error (a byte YAML does not allow) as the byte, its place, and what is allowed."""
    allowed = "allowed: printable UTF-8 text (tabs and newlines included)"
    if not isinstance(e, yaml.reader.ReaderError) or not isinstance(e.character, int):
        return str(e)
    if e.encoding != "unicode":  # the bytes do not decode
        return f"byte {e.position} (0x{e.character:02x}) is not {e.encoding} text; {allowed}"
    return f"character {e.position} is the control character U+{e.character:04X}; {allowed}"


def _yaml_problem(e: yaml.MarkedYAMLError) -> str:
    mark = e.problem_mark or e.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = e.problem or e.context or "invalid YAML"
    if e.context and e.problem:
        cm = e.context_mark
        what += f" ({e.context}" + (f" started at line {cm.line + 1}, column {cm.column + 1})" if cm else ")")
    if "'\\t'" in what:
        what += "; YAML is indented with spaces, never tabs"
    return where + what


def _duplicate_keys(node: yaml.Node, path: tuple = (), seen: set[int] | None = None) -> list[str]:
    """Keys written twice in one mapping, with the lines of both. A key brought in by a merge key (``<<``)
    and set again explicitly is an override, not a duplicate."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias of a node already walked (or a recursive one)
        return []
    seen.add(id(node))
    errs: list[str] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], yaml.Node] = {}
        for k, v in node.value:
            if k.tag == _MERGE_TAG:
                errs += _duplicate_keys(v, path, seen)
                continue
            sub = path
            if isinstance(k, yaml.ScalarNode):
                sub = (*path, k.value)
                if (k.tag, k.value) in first:
                    errs.append(
                        f"{fmt_loc(sub)}: duplicate key, written at {_at(first[k.tag, k.value])} and again at "
                        f"{_at(k)} (YAML would silently keep the last); write it once"
                    )
                else:
                    first[k.tag, k.value] = k
            errs += _duplicate_keys(v, sub, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            errs += _duplicate_keys(v, (*path, i), seen)
    return errs


def _at(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}, column {node.start_mark.column + 1}"


def _non_finite(node: Any, path: tuple = (), above: frozenset[int] = frozenset()) -> list[tuple[tuple, float]]:
    """(key path, value) of every .inf / -.inf / .nan in the raw tree, free-form sections included."""
    if isinstance(node, float):
        return [] if math.isfinite(node) else [(path, node)]
    if id(node) in above:  # a recursive alias
        return []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [hit for k, v in items for hit in _non_finite(v, (*path, k), above | {id(node)})]


def with_profile(params: Params, profile: str | Path) -> Params:
    """``params`` with a profile's settings (a YAML map of dotted keys to values, ``configs/*.yaml``) set, in
    memory: what ``python -m pipeline.profiles <profile>`` would write into params.yaml, without writing it
    (that tool edits the file through DVC's own override grammar; here only the values matter)."""
    raw = params.model_dump(mode="json")
    settings = read_yaml(profile) or {}
    if not isinstance(settings, dict):
        raise ConfigError(f"{profile}: expected a map of dotted keys to values")
    for key, value in settings.items():
        *parents, last = str(key).split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return validate_params(raw, f"params.yaml with {profile}")
