"""Model registry: importing this package registers every model."""

from . import densenet, imagenet, resnet  # noqa: F401  (registration side effect)
from .attention import ATTENTION_TYPES, SpatialSoftmax, backbone_digest, create_attn, get_attn
from .registry import create_model, is_model, list_models, register_model

__all__ = [
    "ATTENTION_TYPES",
    "SpatialSoftmax",
    "backbone_digest",
    "create_attn",
    "create_model",
    "get_attn",
    "is_model",
    "list_models",
    "register_model",
]
