"""The built-in architectures: their builders, default input shapes and class counts."""

from __future__ import annotations

import importlib
from typing import Any

import keras

# name -> (module, function, default kwargs). Modules load lazily so importing the registry is cheap.
_REGISTRY: dict[str, tuple[str, str, dict[str, Any]]] = {
    "cnn_small": ("cafe_tf.models.cnn", "cnn_small", {}),
    "resnet20": ("cafe_tf.models.resnet_cifar", "resnet_cifar", {"depth": 20}),
    "resnet56": ("cafe_tf.models.resnet_cifar", "resnet_cifar", {"depth": 56}),
    "resnet110": ("cafe_tf.models.resnet_cifar", "resnet_cifar", {"depth": 110}),
    "vgg16_cifar": ("cafe_tf.models.vgg", "vgg16_cifar", {}),
    "resnet50": ("cafe_tf.models.resnet", "resnet50", {}),
    "mobilenet_v2": ("cafe_tf.models.mobilenet_v2", "mobilenet_v2", {}),
    "mobilenet_v2_cifar": ("cafe_tf.models.mobilenet_v2", "mobilenet_v2", {"cifar": True}),
    "efficientnet_b0": ("cafe_tf.models.efficientnet", "efficientnet_b0", {}),
}

# Input shape and class count each architecture is defined for, used when the caller gives none.
DEFAULT_INPUT = {
    "cnn_small": ((28, 28, 1), 10),
    "resnet20": ((32, 32, 3), 10),
    "resnet56": ((32, 32, 3), 10),
    "resnet110": ((32, 32, 3), 10),
    "vgg16_cifar": ((32, 32, 3), 10),
    "resnet50": ((224, 224, 3), 1000),
    "mobilenet_v2": ((224, 224, 3), 1000),
    "mobilenet_v2_cifar": ((32, 32, 3), 10),
    "efficientnet_b0": ((224, 224, 3), 1000),
}


def names() -> list[str]:
    """The model names :func:`build` accepts."""
    return sorted(_REGISTRY)


def build_builtin(
    name: str,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    width_mult: float = 1.0,
    **kwargs: Any,
) -> keras.Model:
    """Builds the built-in architecture ``name`` (:func:`names`)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown built-in model {name!r}; valid names: {names()}")
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult!r}")
    module, fn, defaults = _REGISTRY[name]
    default_shape, default_classes = DEFAULT_INPUT[name]
    builder = getattr(importlib.import_module(module), fn)
    return builder(
        input_shape=tuple(input_shape or default_shape),
        num_classes=int(num_classes or default_classes),
        width_mult=float(width_mult),
        **{**defaults, **kwargs},
    )
