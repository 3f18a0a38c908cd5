"""Slimmable Conv2D, DepthwiseConv2D, Dense and BatchNormalization.

Each wraps a plain Keras layer of the full network and shares its variables. At call time it takes
the active input/output channels as ``int32`` index tensors and gathers only those rows of its
weights, so compute scales with the selected width (no full-width-then-mask) and one traced
``tf.function`` serves every width (index tensors of shape ``[None]`` do not retrace). Activations
are kept *compact*: a tensor holds only the active channels, in the order of its index tensor.

``None`` for an index means "all channels" and skips the gather (the full net runs at plain speed).

Example::

    conv = keras.layers.Conv2D(64, 3, padding="same"); conv.build((None, 32, 32, 16))
    slim = SlimConv2D(conv)
    y = slim(x_with_8_channels, in_index=tf.constant([0, 2, 4, 6, 8, 10, 12, 14]),
             out_index=tf.range(32))          # -> (..., 32)
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _gather(w, index, axis):
    return w if index is None else tf.gather(w, index, axis=axis)


def _act(layer, y):
    return layer.activation(y) if getattr(layer, "activation", None) is not None else y


class _SlimWrapper(keras.layers.Layer):
    """Base: holds the wrapped full-width layer (its variables are the only weights)."""

    expected = ()

    def __init__(self, layer: keras.layers.Layer, **kwargs):
        if type(layer) not in self.expected:
            raise TypeError(f"{type(self).__name__} wraps {[t.__name__ for t in self.expected]}, got {type(layer).__name__}")
        if not layer.built:
            raise ValueError(f"layer {layer.name!r} must be built before it is wrapped")
        super().__init__(name=f"slim_{layer.name}", dtype=layer.dtype_policy, **kwargs)
        self.layer = layer
        self.built = True


class SlimConv2D(_SlimWrapper):
    """Conv2D over the channels ``in_index`` producing the channels ``out_index``."""

    expected = (keras.layers.Conv2D,)

    def call(self, x, in_index=None, out_index=None):
        layer = self.layer
        kernel = _gather(_gather(layer.kernel, in_index, 2), out_index, 3)
        y = tf.nn.convolution(
            x, tf.cast(kernel, x.dtype), strides=layer.strides, padding=layer.padding.upper(),
            dilations=layer.dilation_rate,
        )
        if layer.use_bias:
            y = tf.nn.bias_add(y, tf.cast(_gather(layer.bias, out_index, 0), y.dtype))
        return _act(layer, y)


class SlimDepthwiseConv2D(_SlimWrapper):
    """DepthwiseConv2D (depth multiplier 1) over the channels ``index``."""

    expected = (keras.layers.DepthwiseConv2D,)

    def call(self, x, index=None):
        layer = self.layer
        kernel = _gather(layer.kernel, index, 2)
        strides = (1,) + tuple(layer.strides) + (1,)
        y = tf.nn.depthwise_conv2d(
            x, tf.cast(kernel, x.dtype), strides=strides, padding=layer.padding.upper(),
            dilations=layer.dilation_rate,
        )
        if layer.use_bias:
            y = tf.nn.bias_add(y, tf.cast(_gather(layer.bias, index, 0), y.dtype))
        return _act(layer, y)


class SlimDense(_SlimWrapper):
    """Dense from the features ``in_index`` to the units ``out_index``."""

    expected = (keras.layers.Dense,)

    def call(self, x, in_index=None, out_index=None):
        layer = self.layer
        kernel = tf.cast(_gather(_gather(layer.kernel, in_index, 0), out_index, 1), x.dtype)
        y = tf.tensordot(x, kernel, axes=[[x.shape.rank - 1], [0]]) if x.shape.rank > 2 else tf.matmul(x, kernel)
        if layer.use_bias:
            y = tf.nn.bias_add(y, tf.cast(_gather(layer.bias, out_index, 0), y.dtype))
        return _act(layer, y)


class SlimBatchNormalization(_SlimWrapper):
    """BatchNormalization of the channels ``index`` (last axis).

    In training mode it normalises with the batch statistics of the active channels and updates
    only their moving statistics (``moving = momentum * moving + (1 - momentum) * batch``, as Keras
    does); other channels' statistics are untouched. Statistics shared across widths are wrong for
    any one width: evaluate after ``Supernet.calibrate_bn``.
    """

    expected = (keras.layers.BatchNormalization,)

    def batch_moments(self, x):
        axes = list(range(x.shape.rank - 1))
        return tf.nn.moments(tf.cast(x, tf.float32), axes=axes)

    def call(self, x, index=None, training=False, stats=None):
        """``stats``: optional (mean, variance) to normalise with instead of batch/moving ones."""
        layer = self.layer
        gamma = _gather(layer.gamma, index, 0) if layer.scale else None
        beta = _gather(layer.beta, index, 0) if layer.center else None
        if stats is not None:
            mean, var = stats
        elif training:
            mean, var = self.batch_moments(x)
            m = layer.momentum
            for moving, batch in ((layer.moving_mean, mean), (layer.moving_variance, var)):
                if index is None:
                    moving.assign(moving * m + batch * (1.0 - m))
                else:
                    old = tf.gather(moving, index)
                    moving.assign(tf.tensor_scatter_nd_update(moving.value, index[:, None], old * m + batch * (1.0 - m)))
        else:
            mean = _gather(layer.moving_mean, index, 0)
            var = _gather(layer.moving_variance, index, 0)
        y = tf.nn.batch_normalization(
            tf.cast(x, tf.float32), mean, var, beta, gamma, layer.epsilon
        )
        return tf.cast(y, x.dtype)


SLIM_TYPES = {
    keras.layers.Conv2D: SlimConv2D,
    keras.layers.DepthwiseConv2D: SlimDepthwiseConv2D,
    keras.layers.Dense: SlimDense,
    keras.layers.BatchNormalization: SlimBatchNormalization,
}
