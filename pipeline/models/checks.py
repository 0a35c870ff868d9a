"""The settings checks that need the model code: registered names, factory arguments, a real (CPU) build of
every net, and the architecture choices a search may set.

Kept out of ``pipeline.config`` so that stages which never build a net (fetch, preprocess, report) do not
depend on the model code: DVC re-runs a stage when code it imports changes, and a download should not be
repeated because a network changed. ``dvc repro`` runs these checks first, in the ``check`` stage, so a bad
model argument stops the pipeline before any data is fetched; the stages that build nets run them again.
"""

from __future__ import annotations

import inspect
from typing import Any

from pipeline.config import ConfigError, Params, format_errors, validate_params

from .registry import create_model, get_factory, is_model, list_models


def _factory_args(model: str) -> tuple[set[str], bool]:
    sig = inspect.signature(get_factory(model))
    return set(sig.parameters) - {"num_classes"}, any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def _check_net(where: str, model: str, args: dict[str, Any], build: bool = True) -> list[str]:
    """``model`` exists, takes ``args`` and (``build``) builds with them (depth rules, divisibility, ...)."""
    if not is_model(model):
        return [f"{where}.model = {model!r}: unknown model; registered: {list_models()}"]
    allowed, var_kw = _factory_args(model)
    bad = sorted(set(args) - allowed)
    if bad and not var_kw:
        return [f"{where}.args: unknown argument(s) {bad} for {model!r}; allowed: {sorted(allowed)}"]
    if not build:
        return []
    try:
        create_model(model, **args)
    except (TypeError, ValueError) as e:
        return [f"{where}.args = {args}: {e}"]
    return []


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
        errs += [
            f"tune.arch_space.{name}.{key}: not an argument of model {p.methods[name].model!r}; "
            f"allowed: {sorted('args.' + a for a in allowed)}"
            for key in dims
            if key.partition(".")[2] not in allowed and not var_kw
        ]
    return list(dict.fromkeys(errs))


def validate_all(raw: dict, source: str = "params.yaml") -> Params:
    """``validate_params`` and ``check_models``: one ``ConfigError`` listing every problem."""
    p = validate_params(raw, source)
    errs = check_models(p)
    if errs:
        raise ConfigError(format_errors(source, errs))
    return p
