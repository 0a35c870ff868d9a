"""Switch params.yaml to a named group of settings (e.g. the paper's), in place -- exactly as DVC would.

There is one way to set a parameter, and it is DVC's: ``dvc exp run -S key=value`` edits params.yaml through
``dvc.utils.hydra.apply_overrides`` (Hydra's override grammar), and so does this tool, on a copy that is
validated before it replaces params.yaml. The result is byte for byte what ``-S`` writes (tests/test_profiles.py
checks it against ``dvc exp run -S``): params.yaml is plain YAML in the style DVC writes (no anchors or merge
keys, block lists, ``null`` as an empty value), so an edit changes exactly the lines of the keys it sets, and
comments stay where they are.

A profile is a YAML map of dotted keys to values (``train.epochs: 200``); each becomes ``++key=value`` (set,
or add where params.yaml has no such key yet). Undo with ``git checkout params.yaml``. Two things go beyond
``-S``, so that the file still reads right after a profile: a comment on a key in the profile replaces that
key's comment in params.yaml (a comment about the old value would be stale), and each section's comment stays
above its section (DVC's writer puts keys added to the last entry of a section below the next section's
comment).

``--plan`` changes nothing and runs no stage: it applies the profile (or the ``--set`` overrides) to a
temporary copy of params.yaml, validated the same way, and prints the plan of the result
(``pipeline.plan``): per data set the units and epochs of each stage, a short measured probe of every
network on the device training would use, and the device-hours and wall time it adds up to on this machine
(or on the Ray cluster in ``RAY_ADDRESS``). Without a profile it plans params.yaml as it is.

``--device h100`` (or h200, a100, v100, l4, a10) prices the plan for that GPU instead, probing nothing here
(``pipeline.devices``), on ``--gpus N`` of them (default 1): each net's rate measured by
``benchmarks/fast_path.py`` on that GPU where its output is saved in benchmarks/results/, else estimated from
the net's FLOPs at ``--utilisation`` (default ``pipeline.devices.UTILISATION``) of the GPU's dense peak, and
labelled an estimate.

    python -m pipeline.profiles configs/paper.yaml [params.yaml]
    python -m pipeline.profiles --set compute.storage_path=s3://bucket/runs compute.max_failures=3
    python -m pipeline.profiles configs/paper.yaml [params.yaml] --plan
    python -m pipeline.profiles --plan
    python -m pipeline.profiles --set train.epochs=50 --plan
    python -m pipeline.profiles configs/paper.yaml --plan --device h100 [--gpus 8] [--utilisation 0.2]
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dvc.utils.hydra import apply_overrides as dvc_apply_overrides
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from pipeline import devices, plan
from pipeline.compute import seen_resources
from pipeline.config import ConfigError, Params
from pipeline.io import atomic_path
from pipeline.models.checks import validate_all
from pipeline.settings import read_yaml
from pipeline.train.probe import probe


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


def apply_overrides(
    overrides: list[str], source: str, params: str | Path = "params.yaml", *, tidy: Callable[[str], str] | None = None
) -> list[str]:
    """Apply Hydra overrides (``key=value``, ``+key=value``, ``++key=value``: DVC's ``-S`` grammar) to
    ``params`` with DVC's own function, then ``tidy`` to the text it wrote; return the keys. Nothing is
    written if the result is invalid."""
    params = Path(params)
    keys = [o.partition("=")[0].lstrip("+~") for o in overrides]
    with atomic_path(params) as tmp:
        shutil.copy2(params, tmp)
        try:
            dvc_apply_overrides(tmp, overrides)
        except Exception as e:  # DVC's InvalidArgumentError hides Hydra's reason in its cause
            why = " ".join(str(e.__cause__ or e).split())
            raise ConfigError(f"{source}: {why}") from None
        if tidy is not None:
            tmp.write_text(tidy(tmp.read_text()))
        validate_all(read_yaml(tmp), f"{params} with {source}")
    return keys


def apply_profile(profile: str | Path, params: str | Path = "params.yaml") -> list[str]:
    """Apply the profile file ``profile`` to ``params``; return the keys set. The profile's comments on its
    keys become those keys' comments, and section comments stay with their sections."""
    try:
        text = Path(profile).read_text()
        overrides = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{profile}: not readable as YAML: {e}") from None
    if not isinstance(overrides, dict):
        raise ConfigError(f"{profile}: expected a map of dotted keys to values")
    before, comments = Path(params).read_text(), profile_comments(text)
    return apply_overrides(
        [f"++{k}={override_value(v)}" for k, v in overrides.items()],
        str(profile),
        params,
        tidy=lambda after: set_comments(keep_section_comments(before, after), comments),
    )


def profile_comments(text: str) -> dict[str, str]:
    """dotted key -> the comment written after it on its line in a profile (``train.epochs: 200  # why``)."""
    doc = YAML().load(text)
    out = {}
    for k in doc if isinstance(doc, CommentedMap) else ():
        tok = doc.ca.items.get(k, [None, None, None])[2]
        first = tok.value.lstrip(" ").split("\n", 1)[0].strip() if tok is not None else ""
        if first.startswith("#"):
            out[str(k)] = first
    return out


def set_comments(text: str, comments: dict[str, str]) -> str:
    """``text`` (params.yaml) with each dotted key's end-of-line comment set to ``comments[key]``, at the
    column of the comment it replaces (else two spaces after the value). Keys not on a line of their own (in a
    flow mapping) are left as they are."""
    lines = text.split("\n")
    doc = YAML().load(text)
    for key, comment in comments.items():
        *path, last = key.split(".")
        node = doc
        for part in path:
            node = node.get(part) if isinstance(node, CommentedMap) else None
        if not isinstance(node, CommentedMap) or last not in node or node.fa.flow_style():
            continue
        row = node.lc.key(last)[0]
        line = lines[row]
        head, _, rest = line.partition(":")
        old = re.search(r"(?<=\s)#", rest)  # the value never holds " #" in this file's style
        lines[row] = f"{head}:{rest[: old.start()]}{comment}" if old else f"{line.rstrip()}  {comment}"
    return "\n".join(lines)


def keep_section_comments(before: str, after: str) -> str:
    """``after`` (``before`` rewritten by DVC) with each top-level key's comment block back directly above
    that key, where ``before`` had it: DVC's writer keeps a comment after the node it follows, so keys added to
    the last entry of a section land below the next section's comment."""
    old, new = before.split("\n"), after.split("\n")
    for i, line in enumerate(old):
        if not line[:1].isalpha():
            continue
        j = i
        while j > 0 and old[j - 1].startswith("#"):
            j -= 1
        block = old[j:i]
        k = new.index(line) if line in new else -1
        if not block or k < 0 or new[k - len(block) : k] == block:
            continue
        at = next((s for s in range(len(new) - len(block) + 1) if new[s : s + len(block)] == block), -1)
        if at < 0:
            continue
        del new[at : at + len(block)]
        if at > 0 and new[at - 1] == "" and at < len(new) and new[at][:1] == " ":
            del new[at - 1]  # the blank line that led into the section comment, now inside a section
        k = new.index(line)
        new[k:k] = ([""] if new[k - 1] != "" else []) + block
    return "\n".join(new)


def planned(profile: str | Path | None, overrides: list[str], params: str | Path = "params.yaml") -> Params:
    """``params`` with ``profile`` and then ``overrides`` applied, validated exactly as applying them is, on a
    temporary copy: ``params`` itself is not written."""
    params = Path(params)
    if not params.is_file():
        raise ConfigError(f"{params}: no such params file (run from the repository root, or pass its path)")
    with tempfile.TemporaryDirectory() as d:
        copy = Path(d) / params.name
        shutil.copy2(params, copy)
        try:
            if profile is not None:
                apply_profile(profile, copy)
            if overrides:
                apply_overrides(overrides, "--set", copy)
            return validate_all(read_yaml(copy), str(params))
        except ConfigError as e:  # name the file the user gave, not the copy
            raise ConfigError(str(e).replace(str(copy), str(params))) from None


PRICING = ("--device", "--gpus", "--utilisation")  # the options that price the plan for a device


def plan_of(p: Params, params: str | Path = "params.yaml", *, price: Pricing | None = None) -> list[str]:
    """The plan's lines (``pipeline.plan``) for ``p``, its data looked for beside ``params``: priced for
    ``price``'s device without probing, else on the Ray cluster in ``RAY_ADDRESS`` or this machine, its nets
    timed by the training engine's probe."""
    root = Path(params).parent / "data" / "processed"
    dirs = {d: root / d for d in p.grid.datasets}
    if price is not None:
        res = devices.resources(price.device, price.gpus, p.compute)
        return plan.plan_lines(p, data_dirs=dirs, resources=res, prober=price.prober)
    with seen_resources() as seen:
        return plan.plan_lines(p, data_dirs=dirs, resources=seen, prober=probe)


@dataclass(frozen=True)
class Pricing:
    device: devices.Device
    gpus: int
    prober: plan.Prober


def split_options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """The ``PRICING`` options (``--device h100`` or ``--device=h100``) out of ``argv``, and the rest in order."""
    opts, rest, it = {}, [], iter(argv)
    for a in it:
        name, eq, value = a.partition("=")
        if name not in PRICING:
            rest.append(a)
            continue
        v = value if eq else next(it, None)
        if v is None or v.startswith("--"):
            raise ConfigError(f"{name}: needs a value")
        opts[name] = v
    return opts, rest


def _number(opts: dict[str, str], name: str, kind: type[int] | type[float], default: float) -> Any:
    try:
        return kind(opts[name]) if name in opts else default
    except ValueError:
        raise ConfigError(f"{name} {opts[name]!r}: not a number; allowed: {kind.__name__}") from None


def pricing(opts: dict[str, str], planning: bool) -> Pricing | None:
    """What ``opts`` price the plan for, checked before anything is probed or applied; None without them."""
    if not opts:
        return None
    if not planning or "--device" not in opts:
        allowed = ", ".join(devices.DEVICES)
        raise ConfigError(f"{', '.join(opts)}: prices a plan; allowed only with --plan --device ({allowed})")
    d, gpus = devices.device(opts["--device"]), _number(opts, "--gpus", int, 1)
    if gpus < 1:
        raise ConfigError(f"--gpus {gpus}: how many {d.short} GPUs to plan for; allowed: 1 or more")
    return Pricing(d, gpus, devices.pricer(d, utilisation=_number(opts, "--utilisation", float, devices.UTILISATION)))


def main(argv: list[str]) -> int:
    planning = "--plan" in argv
    try:
        opts, argv = split_options(argv)
        price = pricing(opts, planning)
    except ConfigError as e:  # before the profile is applied, or anything probed
        print(f"error: {e}", file=sys.stderr)
        return 2
    args = [a for a in argv if a != "--plan"]
    setting = bool(args) and args[0] == "--set"
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    if not (args or planning) or (not setting and len(args) > 2):
        print(__doc__, file=sys.stderr)
        return 2
    target = args[1] if not setting and len(args) > 1 else "params.yaml"
    try:
        if planning:
            profile = None if setting or not args else args[0]
            lines = plan_of(planned(profile, args[1:] if setting else [], target), target, price=price)
        elif setting:
            keys, source = apply_overrides(args[1:], "--set"), "the command line"
        else:
            keys, source = apply_profile(*args), args[0]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if planning:
        print("\n".join(lines))
        return 0
    print(f"{target}: set {len(keys)} keys from {source}: {', '.join(keys)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
