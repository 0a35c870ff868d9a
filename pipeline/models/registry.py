"""Models register by name through small factory functions (the pattern of timm's ``_registry.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

F = TypeVar("F", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: F) -> F:
    """Register ``fn`` under its own name; registering a name twice is an error."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered (by {_MODELS[name].__module__})")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def get_factory(name: str) -> Callable[..., nn.Module]:
    """The factory registered as ``name`` (its signature lists the model's arguments)."""
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered: {list_models()}") from None


def is_model(name: str) -> bool:
    return name in _MODELS


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build the registered model ``name``; ``kwargs`` go to its factory."""
    return get_factory(name)(**kwargs)
