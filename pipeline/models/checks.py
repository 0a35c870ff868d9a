"""The settings checks that need the model code: registered names, factory arguments, a real (CPU) build of
every net, and the architecture choices a search may set.

Kept out of ``pipeline.config`` so that stages which never build a net (fetch, preprocess, report) do not
depend on the model code: DVC re-runs a stage when code it imports changes, and a download should not be
repeated because a network changed. ``dvc repro`` runs these checks first, in the ``check`` stage, so a bad
model argument stops the pipeline before any data is fetched; the stages that build nets run them again.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from pipeline.config import ConfigError, Params, SearchDim, format_errors, split_key
from pipeline.config_checks import search_values
from pipeline.settings import validate_params

from . import create_model, get_factory, is_model, list_models  # the package's: every model registered
from .attention import CbamModule, SEModule, gate_width
from .resnet import ResNet


def _factory_args(model: str) -> tuple[set[str], bool]:
    sig = inspect.signature(get_factory(model))
    return set(sig.parameters) - {"num_classes"}, any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def _numeric_args(model: str) -> dict[str, type]:
    """The factory's parameters whose default is a number (int or float, not bool): {name: type}."""
    params = inspect.signature(get_factory(model)).parameters.values()
    return {p.name: type(p.default) for p in params if type(p.default) in (int, float)}


def _bool_args(model: str, args: dict[str, Any]) -> list[str]:
    """Arguments given true/false where the factory takes a number (Python would read true as 1)."""
    numeric = _numeric_args(model)
    return [k for k, v in args.items() if isinstance(v, bool) and k in numeric]


def _bool_message(model: str, arg: str) -> str:
    return f"a boolean where {model!r} takes a number ({_numeric_args(model)[arg].__name__}); allowed: a number"


def _build_error(model: str, args: dict[str, Any]) -> str | None:
    """Why ``model`` does not build with ``args`` (a real CPU build), or None when it does."""
    bools = _bool_args(model, args)
    if bools:
        return "; ".join(f"{k}={str(args[k]).lower()}: {_bool_message(model, k)}" for k in bools)
    try:
        create_model(model, **args)
    except (TypeError, ValueError, ArithmeticError, RuntimeError) as e:  # torch raises RuntimeError for bad shapes
        return str(e) or type(e).__name__
    return None


def _check_net(where: str, model: str, args: dict[str, Any], build: bool = True) -> list[str]:
    """``model`` exists, takes ``args`` and (``build``) builds with them (depth rules, divisibility, ...)."""
    if not is_model(model):
        return [f"{where}.model = {model!r}: unknown model; registered: {list_models()}"]
    allowed, var_kw = _factory_args(model)
    bad = sorted(set(args) - allowed)
    if bad and not var_kw:
        return [f"{where}.args: unknown argument(s) {bad} for {model!r}; allowed: {sorted(allowed)}"]
    bools = _bool_args(model, args)
    if bools:  # no build needed to know; checked on ImageNet variants too
        return [f"{where}.args.{k} = {str(args[k]).lower()}: {_bool_message(model, k)}" for k in bools]
    if not build:
        return []
    err = _build_error(model, args)
    return [f"{where}.args = {args}: {err}"] if err else []


def check_models(p: Params) -> list[str]:
    """Every method's net (and its ImageNet variant, where a data set of the grid needs it), and every
    architecture choice of the search, against the registered factories."""
    errs: list[str] = []
    imagenet_in_grid = any(p.datasets[d].kind == "imagenet" for d in p.grid.datasets if d in p.datasets)
    for name, m in p.methods.items():
        errs += _check_net(f"methods.{name}", m.model, m.args)
        if m.imagenet is not None:
            model, args = m.model_and_args(imagenet=True)
            where = f"methods.{name}.imagenet"
            errs += _check_net(where, model, args, build=imagenet_in_grid)  # a ResNet-50 build takes a second
    for name, dims in p.tune.arch_space.items():
        if name not in p.methods or not is_model(p.methods[name].model):
            continue
        allowed, var_kw = _factory_args(p.methods[name].model)
        unknown = [key for key in dims if split_key(key)[1] not in allowed and not var_kw]
        errs += [
            f"tune.arch_space.{name}.{key}: not an argument of model {p.methods[name].model!r}; "
            f"allowed: {sorted('args.' + a for a in allowed)}"
            for key in unknown
        ]
        if not any(e.startswith(f"methods.{name}.") for e in errs):
            errs += _arch_value_checks(p, name, {k: d for k, d in dims.items() if k not in unknown})
    errs += _study_checks(p, errs)
    for name in p.grid.methods:
        if name in p.methods and not any(e.startswith(f"methods.{name}.") for e in errs):
            errs += _gate_checks(name, p.methods[name].model, p.methods[name].args)
    return list(dict.fromkeys(errs))


# The size at which the SE and CBAM papers' literal gate width C // r is their own setting: ResNet-110 on CIFAR
# (Hu et al. 2018; Woo et al. 2018), 16 channels in its first stage.
PAPER_SIZE = {"depth": 110, "width": 16}
REFERENCE_DIVISOR = 8  # timm's rd_divisor (layers/squeeze_excite.py, layers/cbam.py)


def _gates(net: torch.nn.Module) -> list[tuple[int, int]]:
    """(channels, hidden width) of every channel gate in ``net``."""
    out = []
    for m in net.modules():
        if isinstance(m, SEModule):
            out.append((m.fc1.in_channels, m.fc1.out_channels))
        elif isinstance(m, CbamModule):
            out.append((m.mlp[0].in_channels, m.mlp[0].out_channels))
    return out


def _params(net: torch.nn.Module) -> int:
    return sum(t.numel() for t in net.parameters())


def _gate_checks(name: str, model: str, args: dict[str, Any]) -> list[str]:
    """A baseline with channel gates (SE, CBAM) at full strength at the configured size: below the papers' own
    size (ResNet-110, width 16) no gate narrower than the reference rule (timm's, ``rd_divisor`` 8) gives; and its
    parameters over its backbone's at least half the share they are at the papers' size (a gate relatively
    thinner than in its paper is a crippled baseline, whatever the rule)."""
    net = create_model(model, **args)
    gates = _gates(net)
    if not gates or not isinstance(net, ResNet) or "rd_divisor" not in _factory_args(model)[0]:
        return []
    reduction = args.get("reduction", 16)
    errs = []
    if args.get("width", PAPER_SIZE["width"]) < PAPER_SIZE["width"]:
        narrow = sorted({(c, h) for c, h in gates if h < gate_width(c, reduction, REFERENCE_DIVISOR)})
        if narrow:
            widths = ", ".join(f"{h} of {c} channels" for c, h in narrow)
            errs.append(
                f"methods.{name}.args.rd_divisor = {args.get('rd_divisor', 1)}: {model!r} at width {args['width']} "
                f"has channel gates {widths} wide, narrower than the reference rule allows (timm: C/{reduction} "
                f"rounded to a multiple of {REFERENCE_DIVISOR}, at least {REFERENCE_DIVISOR}); the literal C // r is "
                f"the baselines' papers' rule only at their own size (depth 110, width 16). Allowed: rd_divisor: "
                f"{REFERENCE_DIVISOR}"
            )
    share = _share(net, args)
    paper_share = _paper_share(model, tuple(sorted(args.items())))
    if share < 0.5 * paper_share:
        errs.append(
            f"methods.{name}.args.reduction = {reduction}: {model!r} adds {100 * share:.2f} % parameters to its "
            f"backbone, under half the {100 * paper_share:.2f} % it adds at its papers' size (ResNet-110, C // r "
            "gates): its gates are too thin to be the baseline. Allowed: a reduction keeping at least half that"
        )
    return errs


def _share(net: torch.nn.Module, args: dict[str, Any]) -> float:
    """The parameters ``net`` adds to its plain ResNet backbone, as a share of the backbone's."""
    keep = {k: v for k, v in args.items() if k in ("depth", "width", "shortcut", "num_classes")}
    return _params(net) / _params(create_model("resnet", **keep)) - 1.0


@functools.cache  # two ResNet-110 builds: once per model and arguments per process
def _paper_share(model: str, args: tuple[tuple[str, Any], ...]) -> float:
    paper = {**dict(args), **PAPER_SIZE, "rd_divisor": 1}
    return _share(create_model(model, **paper), paper)


def _study_checks(p: Params, errs: list[str]) -> list[str]:
    """Every cell of the study is the study method's net with arguments its factory takes; built (a real CPU
    build) when the study is enabled."""
    s = p.study
    if (
        s.method not in p.methods
        or s.dataset not in p.datasets
        or any(e.startswith(f"methods.{s.method}") for e in errs)
    ):
        return []  # said elsewhere
    model, args = p.model_of(s.method, s.dataset)
    out: list[str] = []
    for name, cell in s.cells().items():
        where = f"study.variants.{name}" if name in s.variants else f"study (cell {name})"
        out += _check_net(where, model, {**args, **cell}, build=s.enabled)
    return out


def _arch_value_checks(p: Params, method: str, dims: dict[str, SearchDim]) -> list[str]:
    """Every value the search may set on ``method``'s model builds (a real CPU build with the method's other
    arguments), for each net the method is on the grid's data sets."""
    nets = {}
    for d in p.grid.datasets if p.grid.datasets else [None]:
        model, args = p.model_of(method, d if d in p.datasets else None)
        if is_model(model):
            nets[repr((model, sorted(args.items())))] = (model, args)
    errs: list[str] = []
    for key, dim in dims.items():
        arg = split_key(key)[1]
        for model, args in nets.values():
            numeric = _numeric_args(model)
            if dim.type != "choice" and numeric.get(arg) is not float:
                takes = numeric[arg].__name__ if arg in numeric else "a value that is not a float"
                errs.append(
                    f"tune.arch_space.{method}.{key}: {dim.type} samples real numbers, but {arg} of {model!r} takes "
                    f"{takes}; allowed: {{type: choice, values: [...]}}"
                )
                break
            bad = [(what, v, err) for what, v in search_values(dim) if (err := _build_error(model, {**args, arg: v}))]
            errs += [
                f"tune.arch_space.{method}.{key}: {what} {v!r} does not build {model!r}: {err}" for what, v, err in bad
            ]
            if bad:
                break
    return errs


def validate_all(raw: dict, source: str = "params.yaml") -> Params:
    """``validate_params`` and ``check_models``: one ``ConfigError`` listing every problem."""
    p = validate_params(raw, source)
    errs = check_models(p)
    if errs:
        raise ConfigError(format_errors(source, errs))
    return p
