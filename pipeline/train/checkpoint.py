"""The checkpoint and resume protocol, and reading checkpoints without trusting them.

What a training job leaves (``pipeline.train.worker`` writes, the loop and the train stage's driver read):

- every epoch of an unfinished unit, a Ray Train checkpoint directory holding ``state.pt`` (``TrainState``:
  weights, optimizer, scheduler, history) and beside it ``unit.json`` (``ResumePoint``: which unit, which
  epoch), so the driver's resume index (``resume_points``) reads a few bytes per checkpoint, never a state;
- a finished unit, its ``UnitRecord`` in the unit store (``pipeline.train.store``).


Checkpoints come from shared places -- the run storage (``compute.storage_path``, often an s3:// prefix) and
DVC remotes -- so a file there may have been written by anyone who can write there. ``torch.load`` with
``weights_only=False`` unpickles arbitrary objects, and unpickling can run code. Every checkpoint this project
writes holds only tensors and plain Python values (str, int, float, bool, None, list, tuple, dict), which
``weights_only=True`` reads; anything else is refused here with one clear message.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import struct
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import pyarrow.fs as pafs
import torch

from pipeline.data.errors import DataError
from pipeline.io import filesystem, join

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
UNIT_FILE = "unit.json"
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a job's checkpoints (its restore point)
HISTORY_FIELDS = (  # an epoch record's columns in history.csv and the curves (records hold more: diagnostics)
    "epoch",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "lr",
    "epoch_time_s",
    "images_per_s",
)


class TrainState(TypedDict):
    """An unfinished unit after an epoch: what it resumes from."""

    key: str
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    history: list[dict[str, Any]]  # one record per epoch trained
    diag_start: dict[str, float] | None  # the attention diagnostics before training (pipeline.models.diagnostics)


class ResumePoint(TypedDict):
    """``unit.json`` beside a ``state.pt``."""

    key: str
    epoch: int


class UnitRecord(TypedDict):
    """A finished unit as the unit store keeps it, and as the train stage writes it to ``model.pt``."""

    spec: dict[str, Any]  # the RunSpec, dumped: evaluation rebuilds the net from it alone
    key: str
    model: dict[str, torch.Tensor]
    history: list[dict[str, Any]]
    resumed_from: int | None  # the epochs a resumed attempt started from, None if never interrupted
    pairing: dict[str, Any]  # digests of the initial backbone and the data order: which units pair up
    wall: dict[str, float]  # started_at, finished_at (epoch seconds)
    provenance: dict[str, Any]
    diag_start: dict[str, float] | None
    # model.pt only: the methods whose rows this unit is (one network, recipe and start trained once)
    shared_by: NotRequired[list[str]]


def write_state(directory: str | Path, state: TrainState) -> None:
    """``state`` and its ``ResumePoint`` into the checkpoint ``directory`` (a Ray Train checkpoint's)."""
    torch.save(state, os.path.join(directory, STATE_FILE))
    point: ResumePoint = {"key": state["key"], "epoch": len(state["history"])}
    with open(os.path.join(directory, UNIT_FILE), "w") as f:
        json.dump(point, f)


def load_state(checkpoint_uri: str) -> TrainState:
    """A checkpoint's training state, read straight from its directory in the run storage (local or s3://)."""
    fs, base = filesystem(checkpoint_uri)
    with fs.open_input_stream(join(base, STATE_FILE)) as f:
        return read_checkpoint(f.read(), join(checkpoint_uri, STATE_FILE))  # type: ignore[return-value]


def resume_points(storage: str, dataset: str, keys: list[str]) -> dict[str, str]:
    """The latest *readable* checkpoint of each unit in ``keys`` left by earlier training jobs of ``dataset`` in
    the run storage: {key: checkpoint URI}. Found from the small ``unit.json`` beside each checkpoint, so a unit
    resumes whichever job, lane or concurrency it was trained in before. The one chosen is read once here: a
    state that cannot be read (cut short by a crash mid-write, or refused) is set aside with one warning naming
    it (``set_aside``) and the unit resumes from its previous checkpoint, or starts over if none is left."""
    fs, base = filesystem(storage)
    want, found = set(keys), {}
    try:
        jobs = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    except OSError:
        return {}
    for job in jobs:
        if job.type != pafs.FileType.Directory or not job.base_name.startswith(f"{dataset}-train-"):
            continue
        for ck in fs.get_file_info(pafs.FileSelector(job.path)):
            if ck.type != pafs.FileType.Directory or not ck.base_name.startswith("checkpoint_"):
                continue
            try:
                with fs.open_input_stream(join(ck.path, UNIT_FILE)) as f:
                    info = json.loads(f.read())
            except (OSError, ValueError):  # an older or half-written checkpoint: not a resume point
                continue
            if info.get("key") in want:
                found.setdefault(info["key"], []).append((int(info["epoch"]), ck.path))
    scheme = storage.split("://", 1)[0] if "://" in storage else None
    out = {}
    for key, points in found.items():
        for epoch, path in sorted(points, reverse=True):
            uri = f"{scheme}://{path}" if scheme else path
            try:
                load_state(uri)
            except (CheckpointError, OSError) as e:
                set_aside(fs, path, key=key, epoch=epoch, why=str(e))
                continue
            out[key] = uri
            break
    return out


def set_aside(fs: pafs.FileSystem, path: str, *, key: str, epoch: int, why: str) -> None:
    """Take an unreadable checkpoint out of use, keeping its files for a post-mortem: its ``state.pt`` and
    ``unit.json`` get a ``.unreadable`` suffix (file moves, which S3 can do), and Ray Train's record of the job's
    checkpoints beside it is set aside too, so that the job's next run starts from the resume point chosen here
    and not from Ray's own latest checkpoint, which may be this one."""
    log.warning(
        "set aside the unreadable checkpoint %s (unit %s, epoch %d): %s; the unit resumes from its previous "
        "checkpoint, or starts over",
        path,
        key[:12],
        epoch,
        why.splitlines()[0],
    )
    job = path.rstrip("/").rpartition("/")[0]
    for f in (join(path, STATE_FILE), join(path, UNIT_FILE), join(job, RAY_SNAPSHOT)):
        if fs.get_file_info(f).type == pafs.FileType.File:
            fs.move(f, f + ".unreadable")


# torch's message for a global the weights-only unpickler does not allow, e.g. "GLOBAL builtins.open was not"
_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
_REASON = re.compile(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", re.S)


class CheckpointError(DataError):
    """A checkpoint that is not plain data (tensors and plain Python values): it is not loaded."""


def read_checkpoint(source: bytes | str | Path, name: str | None = None) -> dict[str, Any]:
    """The checkpoint in ``source`` (its bytes, or a local path), loaded on the CPU with ``weights_only=True``.

    ``name`` says where it came from in error messages (default: the path). Raises ``CheckpointError`` for a
    file that would need to unpickle anything but tensors and plain values, that is cut short or not a
    ``torch.save`` file, or that is not a mapping."""
    name = name or (str(source) if not isinstance(source, bytes) else "checkpoint")
    f = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        ck = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(_refusal(name, str(e))) from None
    except (RuntimeError, EOFError, ValueError, struct.error) as e:  # cut short, or not torch.save format
        why = str(e).split(". ")[0].strip() or type(e).__name__
        raise CheckpointError(
            f"{name}: not a readable checkpoint (truncated or not a torch.save file: {why})"
        ) from None
    if not isinstance(ck, dict):
        raise CheckpointError(f"{name}: not a checkpoint (it holds a {type(ck).__name__}, not a mapping)")
    return ck


def _refusal(name: str, message: str) -> str:
    found = _GLOBAL.findall(message)
    if found:
        what = f"it asks to unpickle {', '.join(dict.fromkeys(found))}"
    else:
        reason = _REASON.search(message)
        what = f"the weights-only unpickler refused it: {reason.group(1) if reason else message.splitlines()[0]}"
    hint = ""
    if found == ["torch.torch_version.TorchVersion"]:  # what this project's checkpoints held before
        hint = " (an old checkpoint of this pipeline, which stored torch's version as an object: train it again)"
    return (
        f"{name}: not a plain checkpoint ({what}); refusing to load it: checkpoints are loaded with "
        f"weights_only=True, so a file from an untrusted store cannot run code{hint}"
    )
