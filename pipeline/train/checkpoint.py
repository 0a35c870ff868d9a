"""Reading checkpoints without trusting them.

Checkpoints come from shared places -- the run storage (``compute.storage_path``, often an s3:// prefix) and
DVC remotes -- so a file there may have been written by anyone who can write there. ``torch.load`` with
``weights_only=False`` unpickles arbitrary objects, and unpickling can run code. Every checkpoint this project
writes holds only tensors and plain Python values (str, int, float, bool, None, list, tuple, dict), which
``weights_only=True`` reads; anything else is refused here with one clear message.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import torch

from pipeline.data.errors import DataError

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
    except (RuntimeError, EOFError, struct.error) as e:  # cut short, or not torch.save's format at all
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
