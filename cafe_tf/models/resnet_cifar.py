"""CIFAR ResNets (He et al. 2016, section 4.2): ResNet-20/56/110.

Three stages of n = (depth - 2) / 6 basic blocks with 16/32/64 channels (times ``width_mult``).
Down-sampling shortcuts use **option B** (1x1 convolution with stride 2 + BN): the paper's option A
(stride-2 subsampling padded with zero channels) needs a non-standard op, and option B is what
pruning papers' TF/PyTorch re-implementations use. Counts (BN statistics included, 32x32, 10
classes): ResNet-20 274,042 params / 40.81 M MACs, ResNet-56 860,026 / 125.7 M, ResNet-110
1,739,002 / 253.1 M; the two projections add ~2.6 k params and 0.26 M MACs over option A.
The residual adds couple each stage's block outputs into one channel group.
"""

from __future__ import annotations

import keras

from cafe_tf.models.common import conv_bn, scaled

L = keras.layers
VALID_DEPTHS = (20, 32, 44, 56, 110, 1202)


def resnet_cifar(input_shape=(32, 32, 3), num_classes=10, width_mult=1.0, depth=20) -> keras.Model:
    """ResNet-``depth`` for CIFAR-sized inputs; logits out."""
    if depth not in VALID_DEPTHS:
        raise ValueError(f"depth {depth!r} is not a CIFAR ResNet depth; valid: {VALID_DEPTHS}")
    n = (depth - 2) // 6
    inputs = keras.Input(input_shape, name="image")
    x = conv_bn(inputs, scaled(16, width_mult), 3, 1, "stem")
    for stage, base in enumerate((16, 32, 64), start=1):
        filters = scaled(base, width_mult)
        for block in range(n):
            stride = 2 if stage > 1 and block == 0 else 1
            name = f"stage{stage}_block{block}"
            y = conv_bn(x, filters, 3, stride, f"{name}_1")
            y = conv_bn(y, filters, 3, 1, f"{name}_2", activation=None)
            if stride != 1 or x.shape[-1] != filters:
                x = conv_bn(x, filters, 1, stride, f"{name}_proj", activation=None)
            x = L.Add(name=f"{name}_add")([x, y])
            x = L.ReLU(name=f"{name}_out")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")
