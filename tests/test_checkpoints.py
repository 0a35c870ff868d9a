"""Checkpoints are read with ``weights_only=True``: a crafted file from the run storage or a DVC remote cannot
run code through any loader, and every checkpoint the pipeline writes (finished unit, per-epoch state,
``model.pt``) is plain data that loads that way and rebuilds the model. No Ray: the loop runs in-process."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import EmbeddedDataCfg, EmbeddedFetchCfg, EvaluateCfg
from pipeline.data.errors import DataError
from pipeline.data.fetch import fetch_dataset
from pipeline.data.manifest import load_manifest, load_split
from pipeline.data.preprocess import preprocess_dataset
from pipeline.evaluate import evaluate_dataset, evaluate_unit, load_checkpoint
from pipeline.provenance import provenance
from pipeline.records import TrainedRow, TrainedRows, unit_dir
from pipeline.settings import validate_params
from pipeline.spec import RunSpec, build_spec, data_ref
from pipeline.train.checkpoint import STATE_FILE, UNIT_FILE, CheckpointError, load_state, read_checkpoint, resume_points
from pipeline.train.engine import Shard, TensorData
from pipeline.train.loop import train_units
from pipeline.train.run import write_outputs
from pipeline.train.store import UnitStore

REFUSED = r"not a plain checkpoint \(it asks to unpickle io\.open\); refusing to load it: .*weights_only=True"


class _CreatesFile:
    """Unpickling this opens (so creates) ``path``: a stand-in for any code a crafted file could run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _crafted(marker: Path) -> bytes:
    """A checkpoint shaped like the pipeline's own, with a payload beside the weights."""
    buf = io.BytesIO()
    torch.save({"key": "k", "spec": {}, "model": {"w": torch.zeros(2)}, "history": [], "x": _CreatesFile(marker)}, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def unit(tmp_path_factory):
    """One tiny unit trained as a job trains it: its finished record in a unit store, its epoch-1 state saved
    as the Ray worker saves it, and its ``model.pt`` as the train stage writes it."""
    tmp = tmp_path_factory.mktemp("unit")
    cfg = EmbeddedDataCfg(kind="embedded", fetch=EmbeddedFetchCfg(seed=3, num_train=60, num_test=20))
    fetch_dataset("embedded", cfg, tmp / "raw")
    preprocess_dataset(tmp / "raw", tmp / "proc")
    import yaml

    with open(Path(__file__).resolve().parents[1] / "params.yaml") as f:
        raw = yaml.safe_load(f)
    raw["methods"]["attn_resnet"]["args"]["width"] = 4
    spec = build_spec(validate_params(raw), "attn_resnet", data_ref("embedded", tmp / "proc"), 0)
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"epochs": 2})})
    store = UnitStore(str(tmp / "storage"), "embedded")
    ckpt = tmp / "storage" / "embedded-train-test" / "checkpoint_000000"
    ckpt.mkdir(parents=True)

    def report(metrics: dict, state: dict | None) -> None:
        if state is not None:  # epoch 1 of 2; saved as pipeline.train.worker's report saves it
            torch.save(state, ckpt / STATE_FILE)

    origin = provenance(job="embedded-train-test", nodes=[{"node_id": "n0", "host": "h0"}])
    train_units([spec], Shard(), torch.device("cpu"), report, store=store, origin=origin)
    train = tmp / "results" / "train"
    write_outputs(train, one_row("attn_resnet", spec.key(), spec.model_dump()), {spec.key(): store.load(spec.key())})
    return {"tmp": tmp, "spec": spec, "store": store, "ckpt": ckpt, "unit_dir": unit_dir(train, spec.key())}


def one_row(method: str, key: str, spec: dict) -> TrainedRows:
    """The train stage's record of one row (recipe track, seed 0) and its unit."""
    row = TrainedRow(method=method, track="recipe", seed=0, key=key, spec=spec, run_id="r")
    return TrainedRows(dataset="embedded", experiment_id="e", rows=[row], shared_by={key: [method]})


def test_the_pipelines_checkpoints_are_plain_data(unit) -> None:
    spec: RunSpec = unit["spec"]
    files = {
        "unit": unit["store"].read(spec.key()),
        "state": (unit["ckpt"] / STATE_FILE).read_bytes(),
        "model.pt": (unit["unit_dir"] / "model.pt").read_bytes(),
    }
    for name, data in files.items():
        ck = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        assert ck["key"] == spec.key(), name
    record = read_checkpoint(files["unit"])
    assert type(record["provenance"]["hardware"]["torch"]) is str  # was a TorchVersion, which needed pickle
    assert record["provenance"]["job"] == "embedded-train-test" and len(record["history"]) == 2
    assert unit["store"].load(spec.key())["spec"] == spec.model_dump()
    state = load_state(str(unit["ckpt"]))
    assert len(state["history"]) == 1 and {"model", "optimizer", "scheduler"} <= state.keys()


def test_evaluation_rebuilds_the_model_from_model_pt(unit, tmp_path) -> None:
    model, spec, ck = load_checkpoint(unit["unit_dir"] / "model.pt")
    assert spec == unit["spec"] and not model.training
    proc = unit["tmp"] / "proc"
    te = load_split(proc, "test")
    metrics = evaluate_unit(
        unit["unit_dir"],
        load_manifest(proc),
        TensorData.from_numpy(te.images, te.labels),
        te.images,
        EvaluateCfg(attention_images=0),
        tmp_path / "out",
        tmp_path / "confusion.csv",
    )
    # the rebuilt network scores on the test split what the trained one did (its last val is the test split)
    assert metrics["test_top1"] == pytest.approx(ck["history"][-1]["val_top1"], abs=1e-3)
    assert metrics["params"] == sum(p.numel() for p in model.parameters())


def test_resuming_from_a_saved_state_works_with_plain_loading(unit, tmp_path) -> None:
    spec: RunSpec = unit["spec"]
    store = UnitStore(str(tmp_path), "embedded")
    train_units(
        [spec], Shard(), torch.device("cpu"), lambda m, s: None, store=store, resume=lambda k: load_state(unit["ckpt"])
    )
    assert store.load(spec.key())["resumed_from"] == 1


def test_a_crafted_checkpoint_runs_nothing_in_any_loader(unit, tmp_path) -> None:
    marker = tmp_path / "ran"
    crafted = _crafted(marker)
    model_pt = tmp_path / "results" / "m" / "recipe" / "seed0" / "model.pt"
    model_pt.parent.mkdir(parents=True)
    model_pt.write_bytes(crafted)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(model_pt))}: {REFUSED}"):  # the evaluation loader
        load_checkpoint(model_pt)
    store = UnitStore(str(tmp_path / "storage"), "embedded")  # a unit someone put in the shared store
    store.write("k", crafted)
    with pytest.raises(CheckpointError, match=f"{re.escape(store.path('k'))}: {REFUSED}"):
        store.load("k")
    ckpt = tmp_path / "storage" / "embedded-train-x" / "checkpoint_000001"  # a resume point
    ckpt.mkdir(parents=True)
    (ckpt / STATE_FILE).write_bytes(crafted)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(ckpt / STATE_FILE))}: {REFUSED}"):
        load_state(str(ckpt))
    assert not marker.exists()
    # the payload is live: the old loading (weights_only=False) ran it
    torch.load(io.BytesIO(crafted), weights_only=False)
    assert marker.exists()


def test_the_evaluate_stage_refuses_it_in_one_line(unit, tmp_path, monkeypatch, capsys, raw_params) -> None:
    import pipeline.cli
    import stages.evaluate

    train_dir = tmp_path / "train"
    crafted = unit_dir(train_dir, "k")
    crafted.mkdir(parents=True)
    (crafted / "model.pt").write_bytes(_crafted(tmp_path / "ran"))
    (train_dir / "rows.json").write_text(one_row("attn_resnet", "k", {}).model_dump_json())
    out = [str(tmp_path / x) for x in ("eval", "confusion", "metrics")]
    raw_params["grid"]["methods"] = ["attn_resnet"]
    raw_params["compute"]["storage_path"] = str(tmp_path / "storage")
    params = validate_params(raw_params)
    with pytest.raises(CheckpointError):
        evaluate_dataset(train_dir, unit["tmp"] / "proc", params, *out)
    assert not any(os.path.exists(p) for p in out) and not (tmp_path / "ran").exists()

    assert issubclass(CheckpointError, DataError)  # run_stage: "error: <message>", exit 1, no traceback
    monkeypatch.setattr(pipeline.cli, "load_params", lambda path: params)
    monkeypatch.setattr("sys.argv", ["evaluate", str(train_dir), str(unit["tmp"] / "proc"), *out])
    with pytest.raises(SystemExit) as exit_:
        pipeline.cli.run_stage(stages.evaluate.main)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {crafted}/model.pt: not a plain checkpoint")


def test_what_else_is_refused(tmp_path) -> None:
    buf = io.BytesIO()
    torch.save({"torch": torch.__version__, "model": {}}, buf)  # how checkpoints stored the version before
    with pytest.raises(CheckpointError, match=r"unpickle torch\.torch_version\.TorchVersion\).*train it again"):
        read_checkpoint(buf.getvalue(), "old.pt")
    with pytest.raises(CheckpointError, match=r"np\.pkl: not a plain checkpoint \(it asks to unpickle numpy\."):
        read_checkpoint(pickle.dumps({"a": np.float64(1.0)}, protocol=2), "np.pkl")  # numpy values are not plain
    with pytest.raises(CheckpointError, match=r"junk: not a plain checkpoint \(the weights-only unpickler refused"):
        read_checkpoint(b"garbage", "junk")
    buf = io.BytesIO()
    torch.save({"w": torch.ones(100)}, buf)
    for cut in (buf.getvalue()[:200], b"", b"junk"):  # an upload cut short, an empty file, not torch's format
        with pytest.raises(CheckpointError, match=r"^cut\.pt: not a readable checkpoint \(truncated"):
            read_checkpoint(cut, "cut.pt")
    buf = io.BytesIO()
    torch.save([torch.zeros(1)], buf)
    with pytest.raises(CheckpointError, match=r"list\.pt: not a checkpoint \(it holds a list"):
        read_checkpoint(buf.getvalue(), "list.pt")
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(2), "meta": {"v": "2.x", "n": (1, 2.0, None, True)}}, path)
    assert read_checkpoint(path)["meta"] == {"v": "2.x", "n": (1, 2.0, None, True)}


def test_resume_points_pick_each_units_latest_checkpoint(tmp_path) -> None:
    def ckpt(job: str, name: str, key: str, epoch: int) -> None:
        d = tmp_path / job / name
        d.mkdir(parents=True)
        torch.save({"key": key, "history": [{}] * epoch}, d / STATE_FILE)
        (d / UNIT_FILE).write_text(json.dumps({"key": key, "epoch": epoch}))

    ckpt("embedded-train-aaa", "checkpoint_1", "k1", 1)
    ckpt("embedded-train-aaa", "checkpoint_2", "k1", 2)
    ckpt("embedded-train-bbb", "checkpoint_1", "k1", 3)  # a later job (other lanes) took k1 further
    ckpt("embedded-train-bbb", "checkpoint_2", "k2", 1)
    ckpt("cifar10-train-ccc", "checkpoint_1", "k3", 5)  # another data set
    (tmp_path / "embedded-train-bbb" / "checkpoint_3").mkdir()  # cut off before its unit.json: not a point
    found = resume_points(str(tmp_path), "embedded", ["k1", "k2", "k3", "k4"])
    assert found == {
        "k1": str(tmp_path / "embedded-train-bbb" / "checkpoint_1"),
        "k2": str(tmp_path / "embedded-train-bbb" / "checkpoint_2"),
    }
    assert load_state(found["k1"])["key"] == "k1"
    assert resume_points(str(tmp_path / "nothing-yet"), "embedded", ["k1"]) == {}


class _Log:
    """An epoch logger that records what it was given (the loop's ``EpochLogger`` protocol)."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def log(self, rec: dict) -> None:
        self.epochs.append(rec["epoch"])

    def end(self, status: str = "FINISHED", end_time_ms: int | None = None) -> None:
        pass


@pytest.mark.parametrize(("every_s", "reports"), [(0.0, [True, True, False]), (3600.0, [False])])
def test_a_unit_is_checkpointed_once_its_interval_passed(unit, tmp_path, every_s, reports) -> None:
    """``compute.checkpoint_every_s``: 0 reports (and checkpoints) after every epoch; an interval longer than the
    unit reports only after its last epoch (the unit stored, no state). Either way every epoch is logged once,
    and only after the report that covers it (an epoch trained again after a cut-off is not logged twice)."""
    spec = unit["spec"].model_copy(update={"train": unit["spec"].train.model_copy(update={"epochs": 3})})
    seen: list[bool] = []
    covered = [0]  # the last epoch an earlier report covered
    log = _Log()

    def report(metrics: dict, state: dict | None) -> None:
        seen.append(state is not None)
        assert log.epochs == list(range(1, covered[0] + 1))  # logged: what earlier reports covered, no more
        covered[0] = metrics["epoch"]

    store = UnitStore(str(tmp_path), "embedded")
    train_units(
        [spec], Shard(), torch.device("cpu"), report, store=store, loggers=lambda k: log, checkpoint_every_s=every_s
    )
    assert seen == reports
    assert log.epochs == [1, 2, 3] and store.has(spec.key())
