"""Architectures (by registry name) and safe checkpoint I/O."""

from nad.models import preact_resnet, resnet, small_cnn, wrn  # noqa: F401  (register the architectures)
from nad.models.checkpoint import (
    Classifier,
    ModelInfo,
    Normalization,
    build_classifier,
    load_model,
    parse_normalize,
    save_model,
)
from nad.models.registry import MODELS, ModelEntry, create_model, model_entry, register_model

__all__ = [
    "MODELS",
    "Classifier",
    "ModelEntry",
    "ModelInfo",
    "Normalization",
    "build_classifier",
    "create_model",
    "load_model",
    "model_entry",
    "parse_normalize",
    "register_model",
    "save_model",
]
