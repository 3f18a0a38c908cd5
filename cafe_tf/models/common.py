"""Small helpers shared by the model builders: channel rounding, argument checks, conv-BN-activation.

Every builder uses only the layers the channel graph (``cafe_tf.graph``) understands: InputLayer,
Conv2D (groups=1), DepthwiseConv2D (depth_multiplier=1), Dense, BatchNormalization, ReLU,
Activation, Add, Multiply, Concatenate, GlobalAveragePooling2D, MaxPooling2D, AveragePooling2D,
ZeroPadding2D, Flatten, Dropout. :data:`ALLOWED_LAYERS` lists them for tests and users.
"""

from __future__ import annotations

import dataclasses
import operator

import keras

L = keras.layers

ALLOWED_LAYERS: tuple[type, ...] = (
    L.InputLayer, L.Conv2D, L.DepthwiseConv2D, L.Dense, L.BatchNormalization, L.ReLU, L.Activation,
    L.Add, L.Multiply, L.Concatenate, L.GlobalAveragePooling2D, L.MaxPooling2D, L.AveragePooling2D,
    L.ZeroPadding2D, L.Flatten, L.Dropout,
)
ALLOWED_ACTIVATIONS = ("relu", "relu6", "swish", "silu", "sigmoid", "linear")


@dataclasses.dataclass(frozen=True)
class BatchNormConfig:
    """BatchNormalization settings of one architecture (Keras ``momentum`` = 1 - PyTorch's)."""

    momentum: float
    epsilon: float


# PyTorch's defaults (momentum 0.1 there), used by the CIFAR ResNet/VGG references and torchvision.
TORCH_BN = BatchNormConfig(momentum=0.9, epsilon=1e-5)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Rounds ``value`` to the nearest multiple of ``divisor`` (at least ``min_value``, default
    ``divisor``), going one step up when that would lose more than 10% (MobileNet's / EfficientNet's
    ``round_filters`` rule). Example: ``make_divisible(32 * 0.35) == 16``.
    """
    min_value = divisor if min_value is None else min_value
    out = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if out < 0.9 * value:
        out += divisor
    return int(out)


def scaled(channels: int, width_mult: float) -> int:
    """``channels * width_mult`` rounded half up, at least 1 (the CIFAR nets use no divisor)."""
    return max(1, int(channels * width_mult + 0.5))


def check_args(builder: str, input_shape, num_classes: int, width_mult: float) -> tuple[int, int, int]:
    """Validates the common builder arguments; returns ``input_shape`` as a tuple of 3 ints."""
    try:
        shape = tuple(operator.index(d) for d in input_shape)
    except TypeError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{builder} needs input_shape (height, width, channels) of positive ints, "
                         f"got {input_shape!r}")
    try:
        classes = operator.index(num_classes)
    except TypeError:
        classes = 0
    if classes < 1:
        raise ValueError(f"{builder} needs num_classes >= 1, got {num_classes!r}")
    if not width_mult > 0:
        raise ValueError(f"{builder} needs width_mult > 0, got {width_mult!r}")
    return shape


def check_rate(builder: str, name: str, rate: float) -> float:
    """Validates a dropout-like rate in [0, 1)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{builder} needs 0 <= {name} < 1, got {rate!r}")
    return float(rate)


def activation_layer(activation: str, name: str) -> keras.layers.Layer:
    """ReLU / ReLU6 as ``ReLU`` layers (TFLite fuses them into the convolution), others as
    ``Activation``."""
    if activation == "relu":
        return L.ReLU(name=name)
    if activation == "relu6":
        return L.ReLU(6.0, name=name)
    if activation not in ALLOWED_ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not one of {ALLOWED_ACTIVATIONS}")
    return L.Activation(activation, name=name)


def conv_bn(
    x,
    filters: int,
    kernel: int,
    stride: int,
    prefix: str,
    suffix: str = "",
    activation: str | None = "relu",
    bn: BatchNormConfig = TORCH_BN,
    padding: str = "same",
):
    """Conv2D (no bias) -> BatchNormalization -> optional activation.

    Layers are named ``{prefix}_conv{suffix}``, ``{prefix}_bn{suffix}`` and
    ``{prefix}_{activation}{suffix}``; e.g. ``prefix="stage2_block1", suffix="1"`` gives
    ``stage2_block1_conv1``, ``stage2_block1_bn1``, ``stage2_block1_relu1``.
    """
    x = L.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                 name=f"{prefix}_conv{suffix}")(x)
    x = L.BatchNormalization(momentum=bn.momentum, epsilon=bn.epsilon, name=f"{prefix}_bn{suffix}")(x)
    if activation is not None:
        x = activation_layer(activation, f"{prefix}_{activation}{suffix}")(x)
    return x


def depthwise_bn(x, kernel: int, stride: int, prefix: str, activation: str, bn: BatchNormConfig):
    """DepthwiseConv2D (no bias, 'same') -> BatchNormalization -> activation, named
    ``{prefix}_dw_conv``, ``{prefix}_dw_bn``, ``{prefix}_dw_{activation}``."""
    x = L.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}_dw_conv")(x)
    x = L.BatchNormalization(momentum=bn.momentum, epsilon=bn.epsilon, name=f"{prefix}_dw_bn")(x)
    return activation_layer(activation, f"{prefix}_dw_{activation}")(x)


def classifier(x, num_classes: int, dropout: float = 0.0):
    """GlobalAveragePooling2D -> optional Dropout -> Dense logits (``gap``, ``dropout``, ``logits``)."""
    x = L.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = L.Dropout(dropout, name="dropout")(x)
    return L.Dense(num_classes, name="logits")(x)
