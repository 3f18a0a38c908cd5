"""ResNet-50 v1.5 for ImageNet (He et al. 2016; stride on the 3x3 convolution, as torchvision).

Bottleneck blocks [3, 4, 6, 3] with widths 64/128/256/512 (times ``width_mult``) and expansion 4;
projection shortcuts (1x1 conv + BN) in each stage's first block. At 224x224/1000 classes:
4.09 G MACs, 25,610,152 params (25,557,032 trainable + BN statistics).
"""

from __future__ import annotations

import keras

from cafe_tf.models.common import conv_bn, scaled

L = keras.layers
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))


def resnet50(input_shape=(224, 224, 3), num_classes=1000, width_mult=1.0) -> keras.Model:
    """ResNet-50 v1.5; logits out."""
    inputs = keras.Input(input_shape, name="image")
    x = conv_bn(inputs, scaled(64, width_mult), 7, 2, "stem")
    x = L.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, (width, blocks, stride) in enumerate(STAGES, start=1):
        mid, out = scaled(width, width_mult), scaled(width * 4, width_mult)
        for block in range(blocks):
            s = stride if block == 0 else 1
            name = f"stage{stage}_block{block}"
            y = conv_bn(x, mid, 1, 1, f"{name}_1")
            y = conv_bn(y, mid, 3, s, f"{name}_2")
            y = conv_bn(y, out, 1, 1, f"{name}_3", activation=None)
            if block == 0:
                x = conv_bn(x, out, 1, s, f"{name}_proj", activation=None)
            x = L.Add(name=f"{name}_add")([x, y])
            x = L.ReLU(name=f"{name}_out")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="resnet50")
