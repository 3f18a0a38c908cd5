"""MobileNetV2 (Sandler et al. 2018).

Inverted residual blocks (expand 1x1 -> depthwise 3x3 -> project 1x1, ReLU6, linear bottleneck);
channels scaled by ``width_mult`` and rounded to multiples of 8; the last 1x1 convolution keeps
1280 channels for ``width_mult <= 1`` as the reference does. Stride-2 convolutions use 'same'
padding (the same output sizes and MACs as the reference's explicit padding at 224x224).
At 1.0/224/1000 classes: 300.8 M MACs, 3,538,984 params (BN statistics included).
"""

from __future__ import annotations

import keras

from cafe_tf.models.common import conv_bn, make_divisible

L = keras.layers
# expansion t, output channels c, repeats n, first stride s
BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
BN = {"bn_momentum": 0.999, "bn_epsilon": 1e-3}


def mobilenet_v2(input_shape=(224, 224, 3), num_classes=1000, width_mult=1.0, dropout=0.0) -> keras.Model:
    """MobileNetV2 at ``width_mult``; logits out."""
    inputs = keras.Input(input_shape, name="image")
    x = conv_bn(inputs, make_divisible(32 * width_mult), 3, 2, "stem", "relu6", **BN)
    index = 0
    for t, c, n, s in BLOCKS:
        out = make_divisible(c * width_mult)
        for i in range(n):
            name = f"block{index}"
            cin = x.shape[-1]
            y = x
            if t != 1:
                y = conv_bn(y, cin * t, 1, 1, f"{name}_expand", "relu6", **BN)
            y = L.DepthwiseConv2D(3, strides=s if i == 0 else 1, padding="same", use_bias=False,
                                  name=f"{name}_dw_conv")(y)
            y = L.BatchNormalization(momentum=0.999, epsilon=1e-3, name=f"{name}_dw_bn")(y)
            y = L.ReLU(6.0, name=f"{name}_dw_relu6")(y)
            y = conv_bn(y, out, 1, 1, f"{name}_project", None, **BN)
            x = L.Add(name=f"{name}_add")([x, y]) if (s == 1 or i > 0) and cin == out else y
            index += 1
    last = make_divisible(1280 * width_mult) if width_mult > 1.0 else 1280
    x = conv_bn(x, last, 1, 1, "head", "relu6", **BN)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = L.Dropout(dropout, name="dropout")(x)
    outputs = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="mobilenet_v2")
