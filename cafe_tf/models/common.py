"""Small helpers shared by the model builders."""

from __future__ import annotations

import keras

L = keras.layers


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Rounds ``value`` to a multiple of ``divisor``, never below 90% of it (MobileNet's rule)."""
    min_value = min_value or divisor
    out = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if out < 0.9 * value:
        out += divisor
    return int(out)


def scaled(channels: int, width_mult: float) -> int:
    """``channels * width_mult`` rounded, at least 1 (CIFAR nets: no divisor)."""
    return max(1, int(round(channels * width_mult)))


def conv_bn(x, filters: int, kernel: int, stride: int, name: str, activation: str | None = "relu",
            bn_momentum: float = 0.9, bn_epsilon: float = 1e-5):
    """Conv2D (no bias, 'same') -> BN -> optional activation, with layers named ``name_*``."""
    x = L.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = L.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name=f"{name}_bn")(x)
    if activation == "relu6":
        x = L.ReLU(6.0, name=f"{name}_relu6")(x)
    elif activation is not None:
        x = L.Activation(activation, name=f"{name}_{activation}")(x)
    return x
