"""What a network *is*, as a digest: its modules, their settings and its initial weights.

Two settings can name one network: the paper's ablation (``attn_resnet`` with ``placement: none``) builds
exactly the ResNet that ``resnet`` builds, from the same seed the same weights. A training unit is keyed on
this digest rather than on the method's name (``pipeline.spec.RunSpec.identity``), so such methods share one
trained unit instead of computing it twice.

The digest covers, for every module in order: its name, class (module and qualified name) and its public
attributes (``stride``, ``scaling``, ``temperature``, ... : whatever a module stores to decide what its
``forward`` does), and every parameter and buffer (name, dtype, shape, ``requires_grad``, values). The code of
``forward`` is not in it: the unit key hashes the models' source separately (``pipeline.spec.code_digest``).
Attribute values are described deterministically (never an object's address), so the digest is the same in
every process: the train stage's driver and its Ray workers must agree on a unit's key.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from typing import Any

import torch
from torch import nn

_PLAIN = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device, torch.Size, enum.Enum)


def _describe(v: Any, depth: int = 0) -> str:
    """A stable text for a module attribute (no memory addresses, so equal in every process)."""
    if isinstance(v, _PLAIN):
        return repr(v)
    if isinstance(v, torch.Tensor):  # a plain tensor attribute (not a registered buffer)
        return f"tensor{tuple(v.shape)}:{v.dtype}:{hashlib.sha256(_bytes(v)).hexdigest()}"
    if isinstance(v, (list, tuple, set, frozenset)):
        items = sorted(map(_describe, v)) if isinstance(v, (set, frozenset)) else [_describe(x, depth + 1) for x in v]
        return f"{type(v).__name__}[{','.join(items)}]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{_describe(k)}:{_describe(x, depth + 1)}" for k, x in sorted(v.items(), key=str)) + "}"
    kind = f"{getattr(type(v), '__module__', '?')}.{type(v).__qualname__}"
    if isinstance(v, functools.partial):
        return f"partial({_describe(v.func)},{_describe(v.args, depth + 1)},{_describe(v.keywords, depth + 1)})"
    if callable(v) and hasattr(v, "__qualname__"):  # a function or class: named, not printed
        return f"{getattr(v, '__module__', '?')}.{v.__qualname__}"
    if hasattr(v, "__dict__") and depth < 4:  # a settings object (e.g. functools.partial's keywords)
        return kind + _describe({k: x for k, x in vars(v).items() if not k.startswith("_")}, depth + 1)
    return kind


def _bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _settings(m: nn.Module) -> str:
    """The public attributes of module ``m`` (its submodules, parameters and buffers are walked apart)."""
    items = sorted((k, v) for k, v in vars(m).items() if not k.startswith("_") and k != "training")
    return ";".join(f"{k}={_describe(v)}" for k, v in items)


def network_digest(model: nn.Module) -> str:
    """sha256 of ``model``'s structure, module settings and current weights (see the module docstring)."""
    h = hashlib.sha256()
    for name, m in model.named_modules():
        h.update(f"module {name} {type(m).__module__}.{type(m).__qualname__} {_settings(m)}\n".encode())
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, t in tensors:
        grad = getattr(t, "requires_grad", False)
        h.update(f"tensor {name} {t.dtype} {tuple(t.shape)} {grad}\n".encode())
        h.update(_bytes(t))
    return h.hexdigest()
