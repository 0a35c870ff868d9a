"""Evaluation of trained units, each rebuilt from its checkpoint alone (no params.yaml needed).

Per unit: test top-1/top-5/loss, parameter count, forward FLOPs and inference throughput as metrics, a
confusion CSV and, for networks with the paper's attention, a picture of the attention maps over a few test
images. Everything is also logged to the unit's MLflow run, and its net as an MLflow model.

The evaluate stage (``evaluate_dataset``) takes a data set's rows in one process: the imports and the MLflow
store are paid once (they were most of the time when each method had a process of its own), and each unit is
evaluated once, however many rows share it (``pipeline.spec.RunSpec.identity``) and however many times the
stage runs: finished evaluations are kept in the run storage (``EvalStore``), keyed by unit, test data,
settings and the evaluation code, so retraining one method evaluates only that method's units again.
"""

from __future__ import annotations

import base64
import csv
import functools
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline import serving, tracking
from pipeline.compute import storage_path
from pipeline.config import EvaluateCfg, Params, config_hash
from pipeline.data.manifest import Manifest, load_manifest, load_split
from pipeline.device import normalize
from pipeline.io import atomic_path, write_json
from pipeline.models import SpatialSoftmax, create_model
from pipeline.models.cost import flops_per_image
from pipeline.plots import attention_grid, png_bytes
from pipeline.records import CHECKPOINT_FILE, ROWS_FILE, RowEval, TrainedRow, read_trained, unit_dir
from pipeline.spec import RunSpec, code_digest
from pipeline.train.checkpoint import read_checkpoint
from pipeline.train.engine import TensorData, predict
from pipeline.train.store import CorruptEntry, KeyedStore
from pipeline.units import group

log = logging.getLogger(__name__)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, RunSpec, dict[str, Any]]:
    """Rebuild the trained network from a ``model.pt`` written by the train stage (read as plain data, with
    ``weights_only=True``: a crafted file raises ``CheckpointError`` and runs nothing)."""
    ck = read_checkpoint(path)
    spec = RunSpec.model_validate(ck["spec"])
    model = create_model(spec.model, **spec.model_args)
    model.load_state_dict(ck["model"])
    return model.eval(), spec, ck


def train_speed(ck: dict[str, Any]) -> dict[str, float]:
    """Measured training images/s per device (worker), median over the epochs after the first."""
    hist = ck.get("history") or []
    rates = [h["images_per_s"] for h in hist[1:]] or [h["images_per_s"] for h in hist]
    world = int(ck.get("provenance", {}).get("world_size", 1) or 1)
    if not rates:
        return {}
    return {"train_images_per_s_per_device": round(statistics.median(rates) / world, 1), "train_devices": world}


@torch.no_grad()
def attention_maps(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The softmax attention maps (before any scaling) of every attention module for input ``x``:
    [(module name, (B, M, h, w))], each map summing to 1 over its h*w positions."""
    maps: list[tuple[str, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o, n=n: maps.append((n, o.detach())))
        for n, m in model.named_modules()
        if isinstance(m, SpatialSoftmax)
    ]
    try:
        model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return maps


@dataclass(frozen=True)
class UnitEval:
    """A unit's evaluation, before it is written anywhere: what the eval cache keeps (``EvalStore``)."""

    key: str  # the unit key
    metrics: dict[str, Any]
    num_test: int
    pairing: dict[str, Any] | None  # which units started from the same backbone and data order
    diverged: bool
    pred: list[int]  # predicted class per test image, in test order (the confusion CSV)
    attention_png: bytes | None  # the attention maps picture, for nets with the paper's attention

    def dump(self) -> dict[str, Any]:
        d = asdict(self)
        d["attention_png"] = base64.b64encode(self.attention_png).decode() if self.attention_png else None
        return d

    @classmethod
    def load(cls, d: dict[str, Any]) -> UnitEval:
        """The evaluation ``dump`` gave; ``CorruptEntry`` naming the field if ``d`` has other fields or types."""
        if unknown := sorted(d.keys() - _FIELDS.keys()):
            raise CorruptEntry(f"unknown field {', '.join(map(repr, unknown))}")
        if missing := sorted(_FIELDS.keys() - d.keys()):
            raise CorruptEntry(f"missing field {', '.join(map(repr, missing))}")
        for name, types in _FIELDS.items():
            if not isinstance(d[name], types):
                want = " or ".join(t.__name__ for t in types if t is not type(None))
                raise CorruptEntry(f"field {name!r} is a {type(d[name]).__name__}, not a {want}")
        try:
            png = base64.b64decode(d["attention_png"], validate=True) if d["attention_png"] else None
        except ValueError as e:  # binascii.Error
            raise CorruptEntry(f"field 'attention_png' is not base64 ({e})") from None
        return cls(**{**d, "attention_png": png})

    def summary(self, spec: dict[str, Any]) -> RowEval:
        """``summary.json`` of one row: the row's own settings (``spec``) beside the unit's results."""
        return RowEval(key=self.key, spec=spec, metrics=self.metrics, num_test=self.num_test, pairing=self.pairing,
                       diverged=self.diverged)  # fmt: skip


# each field of a stored ``UnitEval.dump()`` and the JSON types it may have, checked on load: a matching checksum
# says the entry is as some writer left it, not that the writer was this code
_FIELDS: dict[str, tuple[type, ...]] = {
    "key": (str,),
    "metrics": (dict,),
    "num_test": (int,),
    "pairing": (dict, type(None)),
    "diverged": (bool,),
    "pred": (list,),
    "attention_png": (str, type(None)),
}


def score_unit(
    loaded: tuple[nn.Module, RunSpec, dict[str, Any]],
    man: Manifest,
    test: TensorData,
    test_hwc: np.ndarray,
    cfg: EvaluateCfg,
    where: Path,
) -> UnitEval:
    """Evaluate a net rebuilt by ``load_checkpoint`` (from ``where``) on the test split: metrics, predictions
    and, if it has the paper's attention, the picture of its maps."""
    model, spec, ck = loaded
    if man.data_sha256 != spec.dataset.sha256:
        raise ValueError(
            f"{where}/model.pt was trained on data {spec.dataset.sha256[:12]}, but the test set is "
            f"{man.data_sha256[:12]}: re-run the train stage"
        )
    mean, std = torch.tensor(spec.dataset.mean), torch.tensor(spec.dataset.std)
    t0 = time.perf_counter()
    logits = predict(model, test, mean, std, cfg.batch_size)  # (N, num_classes)
    seconds = time.perf_counter() - t0
    y = test.labels
    topk = logits.topk(min(5, logits.shape[1]), 1).indices
    pred = topk[:, 0]
    metrics = {
        "test_top1": round(100.0 * (pred == y).float().mean().item(), 3),
        "test_top5": round(100.0 * (topk == y[:, None]).any(1).float().mean().item(), 3),
        "test_loss": round(torch.nn.functional.cross_entropy(logits, y).item(), 5),
        "params": sum(p.numel() for p in model.parameters()),
        "flops_per_image": flops_per_image(model, normalize(test.images[:1], mean, std)),
        "infer_images_per_s": round(len(y) / seconds, 1),
        **train_speed(ck),
    }
    n = min(cfg.attention_images, len(test))
    maps = attention_maps(model, normalize(test.images[:n], mean, std)) if n else []
    png = None
    if maps:
        names = [f"{name} ({m.shape[-2]}x{m.shape[-1]})" for name, m in maps]
        titles = [f"{man.classes[int(y[i])]} -> {man.classes[int(pred[i])]}" for i in range(n)]
        fig = attention_grid(
            test_hwc[:n],
            [m[:, 0].numpy() for _, m in maps],
            names,
            titles,
            f"{spec.method} seed {spec.seed}: attention maps (map 0 of each module)",
        )
        png = png_bytes(fig)
    return UnitEval(
        key=ck["key"],
        metrics=metrics,
        num_test=len(y),
        pairing=ck.get("pairing"),
        diverged=_diverged(ck.get("history") or [], metrics),
        pred=pred.tolist(),
        attention_png=png,
    )


def write_eval(ev: UnitEval, spec: dict[str, Any], labels: list[int], classes: list[str], out_dir: Path,
               confusion_file: Path) -> None:  # fmt: skip
    """One row's outputs: ``out_dir/summary.json`` (and ``attention.png``), and its confusion CSV."""
    out_dir.mkdir(parents=True)
    if ev.attention_png:
        (out_dir / "attention.png").write_bytes(ev.attention_png)
    write_json(out_dir / "summary.json", ev.summary(spec).model_dump())
    confusion_file.parent.mkdir(parents=True, exist_ok=True)
    with open(confusion_file, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["actual", "predicted"])
        w.writerows((classes[a], classes[p]) for a, p in zip(labels, ev.pred, strict=True))


def evaluate_unit(
    unit_dir: Path,
    man: Manifest,
    test: TensorData,
    test_hwc: np.ndarray,
    cfg: EvaluateCfg,
    out_dir: Path,
    confusion_file: Path,
) -> dict[str, Any]:
    """Evaluate the unit in ``unit_dir`` (model.pt as the train stage writes it); write its summary (and
    attention picture) to ``out_dir`` and its confusion CSV; return its metrics."""
    loaded = load_checkpoint(unit_dir / "model.pt")
    ev = score_unit(loaded, man, test, test_hwc, cfg, unit_dir)
    write_eval(ev, loaded[1].model_dump(), test.labels.tolist(), man.classes, out_dir, confusion_file)
    return ev.metrics


def _diverged(history: list[dict[str, Any]], metrics: dict[str, Any]) -> bool:
    """A non-finite training loss in any epoch, or a non-finite test loss."""
    losses = [h.get("train_loss", 0.0) for h in history] + [metrics["test_loss"]]
    return not all(math.isfinite(x) for x in losses)


# ---------------------------------------------------------------------------------------------------------
# The evaluate stage: every row of one data set, each unit once


class EvalStore(KeyedStore):
    """Finished evaluations in the run storage, keyed by the unit, the test data, the evaluate settings and
    the evaluation code (``eval_key``): a unit whose evaluation exists is not evaluated again, whichever row
    or run of the stage asks. Each entry carries the sha256 of its content (``KeyedStore.write_entry``): one
    cut short, changed since it was written (a hand edit, another writer of a shared s3:// store), written
    with no checksum (before entries had one) or with fields this code does not know is set aside as
    ``<key>.json.unreadable`` with a warning, and its unit evaluated again."""

    def __init__(self, storage_path: str, dataset: str):
        super().__init__(storage_path, "eval", dataset, ".json")

    def get(self, key: str) -> UnitEval | None:
        """The evaluation stored under ``key``; None if there is none, or none that can be trusted."""
        return self.get_entry(key, UnitEval.load, what="eval-store entry", then="the unit is evaluated again")

    def put(self, key: str, ev: UnitEval) -> None:
        self.write_entry(key, ev.dump())


def eval_key(unit_key: str, man: Manifest, cfg: EvaluateCfg) -> str:
    return config_hash(unit_key, man.data_sha256, cfg.model_dump(), code_digest("pipeline.evaluate"))


def evaluate_dataset(
    train_dir: str | Path,
    data_dir: str | Path,
    params: Params,
    out_dir: str | Path,
    confusion_dir: str | Path,
    metrics_dir: str | Path,
) -> dict[str, Any]:
    """Evaluate every row the train stage recorded under ``train_dir`` (``rows.json``, ``units/<key>/``) on the
    test split, each unit once: rows that share a unit (tracks a search left alone, methods of one network)
    and units evaluated before (``EvalStore``) are not evaluated again, and each unit's checkpoint is read at
    most once. Writes ``out_dir/<method>/<track>/seed<k>/``, ``confusion_dir/<method>/<track>/seed<k>.csv`` and
    ``metrics_dir/<method>.json`` ({track: {seed<k>: metrics}}); logs each unit's test metrics and pictures to
    its MLflow run, its net as an MLflow model, and registers each method's lowest seed per track
    (``pipeline.serving``). Returns {method: metrics}."""
    train_dir, data_dir = Path(train_dir), Path(data_dir)
    trained = read_trained(train_dir)
    rows = trained.of(params.grid.methods)
    if not rows:
        raise ValueError(f"{train_dir}: no row of {params.grid.methods} in {ROWS_FILE}; run the train stage")
    man = load_manifest(data_dir)
    te = load_split(data_dir, "test")
    test = TensorData.from_numpy(te.images, te.labels)
    cache = EvalStore(storage_path(params.compute), man.dataset or trained.dataset)
    checkpoint = functools.cache(lambda key: load_checkpoint(unit_dir(train_dir, key) / CHECKPOINT_FILE))
    evals: dict[str, UnitEval] = {}
    now = 0
    for key in group(rows):
        ekey = eval_key(key, man, params.evaluate)
        if (ev := cache.get(ekey)) is None:
            ev = score_unit(checkpoint(key), man, test, te.images, params.evaluate, unit_dir(train_dir, key))
            cache.put(ekey, ev)
            now += 1
        evals[key] = ev
    log.info("evaluate@%s: %d rows, %d units, %d evaluated now, %d from the eval store", cache.dataset, len(rows),
             len(evals), now, len(evals) - now)  # fmt: skip
    labels = test.labels.tolist()
    models = _publish(tracking.client(), rows, trained.experiment_id, evals, checkpoint, te.images, labels, man)
    return _write_rows(rows, evals, models, labels, man.classes, out_dir, confusion_dir, metrics_dir)


def _write_rows(
    rows: list[TrainedRow],
    evals: dict[str, UnitEval],
    models: dict[Path, dict[str, Any]],
    labels: list[int],
    classes: list[str],
    out_dir: str | Path,
    confusion_dir: str | Path,
    metrics_dir: str | Path,
) -> dict[str, Any]:
    """The stage's outputs, every row's (its own settings beside its unit's results), each directory moved into
    place whole."""
    metrics: dict[str, Any] = {}
    with atomic_path(out_dir) as tmp, atomic_path(confusion_dir) as ctmp, atomic_path(metrics_dir) as mtmp:
        for r in rows:
            write_eval(evals[r.key], r.spec, labels, classes, tmp / r.rel, ctmp / f"{r.rel}.csv")
            write_json(tmp / r.rel / "mlflow_model.json", models[r.rel])
            metrics.setdefault(r.method, {}).setdefault(r.track, {})[f"seed{r.seed}"] = evals[r.key].metrics
        mtmp.mkdir()
        for m, per_track in metrics.items():
            write_json(mtmp / f"{m}.json", per_track)
    return metrics


def _log_eval(c, run_id: str, model_id: str, ev: UnitEval, labels: list[int], man: Manifest) -> None:
    """A unit's test metrics (attached to its logged model and the test data), confusion CSV and attention
    picture, into its MLflow run."""
    serving.log_test_metrics(c, run_id, model_id, ev.metrics, dataset=man.dataset or "test",
                             digest=man.data_sha256[: tracking.DIGEST_CHARS])  # fmt: skip
    rows = "".join(f"{man.classes[a]},{man.classes[p]}\n" for a, p in zip(labels, ev.pred, strict=True))
    c.log_text(run_id, "actual,predicted\n" + rows, "confusion/confusion.csv")
    if ev.attention_png:
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "attention.png").write_bytes(ev.attention_png)
            c.log_artifact(run_id, str(Path(d) / "attention.png"))


def _aliases(rows: list[TrainedRow]) -> dict[Path, list[str]]:
    """<method>/<track>/seed<k> -> the registry aliases it holds: its track's (``pipeline.serving``) for the
    method's lowest seed on that track, none for the others."""
    lowest: dict[tuple[str, str], Path] = {}
    for r in sorted(rows, key=lambda r: r.seed):
        lowest.setdefault((r.method, r.track), r.rel)
    return {r.rel: [serving.ALIASES[r.track]] if lowest[(r.method, r.track)] == r.rel else [] for r in rows}


def _publish(
    c,
    rows: list[TrainedRow],
    exp: str,
    evals: dict[str, UnitEval],
    checkpoint: Callable[[str], tuple[nn.Module, RunSpec, dict[str, Any]]],
    images: np.ndarray,
    labels: list[int],
    man: Manifest,
) -> dict[Path, dict[str, Any]]:
    """Into each unit's MLflow run, once: its net as an MLflow model (unless the worker logged it; the net from
    ``checkpoint``, read once), and its test metrics, attached to that model, and pictures (when the model lacks
    them: a unit evaluated before keeps what it has); each row's method registers it under the row's aliases.
    Returns each row's ``mlflow_model.json``: model id, URI, registered version, aliases."""
    aliases = _aliases(rows)
    logged: dict[str, str] = {}  # unit key -> model id
    for key, (r, *_) in group(rows).items():  # each unit once, by its first row
        found = serving.logged_model(c, exp, r.run_id)
        if found is None:
            net, spec, _ = checkpoint(key)
            logged[key] = serving.log_unit_model(c, r.run_id, exp, net, spec, images[:2], man.classes)
        else:
            logged[key] = found.model_id
        if not serving.has_test_metrics(c, logged[key], evals[key].metrics):
            _log_eval(c, r.run_id, logged[key], evals[key], labels, man)
    out: dict[Path, dict[str, Any]] = {}
    for r in rows:
        model_id = logged[r.key]
        entry: dict[str, Any] = {"model_id": model_id, "model_uri": f"models:/{model_id}", "aliases": aliases[r.rel]}
        if aliases[r.rel]:
            name = serving.registered_name(c.get_experiment(exp).name, r.method)
            what = (
                f"{r.method} (model {r.spec['model']}) trained on the data set {r.spec['dataset']['name']}; each "
                "track's alias (recipe, searched) points at its lowest seed (pipeline.serving)"
            )
            entry["registered"] = {
                "name": name,
                "version": serving.register(c, name, model_id, r.run_id, aliases[r.rel], what),
            }
        out[r.rel] = entry
    return out
