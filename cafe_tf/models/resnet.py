"""ResNet-50 v1.5 for ImageNet (He et al. 2016; torchvision's variant: stride on the 3x3 conv).

Stem 7x7/2 conv (64) + 3x3/2 max pool, then bottleneck blocks [3, 4, 6, 3] (1x1 -> 3x3 -> 1x1
with widths 64/128/256/512 and expansion 4), a 1x1 projection shortcut (stride 1 in stage 1,
2 after) in each stage's first block, identity elsewhere, global average pooling, Dense logits.
``width_mult`` scales every width, rounded with ``make_divisible(., 8)``. BatchNormalization as
torchvision (Keras momentum 0.9, epsilon 1e-5).

Padding follows torchvision exactly: explicit symmetric ``ZeroPadding2D`` + 'valid' for the stem
conv (3), the stem pool (1) and the stride-2 3x3 convs (1). TF's 'same' would give the same
shapes and MACs but pad stride-2 layers asymmetrically (0 before, 1 after on even inputs), so
torchvision-trained weights would not reproduce their outputs. Zero padding before the max pool
equals torchvision's -inf padding because its input is a ReLU output (>= 0).

At 224x224x3 and 1000 classes: 4,089,184,256 MACs (torchvision's 4.09 G to the digit),
25,610,152 params = 25,557,032 trainable (torchvision's count) + 53,120 BN statistics.

Layer names: ``stem_pad``, ``stem_conv/bn/relu``, ``stem_pool_pad``, ``stem_pool``; per block
``stage{s}_block{b}_conv1/bn1/relu1``, ``_pad2`` (stride 2 only), ``_conv2/bn2/relu2``,
``_conv3/bn3``, ``_proj_conv/_proj_bn``, ``_add``, ``_out`` (1-based); ``gap``, ``logits``.
"""

from __future__ import annotations

import keras

from cafe_tf.models.common import check_args, classifier, conv_bn, make_divisible

L = keras.layers
# (bottleneck width, blocks, stride of the first block)
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
EXPANSION = 4


def bottleneck_block(x, width: int, out: int, stride: int, prefix: str, project: bool):
    """1x1 -> 3x3 (carries the stride, v1.5) -> 1x1 conv-BN with a residual add."""
    y = conv_bn(x, width, 1, 1, prefix, "1")
    if stride == 1:
        y = conv_bn(y, width, 3, 1, prefix, "2")
    else:
        y = L.ZeroPadding2D(1, name=f"{prefix}_pad2")(y)
        y = conv_bn(y, width, 3, stride, prefix, "2", padding="valid")
    y = conv_bn(y, out, 1, 1, prefix, "3", activation=None)
    if project:
        x = conv_bn(x, out, 1, stride, f"{prefix}_proj", activation=None)
    x = L.Add(name=f"{prefix}_add")([x, y])
    return L.ReLU(name=f"{prefix}_out")(x)


def resnet50(
    input_shape: tuple[int, int, int] = (224, 224, 3),
    num_classes: int = 1000,
    width_mult: float = 1.0,
) -> keras.Model:
    """ResNet-50 v1.5 for any input size (32x32 and up is sensible); logits out.

    Example: ``resnet50().count_params() == 25_610_152``.
    """
    shape = check_args("resnet50", input_shape, num_classes, width_mult)
    inputs = keras.Input(shape, name="image")
    x = L.ZeroPadding2D(3, name="stem_pad")(inputs)
    x = conv_bn(x, make_divisible(64 * width_mult), 7, 2, "stem", padding="valid")
    x = L.ZeroPadding2D(1, name="stem_pool_pad")(x)
    x = L.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    for stage, (width, blocks, stride) in enumerate(STAGES, start=1):
        mid = make_divisible(width * width_mult)
        out = make_divisible(width * EXPANSION * width_mult)
        for block in range(1, blocks + 1):
            first = block == 1
            x = bottleneck_block(x, mid, out, stride if first else 1, f"stage{stage}_block{block}", project=first)
    return keras.Model(inputs, classifier(x, num_classes), name="resnet50")
