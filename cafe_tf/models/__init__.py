"""Model builders. Each returns a plain functional Keras 3 model built from standard layers.

Every builder has the signature
``builder(input_shape=..., num_classes=..., width_mult=1.0, **kwargs) -> keras.Model``
and names its layers deterministically, so that channel groups (``cafe_tf.graph``) and
``widths.json`` files are stable across runs. The supernet of any of them is
``cafe_tf.slim.Supernet(build(name, ...))``; the plain model at a width assignment is
``cafe_tf.surgery.extract(...)``.

:func:`build` also takes a user's ``.keras`` path or ``keras.applications.<Name>``; where a model
comes from, and how ``widths.json`` records it, is :mod:`cafe_tf.models.source`.
"""

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


def build(
    name: str,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    width_mult: float = 1.0,
    **kwargs: Any,
) -> keras.Model:
    """Builds the plain functional model ``name``: a registry name (:func:`names`), a ``.keras`` path or
    ``keras.applications.<Name>`` (``kwargs``: ``input_scaling``; see :mod:`cafe_tf.models.source`)."""
    if name not in _REGISTRY:
        from cafe_tf.models import source

        return source.resolve(name, input_shape, num_classes, width_mult, **kwargs).build()
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
