"""MobileNetV2 (Sandler et al. 2018), as Keras Applications / torchvision define it.

Stem 3x3/2 conv (32), 17 inverted residual blocks in 7 stages (expand 1x1 -> depthwise 3x3 ->
project 1x1 with a linear bottleneck; ReLU6; residual add when stride is 1 and channels match),
a 1x1 head conv (1280), global average pooling, optional dropout, Dense logits.
Channels are ``make_divisible(c * width_mult, 8)``; the head keeps 1280 channels for
``width_mult <= 1`` and scales above, as the reference does. BatchNormalization as Keras
Applications (momentum 0.999, epsilon 1e-3). ``dropout`` defaults to 0 (Keras Applications has
none; torchvision trains with 0.2).

Padding is 'same' everywhere. For the stride-2 depthwise convs Keras Applications writes
``ZeroPadding2D(correct_pad(x, 3))`` + 'valid', which pads (0, 1) on even and (1, 1) on odd sides:
exactly what 'same' pads, so outputs, shapes and MACs are identical at every input size.

At 224x224x3 and 1000 classes: 300,774,272 MACs (the paper's 300 M), 3,538,984 params =
3,504,872 trainable (torchvision's and the paper's 3.4-3.5 M) + 34,112 BN statistics.

**CIFAR variant** (``cifar=True``, registered as ``mobilenet_v2_cifar``, 32x32x3 / 10 classes by
default): stride 1 in the stem and in the first block of stage 2 (24 channels), the usual CIFAR
adaptation (kuangliu/pytorch-cifar's), so a 32x32 image keeps 32x32 through stage 2 and ends at
4x4 instead of 1x1. At 32x32x3 and 10 classes: 87,976,448 MACs (the ImageNet strides: 6,124,928)
and the same 2,270,794 params = 2,236,682 trainable + 34,112 BN statistics. The blocks stay the
reference ones: kuangliu's version also puts a 1x1 conv + BN shortcut on the four stride-1 blocks
that change channels (2,129,920 more MACs, 90,106,368 in all, by our count); we do not.

Layer names: ``stem_conv/bn/relu6``; per block ``stage{s}_block{b}_expand_conv/_expand_bn/
_expand_relu6`` (not in stage 1, whose expansion is 1), ``_dw_conv/_dw_bn/_dw_relu6``,
``_project_conv/_project_bn``, ``_add`` (1-based); ``head_conv/bn/relu6``, ``gap``, [``dropout``],
``logits``.
"""

from __future__ import annotations

import keras

from cafe_tf.models.common import (BatchNormConfig, check_args, check_rate, classifier, conv_bn, depthwise_bn,
                                   make_divisible)

L = keras.layers
# expansion t, output channels c, blocks n, stride s of the first block (the paper's table 2)
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
          (6, 320, 1, 1))
# CIFAR variant: stride 1 in the stem and in stage 2 (1-based), every other stride as above
CIFAR_STEM_STRIDE = 1
CIFAR_STAGE_STRIDES = {2: 1}
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN = BatchNormConfig(momentum=0.999, epsilon=1e-3)


def inverted_residual(x, expansion: int, out: int, stride: int, prefix: str):
    """Expand 1x1 (ReLU6) -> depthwise 3x3 (ReLU6) -> project 1x1 (linear), add when shapes match."""
    cin = x.shape[-1]
    y = x
    if expansion != 1:
        y = conv_bn(y, cin * expansion, 1, 1, f"{prefix}_expand", activation="relu6", bn=BN)
    y = depthwise_bn(y, 3, stride, prefix, "relu6", BN)
    y = conv_bn(y, out, 1, 1, f"{prefix}_project", activation=None, bn=BN)
    if stride == 1 and cin == out:
        y = L.Add(name=f"{prefix}_add")([x, y])
    return y


def mobilenet_v2(
    input_shape: tuple[int, int, int] = (224, 224, 3),
    num_classes: int = 1000,
    width_mult: float = 1.0,
    dropout: float = 0.0,
    cifar: bool = False,
) -> keras.Model:
    """MobileNetV2 at ``width_mult`` for any input size (e.g. 96x96); logits out.

    ``cifar=True``: stride 1 in the stem and in stage 2, for 32x32 inputs (see the module doc).
    Example: ``mobilenet_v2().count_params() == 3_538_984``.
    """
    shape = check_args("mobilenet_v2", input_shape, num_classes, width_mult)
    dropout = check_rate("mobilenet_v2", "dropout", dropout)
    inputs = keras.Input(shape, name="image")
    stem_stride = CIFAR_STEM_STRIDE if cifar else 2
    x = conv_bn(inputs, make_divisible(STEM_CHANNELS * width_mult), 3, stem_stride, "stem", activation="relu6", bn=BN)
    for stage, (t, c, n, s) in enumerate(STAGES, start=1):
        s = CIFAR_STAGE_STRIDES.get(stage, s) if cifar else s
        out = make_divisible(c * width_mult)
        for block in range(1, n + 1):
            x = inverted_residual(x, t, out, s if block == 1 else 1, f"stage{stage}_block{block}")
    head = make_divisible(HEAD_CHANNELS * width_mult) if width_mult > 1.0 else HEAD_CHANNELS
    x = conv_bn(x, head, 1, 1, "head", activation="relu6", bn=BN)
    name = "mobilenet_v2_cifar" if cifar else "mobilenet_v2"
    return keras.Model(inputs, classifier(x, num_classes, dropout), name=name)
