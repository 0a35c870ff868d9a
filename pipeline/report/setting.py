"""The paper's setting: params.yaml with ``configs/paper.yaml`` applied (``paper_setting``), and how a run's net and
recipe differ from it (``setting_gaps``). A claimed gain's size is tested only where neither side's differs: the
paper's numbers are claims about ResNet-110 and its peers trained for 200 epochs, not about any net on CIFAR."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.codebase import ROOT
from pipeline.config import Params
from pipeline.paper import PAPER_PROFILE
from pipeline.settings import with_profile

log = logging.getLogger(__name__)


def paper_setting(params: Params, profile: Path = ROOT / PAPER_PROFILE) -> Params | None:
    """``params`` at the paper's setting (the profile ``configs/paper.yaml`` applied in memory); None, and every
    size left untested, without the profile."""
    if not profile.is_file():
        log.warning("report: %s not found: no claimed size is tested", profile)
        return None
    return with_profile(params, profile)


# The train recipe's fields that decide nothing the paper fixes (how evaluation is batched, a stream's buffer)
NOT_THE_RECIPE = ("eval_batch_size", "shuffle_buffer")


def setting_gaps(paper: Params | None, dataset: str, method: str, label: str, spec: Mapping[str, Any]) -> list[str]:
    """How a method's run (``spec``: its resolved model, model_args and train) differs from the paper's setting
    for it on ``dataset`` (``paper``: params.yaml with ``configs/paper.yaml`` applied; None: no such profile,
    every setting unknown), e.g. "ResNet depth 8, not 110", "epochs 3, not 200"; [] where it is the paper's.
    Seeds may differ."""
    if paper is None or method not in paper.methods:
        return [f"{label}: not a setting of the paper's profile"]
    model, args = paper.model_of(method, dataset)
    recipe = paper.recipe(method, dataset).model_dump()
    ran = {k: v for k, v in spec.get("model_args", {}).items() if k != "num_classes"}
    out = [] if model == spec.get("model") else [f"{label} model {spec.get('model')}, not {model}"]
    out += [f"{label} {k} {ran.get(k)}, not {v}" for k, v in args.items() if ran.get(k) != v]
    t = spec.get("train", {})
    return out + [f"{k} {t.get(k)}, not {v}" for k, v in recipe.items() if k not in NOT_THE_RECIPE and t.get(k) != v]
