"""EfficientNet-B0 (Tan & Le 2019).

MBConv blocks (expand 1x1 -> depthwise k x k -> squeeze-excitation -> project 1x1, swish), SE
ratio 0.25 of the block's input channels, stochastic depth as ``Dropout(noise_shape=(None,1,1,1))``
with a rate growing linearly to ``drop_connect_rate`` (0 disables it). ``width_mult`` is the
compound-scaling width coefficient (channels rounded to multiples of 8). At 224x224/1000 classes:
0.39 G MACs, 5.33 M params.
"""

from __future__ import annotations

import keras

from cafe_tf.models.common import conv_bn, make_divisible

L = keras.layers
# expansion, kernel, stride, output channels, repeats
BLOCKS = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
          (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
BN = {"bn_momentum": 0.99, "bn_epsilon": 1e-3}


def efficientnet_b0(input_shape=(224, 224, 3), num_classes=1000, width_mult=1.0, dropout=0.2,
                    drop_connect_rate=0.2) -> keras.Model:
    """EfficientNet-B0 at width coefficient ``width_mult``; logits out."""
    inputs = keras.Input(input_shape, name="image")
    x = conv_bn(inputs, make_divisible(32 * width_mult), 3, 2, "stem", "swish", **BN)
    total = sum(b[4] for b in BLOCKS)
    index = 0
    for t, k, s, c, n in BLOCKS:
        out = make_divisible(c * width_mult)
        for i in range(n):
            name = f"block{index}"
            cin = x.shape[-1]
            y = conv_bn(x, cin * t, 1, 1, f"{name}_expand", "swish", **BN) if t != 1 else x
            y = L.DepthwiseConv2D(k, strides=s if i == 0 else 1, padding="same", use_bias=False,
                                  name=f"{name}_dw_conv")(y)
            y = L.BatchNormalization(momentum=0.99, epsilon=1e-3, name=f"{name}_dw_bn")(y)
            y = L.Activation("swish", name=f"{name}_dw_swish")(y)
            se = L.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(y)
            se = L.Conv2D(max(1, int(cin * 0.25)), 1, activation="swish", name=f"{name}_se_reduce")(se)
            se = L.Conv2D(y.shape[-1], 1, activation="sigmoid", name=f"{name}_se_expand")(se)
            y = L.Multiply(name=f"{name}_se_mul")([y, se])
            y = conv_bn(y, out, 1, 1, f"{name}_project", None, **BN)
            if i > 0 and cin == out:
                rate = drop_connect_rate * index / total
                if rate > 0:
                    y = L.Dropout(rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(y)
                y = L.Add(name=f"{name}_add")([x, y])
            x = y
            index += 1
    x = conv_bn(x, make_divisible(1280 * width_mult), 1, 1, "head", "swish", **BN)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = L.Dropout(dropout, name="dropout")(x)
    outputs = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="efficientnet_b0")
