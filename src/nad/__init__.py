"""nad: erase backdoor triggers from neural networks with Neural Attention Distillation (Li et al., ICLR 2021).

The plain-function entry points, for any ``nn.Module`` and any map-style torch ``Dataset``::

    import nad
    result = nad.erase(model, clean_dataset, normalize="cifar10")   # NAD, with plain fine-tuning beside it
    report = nad.scan_model(model, clean_dataset, normalize="cifar10")  # backdoor evidence without the trigger

(``nad.scan`` is the module with the scan itself.) They are imported on first use, so that ``import nad``
(and ``nad --help``) stays light.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

try:
    __version__ = metadata.version("nad")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

_ENTRY_POINTS = {
    "erase": "nad.easy",
    "scan_model": "nad.easy",
    "as_classifier": "nad.easy",
    "as_image_data": "nad.easy",
}


def __getattr__(name: str) -> Any:
    if name in _ENTRY_POINTS:
        import importlib

        return getattr(importlib.import_module(_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module 'nad' has no attribute {name!r}")


__all__ = ["__version__", *_ENTRY_POINTS]
