"""VGG-16 for CIFAR (the variant of the pruning literature: 13 conv3x3-BN-ReLU, one linear head).

After the fifth max-pool a 32x32 input is 1x1x512, flattened into a single Dense classifier: 313.2 M
MACs, 14.73 M params (BN statistics included), the ~313 M figure pruning papers (HRank, DepGraph)
report.
"""

from __future__ import annotations

import keras

from cafe_tf.models.common import conv_bn, scaled

L = keras.layers
CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_cifar(input_shape=(32, 32, 3), num_classes=10, width_mult=1.0) -> keras.Model:
    """VGG-16 with BN for 32x32 inputs; logits out."""
    inputs = keras.Input(input_shape, name="image")
    x, conv, pool = inputs, 0, 0
    for item in CFG:
        if item == "M":
            pool += 1
            x = L.MaxPooling2D(2, name=f"pool{pool}")(x)
        else:
            conv += 1
            x = conv_bn(x, scaled(item, width_mult), 3, 1, f"conv{conv}")
    x = L.Flatten(name="flatten")(x)
    outputs = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="vgg16_cifar")
