"""Evaluation of one trained unit, rebuilt from its checkpoint alone (no params.yaml needed).

Writes test top-1/top-5/loss, parameter count and inference throughput as metrics, a confusion CSV (for
``dvc plots``), and, for networks with the paper's attention, a picture of the attention maps over a few
test images. Everything is also logged to the unit's MLflow run.
"""

from __future__ import annotations

import csv
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline import serving, tracking
from pipeline.config import EvaluateCfg
from pipeline.data.manifest import Manifest, load_manifest, load_split
from pipeline.io import atomic_path, read_json, write_json
from pipeline.models import SpatialSoftmax, create_model
from pipeline.plots import attention_grid, save
from pipeline.spec import RunSpec
from pipeline.train.checkpoint import read_checkpoint
from pipeline.train.engine import TensorData, normalize, predict


def load_checkpoint(path: str | Path) -> tuple[nn.Module, RunSpec, dict[str, Any]]:
    """Rebuild the trained network from a ``model.pt`` written by the train stage (read as plain data, with
    ``weights_only=True``: a crafted file raises ``CheckpointError`` and runs nothing)."""
    ck = read_checkpoint(path)
    spec = RunSpec.model_validate(ck["spec"])
    model = create_model(spec.model, **spec.model_args)
    model.load_state_dict(ck["model"])
    return model.eval(), spec, ck


@torch.no_grad()
def flops_per_image(model: nn.Module, x: torch.Tensor) -> int:
    """Forward FLOPs for one image, counted by ``torch.utils.flop_counter`` (a multiply-add is 2 FLOPs)."""
    with FlopCounterMode(display=False) as counter:
        model.eval()(x[:1])
    return int(counter.get_total_flops())


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


def evaluate_unit(
    unit_dir: Path,
    man: Manifest,
    test: TensorData,
    test_hwc: np.ndarray,
    cfg: EvaluateCfg,
    out_dir: Path,
    confusion_file: Path,
    *,
    loaded: tuple[nn.Module, RunSpec, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Evaluate the unit in ``unit_dir`` (model.pt as the train stage writes it, or ``loaded``: what
    ``load_checkpoint`` made of it); write its attention picture (if it has attention) and summary to
    ``out_dir`` and its confusion CSV; return its metrics."""
    model, spec, ck = loaded or load_checkpoint(unit_dir / "model.pt")
    if man.data_sha256 != spec.dataset.sha256:
        raise ValueError(
            f"{unit_dir}/model.pt was trained on data {spec.dataset.sha256[:12]}, but the test set is "
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
    out_dir.mkdir(parents=True)
    n = min(cfg.attention_images, len(test))
    maps = attention_maps(model, normalize(test.images[:n], mean, std)) if n else []
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
        save(fig, out_dir / "attention.png")
    summary = {
        "key": ck["key"],
        "spec": spec.model_dump(),
        "metrics": metrics,
        "num_test": len(y),
        "pairing": ck.get("pairing"),  # which units started from the same backbone and data order
        "diverged": _diverged(ck.get("history") or [], metrics),
    }
    write_json(out_dir / "summary.json", summary)
    with open(confusion_file, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["actual", "predicted"])
        w.writerows((man.classes[int(a)], man.classes[int(p)]) for a, p in zip(y, pred, strict=True))
    return metrics


def _diverged(history: list[dict[str, Any]], metrics: dict[str, Any]) -> bool:
    """A non-finite training loss in any epoch, or a non-finite test loss."""
    losses = [h.get("train_loss", 0.0) for h in history] + [metrics["test_loss"]]
    return not all(math.isfinite(x) for x in losses)


def evaluate_method(
    method_dir: str | Path,
    data_dir: str | Path,
    cfg: EvaluateCfg,
    out_dir: str | Path,
    confusion_dir: str | Path,
    metrics_file: str | Path,
) -> dict[str, Any]:
    """Evaluate every unit the train stage wrote under ``method_dir`` (``<track>/seed<k>/``) on the test split;
    write ``out_dir/<track>/seed<k>/``, ``confusion_dir/<track>/seed<k>.csv`` and {track: {seed<k>: metrics}}
    to ``metrics_file``; log the test metrics and pictures to each unit's MLflow run, each net as an MLflow
    model, and register the lowest seed's per track (``pipeline.serving``). A unit two tracks share is
    evaluated once."""
    method_dir = Path(method_dir)
    units = sorted(p.relative_to(method_dir) for p in method_dir.glob("*/seed*") if p.is_dir())  # <track>/seed<k>
    if not units:
        raise ValueError(f"{method_dir}: no <track>/seed<k>/ directories; run the train stage first")
    records = {rel: read_json(method_dir / rel / "mlflow.json") for rel in units}  # run ids and unit keys
    first: dict[str, Path] = {}  # unit key -> the place it is evaluated: tracks share unchanged units
    places = {rel: first.setdefault(records[rel]["key"], rel) for rel in units}
    aliases = _aliases(places)
    man = load_manifest(data_dir)
    te = load_split(data_dir, "test")
    test = TensorData.from_numpy(te.images, te.labels)
    c = tracking.client()
    metrics: dict[str, Any] = {}
    logged: dict[Path, dict[str, Any]] = {}
    with atomic_path(out_dir) as tmp, atomic_path(confusion_dir) as ctmp:
        for rel, src in places.items():
            (ctmp / rel.parent).mkdir(parents=True, exist_ok=True)
            if src == rel:
                loaded = load_checkpoint(method_dir / rel / "model.pt")
                m = evaluate_unit(method_dir / rel, man, test, te.images, cfg, tmp / rel, ctmp / f"{rel}.csv",
                                  loaded=loaded)  # fmt: skip
                wanted = [a for r, s in places.items() if s == src for a in aliases[r]]
                net, spec, _ = loaded
                logged[src] = _publish(
                    c, records[src], net, spec, images=te.images, classes=man.classes, aliases=wanted
                )
            else:
                shutil.copytree(tmp / src, tmp / rel)
                shutil.copyfile(ctmp / f"{src}.csv", ctmp / f"{rel}.csv")
                m = metrics[src.parent.name][src.name]
            metrics.setdefault(rel.parent.name, {})[rel.name] = m
            write_json(tmp / rel / "mlflow_model.json", {**logged[src], "aliases": aliases[rel]})
    write_json(metrics_file, metrics)

    for rel in first.values():
        run_id = records[rel]["run_id"]
        for name, v in metrics[rel.parent.name][rel.name].items():
            c.log_metric(run_id, name, float(v))
        c.log_artifact(run_id, str(Path(confusion_dir) / f"{rel}.csv"), "confusion")
        picture = Path(out_dir) / rel / "attention.png"
        if picture.is_file():
            c.log_artifact(run_id, str(picture))
    return metrics


def _seed(place: Path) -> int:
    return int(place.name.removeprefix("seed"))


def _aliases(places: dict[Path, Path]) -> dict[Path, list[str]]:
    """<track>/seed<k> -> the registry aliases it holds: its track's (``pipeline.serving``) for the track's
    lowest seed, none for the others."""
    lowest: dict[str, Path] = {}  # track -> the place of its lowest seed
    for rel in sorted(places, key=_seed):
        lowest.setdefault(rel.parent.name, rel)
    return {rel: [serving.ALIASES[rel.parent.name]] if lowest[rel.parent.name] == rel else [] for rel in places}


def _publish(
    c,
    record: dict[str, Any],
    net: nn.Module,
    spec: RunSpec,
    *,
    images: np.ndarray,
    classes: list[str],
    aliases: list[str],
) -> dict[str, Any]:
    """The unit's net logged as an MLflow model into its run (``record``: its mlflow.json), and registered under
    ``aliases`` if it holds any. Returns its model (id, URI) and the registered version if any."""
    model_id = serving.log_unit_model(c, record["run_id"], record["experiment_id"], net, spec, images[:2], classes)
    out: dict[str, Any] = {"model_id": model_id, "model_uri": f"models:/{model_id}"}
    if aliases:
        name = serving.registered_name(c.get_experiment(record["experiment_id"]).name, spec.method)
        what = f"{spec.method} on {spec.dataset.name}, lowest seed per track (pipeline.serving)"
        out["registered"] = {
            "name": name,
            "version": serving.register(c, name, model_id, record["run_id"], aliases, what),
        }
    return out
