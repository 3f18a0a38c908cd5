"""EfficientNet-B0 (Tan & Le 2019), as Keras Applications defines it, without its input
Rescaling/Normalization layers (preprocessing belongs to the data pipeline).

Stem 3x3/2 conv (32), 16 MBConv blocks in 7 stages (expand 1x1 -> depthwise k x k ->
squeeze-excitation -> project 1x1; swish), a 1x1 head conv (1280), global average pooling,
dropout, Dense logits.
- Squeeze-excitation: ``GlobalAveragePooling2D(keepdims=True)`` -> Conv2D 1x1 reduce to
  ``max(1, int(block_input_channels * 0.25))`` (swish, with bias) -> Conv2D 1x1 expand (sigmoid,
  with bias) -> ``Multiply``.
- Stochastic depth on residual blocks (stride 1, same channels): ``Dropout`` with
  ``noise_shape=(None, 1, 1, 1)`` (drops whole samples of the residual branch, scales the rest by
  1/(1-rate)) before the add; the rate of block i (0-based over all 16) is
  ``drop_connect_rate * i / 16``. ``drop_connect_rate=0`` builds no such layers.
- ``width_mult`` is the compound-scaling width coefficient: every channel count, the head's
  included, is ``round_filters`` = ``make_divisible(c * width_mult, 8)``. Depth stays B0's.
- BatchNormalization as Keras Applications (momentum 0.99, epsilon 1e-3).

Padding is 'same' everywhere: Keras Applications' ``ZeroPadding2D(correct_pad(x, k))`` + 'valid'
on stride-2 layers pads (k//2 - 1, k//2) on even and (k//2, k//2) on odd sides, which is what
'same' pads, so outputs, shapes and MACs are identical at every input size.

At 224x224x3 and 1000 classes: 385,814,752 MACs (the paper's 0.39 G; counted over conv, depthwise
and dense layers, SE included), 5,330,564 params = Keras Applications' 5,330,571 minus its
Normalization layer's 7 (5,288,548 trainable + 42,016 BN statistics).

Layer names: ``stem_conv/bn/swish``; per block ``stage{s}_block{b}_expand_conv/_expand_bn/
_expand_swish`` (not in stage 1), ``_dw_conv/_dw_bn/_dw_swish``, ``_se_pool``, ``_se_reduce``,
``_se_expand``, ``_se_mul``, ``_project_conv/_project_bn``, ``_drop``, ``_add`` (1-based);
``head_conv/bn/swish``, ``gap``, [``dropout``], ``logits``.
"""

from __future__ import annotations

import keras

from cafe_tf.models.common import (BatchNormConfig, check_args, check_rate, classifier, conv_bn, depthwise_bn,
                                   make_divisible)

L = keras.layers
# expansion, kernel, stride of the first block, output channels, blocks (the paper's table 1)
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
          (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
SE_RATIO = 0.25
BN = BatchNormConfig(momentum=0.99, epsilon=1e-3)


def mbconv(x, expansion: int, kernel: int, stride: int, out: int, drop_rate: float, prefix: str):
    """One MBConv block with squeeze-excitation; residual add (with stochastic depth) when shapes match."""
    cin = x.shape[-1]
    y = x
    if expansion != 1:
        y = conv_bn(y, cin * expansion, 1, 1, f"{prefix}_expand", activation="swish", bn=BN)
    y = depthwise_bn(y, kernel, stride, prefix, "swish", BN)
    se = L.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}_se_pool")(y)
    se = L.Conv2D(max(1, int(cin * SE_RATIO)), 1, activation="swish", name=f"{prefix}_se_reduce")(se)
    se = L.Conv2D(y.shape[-1], 1, activation="sigmoid", name=f"{prefix}_se_expand")(se)
    y = L.Multiply(name=f"{prefix}_se_mul")([y, se])
    y = conv_bn(y, out, 1, 1, f"{prefix}_project", activation=None, bn=BN)
    if stride == 1 and cin == out:
        if drop_rate > 0:
            y = L.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{prefix}_drop")(y)
        y = L.Add(name=f"{prefix}_add")([x, y])
    return y


def efficientnet_b0(
    input_shape: tuple[int, int, int] = (224, 224, 3),
    num_classes: int = 1000,
    width_mult: float = 1.0,
    dropout: float = 0.2,
    drop_connect_rate: float = 0.2,
) -> keras.Model:
    """EfficientNet-B0 at width coefficient ``width_mult`` for any input size; logits out.

    Example: ``efficientnet_b0().count_params() == 5_330_564``.
    """
    shape = check_args("efficientnet_b0", input_shape, num_classes, width_mult)
    dropout = check_rate("efficientnet_b0", "dropout", dropout)
    drop_connect_rate = check_rate("efficientnet_b0", "drop_connect_rate", drop_connect_rate)
    inputs = keras.Input(shape, name="image")
    x = conv_bn(inputs, make_divisible(STEM_CHANNELS * width_mult), 3, 2, "stem", activation="swish", bn=BN)
    total = sum(stage[4] for stage in STAGES)
    index = 0  # 0-based over all blocks: the stochastic-depth rate grows with it
    for stage, (t, k, s, c, n) in enumerate(STAGES, start=1):
        out = make_divisible(c * width_mult)
        for block in range(1, n + 1):
            x = mbconv(x, t, k, s if block == 1 else 1, out, drop_connect_rate * index / total,
                       f"stage{stage}_block{block}")
            index += 1
    x = conv_bn(x, make_divisible(HEAD_CHANNELS * width_mult), 1, 1, "head", activation="swish", bn=BN)
    return keras.Model(inputs, classifier(x, num_classes, dropout), name="efficientnet_b0")
