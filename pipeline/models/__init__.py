"""Model registry. Importing this package needs torch alone: the torchvision-backed nets (``densenet``,
``imagenet``) register on the first lookup through the functions here, so a bare GPU machine can build the
CIFAR ResNets (``benchmarks/fast_path.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from . import registry, resnet  # noqa: F401  (registration side effect; torch only)
from .attention import ATTENTION_TYPES, SpatialSoftmax, backbone_digest, create_attn, get_attn

_F = TypeVar("_F", bound=Callable[..., nn.Module])


def _register_all() -> None:
    # function-local: these need torchvision, so they load on the first lookup, not at import (resnet, torch
    # only, is imported above); a static import, not importlib, so pipeline.codebase counts them in stage deps
    from . import densenet, imagenet  # noqa: F401


def register_model(fn: _F) -> _F:
    """Register ``fn`` under its own name; a name already registered, by any model module, is an error."""
    _register_all()
    return registry.register_model(fn)


def list_models() -> list[str]:
    _register_all()
    return registry.list_models()


def get_factory(name: str) -> Callable[..., nn.Module]:
    """The factory registered as ``name`` (its signature lists the model's arguments)."""
    _register_all()
    return registry.get_factory(name)


def is_model(name: str) -> bool:
    _register_all()
    return registry.is_model(name)


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build the registered model ``name``; ``kwargs`` go to its factory."""
    _register_all()
    return registry.create_model(name, **kwargs)


__all__ = [
    "ATTENTION_TYPES",
    "SpatialSoftmax",
    "backbone_digest",
    "create_attn",
    "create_model",
    "get_attn",
    "get_factory",
    "is_model",
    "list_models",
    "register_model",
]
