"""Trained nets as MLflow models: logged into their unit's run, registered per (data set, method).

Each evaluated unit's net is logged as an MLflow PyTorch model in the ``pt2`` format (``torch.export``: a
traced graph, loaded without unpickling any code, in keeping with ``pipeline.train.checkpoint``), with a
signature and an input example. It takes what an image file decodes to -- uint8 images (N, H, W, 3), RGB --
and returns logits (N, classes): the per-channel normalisation the net was trained with is part of the
logged graph, so ``mlflow.pyfunc.load_model(uri).predict(images)`` needs nothing else. The class names, in
label order, are in the model's metadata.

Each logged model is named for its unit, ``<data set>-<method>-seed<k>`` (``embedded-attn_resnet-seed0``), and
carries the unit's test metrics (``log_test_metrics``: logged to the run with the model's id, so the logged
model's page lists them). The Model Registry holds one model per (data set, method), ``<experiment>-<method>``
(e.g. ``attncnn-embedded-attn_resnet``), registered through ``mlflow.register_model``, which links the logged
model to its version (its page shows "Registered models"). Its alias ``recipe`` points at the unit of the
lowest seed trained at the shared recipe, ``searched`` at that seed's unit at the searched recipe (the same
version when the search kept the recipe): ``models:/attncnn-embedded-attn_resnet@recipe``. The lowest seed,
not the best one: choosing by test accuracy would make the registered model a selection on the test split.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Mapping
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS
from torch import nn

from pipeline.device import normalize
from pipeline.spec import RunSpec

log = logging.getLogger(__name__)
ALIASES = {"recipe": "recipe", "searched": "searched"}  # track -> registry alias


class ImageClassifier(nn.Module):
    """A trained net with its input normalisation: uint8 images (N, H, W, 3) in, logits (N, classes) out,
    normalised by the training side's own ``pipeline.device.normalize``."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(normalize(images.permute(0, 3, 1, 2), self.mean, self.std))  # (N, 3, H, W), standardised


def registered_name(experiment: str, method: str) -> str:
    return f"{experiment}-{method}"


def model_name(spec: RunSpec) -> str:
    """The logged model's name: which unit's net it is (``embedded-attn_resnet-seed0``)."""
    return f"{spec.dataset.name}-{spec.method}-seed{spec.seed}"


def logged_model(c, experiment_id: str, run_id: str):
    """The model already logged into ``run_id`` (one per unit run), or None."""
    found = c.search_logged_models(experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'")
    return found[0] if found else None


def log_test_metrics(c, run_id: str, model_id: str, metrics: Mapping[str, float], *, dataset: str, digest: str) -> None:
    """The unit's test metrics into its run, attached to its logged model and the test data (name, digest): the
    run's metrics, and the logged model's page, both show them."""
    for k, v in metrics.items():
        c.log_metric(run_id, k, float(v), dataset_name=dataset, dataset_digest=digest, model_id=model_id)


def has_test_metrics(c, model_id: str, metrics: Mapping[str, float]) -> bool:
    """Whether the logged model carries ``metrics`` already (a diverged unit's NaN loss counts as carried)."""
    logged = {m.key: m.value for m in c.get_logged_model(model_id).metrics or []}
    return all(k in logged and _same(logged[k], float(v)) for k, v in metrics.items())


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def log_unit_model(
    c, run_id: str, experiment_id: str, net: nn.Module, spec: RunSpec, example: np.ndarray, classes: list[str]
) -> str:
    """Log ``net`` (trained for ``spec``) into its run as a pt2 MLflow model; ``example``: uint8 (n, H, W, 3)
    test images, n >= 2 (a batch of one would fix the batch size of the exported graph). Returns the model's
    id; a run that already has its model keeps it."""
    found = logged_model(c, experiment_id, run_id)
    if found is not None:
        return found.model_id
    wrapped = ImageClassifier(net, spec.dataset.mean, spec.dataset.std).eval()
    _, h, w, ch = example.shape
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, h, w, ch))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, spec.dataset.num_classes))]),
    )
    mlflow.set_tracking_uri(c.tracking_uri)
    mlflow.set_experiment(experiment_id=experiment_id)  # else the logged model lands in the Default experiment
    info = mlflow.pytorch.log_model(
        wrapped,
        name=model_name(spec),
        run_id=run_id,
        signature=signature,
        input_example=example,
        serialization_format="pt2",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
        metadata={"classes": classes, "input": "uint8 images (N, H, W, 3), RGB", "output": "logits", **_unit(spec)},
    )
    return info.model_id


def _unit(spec: RunSpec) -> dict[str, Any]:
    return {"method": spec.method, "seed": spec.seed, "unit_key": spec.key(), "data_sha256": spec.dataset.sha256}


def register(c, name: str, model_id: str, run_id: str, aliases: list[str], description: str) -> int:
    """Register the logged model ``model_id`` as a version of ``name`` (once: a version of this run is reused)
    through ``mlflow.register_model``, which also records the version on the logged model, and point
    ``aliases`` at it; the version number."""
    try:
        c.create_registered_model(name, description=description)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
        if c.get_registered_model(name).description != description:  # one a run of older code described
            c.update_registered_model(name, description=description)
    existing = c.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        version = max(int(v.version) for v in existing)
        _link(c, model_id, name, version)  # a version registered before the link was made (older stores)
    else:
        mlflow.set_tracking_uri(c.tracking_uri)  # register_model works on the global store
        with contextlib.redirect_stderr(io.StringIO()) as said:  # its "Created version ..." lines
            version = int(mlflow.register_model(f"models:/{model_id}", name).version)
        log.debug("%s", said.getvalue().strip())
    for alias in aliases:
        c.set_registered_model_alias(name, alias, str(version))
    return version


def _link(c, model_id: str, name: str, version: int) -> None:
    """The logged model's record of the registry versions made from it (the tag ``mlflow.register_model``
    writes), with ``name`` version ``version`` added if missing."""
    tags = c.get_logged_model(model_id).tags
    linked = json.loads(tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    if not any(v.get("name") == name and str(v.get("version")) == str(version) for v in linked):
        linked.append({"name": name, "version": str(version)})
        c.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(linked)})
