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

from typing import Any

import keras

from cafe_tf.models.registry import DEFAULT_INPUT, build_builtin, names

__all__ = ["DEFAULT_INPUT", "build", "names"]


def build(
    name: str,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    width_mult: float = 1.0,
    **kwargs: Any,
) -> keras.Model:
    """Builds the plain functional model ``name``: a registry name (:func:`names`), a ``.keras`` path or
    ``keras.applications.<Name>`` (``kwargs``: ``input_scaling``; see :mod:`cafe_tf.models.source`)."""
    if name in names():
        return build_builtin(name, input_shape, num_classes, width_mult, **kwargs)
    from cafe_tf.models import source

    return source.resolve(name, input_shape, num_classes, width_mult, **kwargs).build()
