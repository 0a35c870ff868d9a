"""The resolved configuration of one training job, built from ``Params`` and stored in every checkpoint.

A ``RunSpec`` holds everything needed to rebuild and judge the model without ``params.yaml``: evaluation
rebuilds the network from a checkpoint alone (the nanoGPT ``train.py``/``sample.py`` pattern).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from pipeline import codebase
from pipeline.config import Frozen, Overrides, Params, TrainCfg, config_hash
from pipeline.data.manifest import load_manifest
from pipeline.data.shared import publish
from pipeline.data.subset import split_sizes
from pipeline.models import create_model
from pipeline.models.digest import network_digest


class DataRef(Frozen):
    """A preprocessed data set: where it is and what it is."""

    name: str
    path: str  # absolute directory (or URI) holding the Parquet files and the manifest
    source: str = ""  # where it is as the records show it: relative to the repository when inside it
    sha256: str  # of the preprocessed data (manifest data_sha256): a different subset is different data
    num_classes: int
    mean: list[float]
    std: list[float]


class RunSpec(Frozen):
    """One training unit: a (data set, method, seed) with every setting resolved."""

    dataset: DataRef
    method: str
    model: str
    model_args: dict[str, Any]  # includes num_classes
    train: TrainCfg
    seed: int = Field(ge=0)
    val_fraction: float | None = None  # None: validate on the test split; else hold out part of train
    train_subset: int | None = None
    tuned: dict[str, Any] = Field(default_factory=dict)  # what a search chose, for the record
    diagnostics: int = Field(default=0, ge=0)  # probe images for the attention diagnostics each epoch (0: off)
    # data-parallel workers it trains on: each rank normalises its own BatchNorm batch and draws its own crops
    # (seeded by rank), so 1 and 2 workers are different runs (``compute.num_workers``, resolved)
    workers: int = Field(default=1, ge=1)

    def identity(self) -> dict[str, Any]:
        """Everything that decides the result, and nothing else: the network as built from the seed (its
        structure, settings and initial weights: ``network_key``), the recipe, the data (its checksum, not
        where it is read from) and the data order (seed, held-out part, subset, the workers it is split over),
        and whether the diagnostics run. Not the method's name or model name, nor what a search chose
        (``tuned``, a record): two methods or tracks that resolve to the same network, recipe and start are one
        unit, trained once."""
        return {
            "network": network_key(self.model, self.model_args, self.seed),
            "dataset": self.dataset.model_dump(exclude={"path", "source"}),
            **self.model_dump(include={"train", "seed", "val_fraction", "train_subset", "diagnostics", "workers"}),
        }

    def key(self) -> str:
        """Content key of this unit: network, recipe, data, data order and code. Equal keys, equal runs."""
        return config_hash(self.identity(), code_digest())

    def images(self, num_train: int, num_test: int) -> tuple[int, int]:
        """(train, evaluation) images of one epoch on a data set of that size (``split_sizes``)."""
        return split_sizes(num_train, num_test, self.val_fraction, self.train_subset)


@functools.cache
def _network_key(model: str, args_json: str, seed: int) -> str:
    with torch.random.fork_rng(devices=[]):  # leaves the caller's random state as it was
        torch.default_generator.manual_seed(seed)  # the CPU draws of torch.manual_seed (prepare_unit), only
        return network_digest(create_model(model, **json.loads(args_json)))


def network_key(model: str, args: dict[str, Any], seed: int) -> str:
    """``pipeline.models.digest.network_digest`` of the net a unit starts from (built on the CPU, once per
    process for each model, arguments and seed)."""
    return _network_key(model, json.dumps(args, sort_keys=True), seed)


def build_spec(
    params: Params,
    method: str,
    data: DataRef,
    seed: int,
    tuned: Overrides | dict[str, Any] | None = None,
    val_fraction: float | None = None,
    train_subset: int | None = None,
    diagnostics: int = 0,
    workers: int = 1,
) -> RunSpec:
    """Resolve the method's model and recipe, with tuned values (``train.<f>``/``args.<a>`` keys) applied."""
    over = tuned if isinstance(tuned, Overrides) else Overrides.parse(tuned)
    model, base_args = params.model_of(method, data.name)
    args = {**base_args, **over.args}
    recipe = params.recipe(method, data.name, over.train)
    return RunSpec(
        dataset=data,
        method=method,
        model=model,
        model_args={**args, "num_classes": data.num_classes},
        train=recipe,
        seed=seed,
        val_fraction=val_fraction,
        train_subset=train_subset,
        tuned=over.flat(),
        diagnostics=diagnostics,
        workers=workers,
    )


def repo_relative(path: Path) -> str:
    """``path`` relative to the repository when inside it (``data/processed/embedded``), else as it is: what a
    record shows, meaningful on another machine."""
    try:
        return str(path.relative_to(codebase.ROOT))
    except ValueError:
        return str(path)


def data_ref(name: str, data_dir: str | Path) -> DataRef:
    data_dir = Path(data_dir).resolve()
    man = load_manifest(data_dir)
    return DataRef(
        name=name,
        path=str(data_dir),
        source=repo_relative(data_dir),
        sha256=man.data_sha256,
        num_classes=man.num_classes,
        mean=man.mean,
        std=man.std,
    )


def shared(data: DataRef, root: str | None) -> DataRef:
    """``data`` as workers on any node read it: published under ``root`` (``compute.shared_data``), or in
    place when that is None. Called only when there is work for the workers."""
    if root is None:
        return data
    return data.model_copy(update={"path": publish(data.path, root, data.name, data.sha256)})


# The code a unit's result depends on: the import closure of the training loop (``pipeline.codebase``), so a
# change there must not resume or reuse units trained by the old code, while a change elsewhere (reports,
# tracking, the Ray adapters) retrains nothing.
TRAINING_ROOT = "pipeline.train.loop"


@functools.cache
def code_digest(*roots: str) -> str:
    """Hash of the code in the import closure of the training loop (and of ``roots``, e.g. the search)."""
    return codebase.code_digest([TRAINING_ROOT, *roots])
