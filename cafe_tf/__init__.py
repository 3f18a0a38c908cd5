"""cafe-tf: slim convolutional networks to a hardware budget and ship them to the edge.

The public API (``cafe_tf.api``, and ``load_data`` from ``cafe_tf.data``)::

    import cafe_tf

    data = cafe_tf.load_data("folder:my_images")
    found = cafe_tf.search_widths(model, data, max_macs="50%", workdir="runs/search")

Names are imported on first use, so ``import cafe_tf`` does not load TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_data": "cafe_tf.data", "Data": "cafe_tf.data",
    "profile": "cafe_tf.api", "train": "cafe_tf.api", "search_widths": "cafe_tf.api", "prune": "cafe_tf.api",
    "export_tflite": "cafe_tf.api", "benchmark": "cafe_tf.api",
    "Profile": "cafe_tf.api", "TrainResult": "cafe_tf.api", "SearchResult": "cafe_tf.api",
    "PruneResult": "cafe_tf.api", "ExportResult": "cafe_tf.api", "BenchmarkResult": "cafe_tf.api",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'cafe_tf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
