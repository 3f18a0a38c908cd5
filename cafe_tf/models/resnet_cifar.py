"""CIFAR ResNets (He et al. 2016, section 4.2): ResNet-20/32/44/56/110/1202.

A 3x3 stem with 16 channels, then three stages of n = (depth - 2) / 6 basic blocks (two 3x3
conv-BN, ReLU between, add, ReLU) with 16/32/64 channels (each times ``width_mult``, rounded, at
least 1), global average pooling and one Dense layer of logits. BatchNormalization uses PyTorch's
defaults (Keras momentum 0.9, epsilon 1e-5), as the reference re-implementations do.

Down-sampling shortcut: **option B** (1x1 convolution with stride 2 + BN) in the first block of
stages 2 and 3, identity everywhere else.
- The paper's CIFAR models use option A (take every other pixel, pad the missing channels with
  zeros). That shortcut needs a tensor of zeros, which the allowed layers can only fake (e.g. a
  ``ReLU(max_value=0)`` copy), and the channel graph cannot represent it: the zero half is no
  channel of anything, and the identity half makes stage s+1's residual group contain stage s's
  group, so the two stages could not be given independent widths.
- Option B is a plain conv-BN: each stage's residual adds still tie its blocks' outputs into one
  channel group (that coupling is inherent), but the projections cut the ties *between* stages, so
  a width search gets three independent residual groups.
- Cost of the choice, at 32x32x3 and 10 classes (MACs count conv + dense multiply-accumulates):

      depth       count_params (trainable)  MACs          option A equivalent (trainable / MACs)
      ResNet-20   274,042 (272,474)         40,813,184    269,722 / 40,551,040
      ResNet-56   860,026 (855,770)         125,747,840   853,018 / 125,485,696
      ResNet-110  1,739,002 (1,730,714)     253,149,824   1,727,962 / 252,887,680

  The projections add 2,752 trainable parameters (+192 BN statistics) and 262,144 MACs at every
  depth: +1.0%/+0.6% for ResNet-20, +0.3%/+0.2% for ResNet-56. ``count_params`` includes BN's
  moving mean/variance. The published 0.27M/0.85M/1.7M are option A's trainable counts (exactly
  the right column), and ~41M/125.49M (HRank)/252.89M (HRank) MACs are its MACs, so at ResNet-56
  our ``count_params`` 860,026 reads 0.86M, not 0.85M: that is the price of option B.

Layer names: ``stem_conv/bn/relu``; per block ``stage{s}_block{b}_conv1/bn1/relu1/conv2/bn2``,
``_proj_conv/_proj_bn`` (down-sampling blocks), ``_add``, ``_out`` (the ReLU after the add), with
1-based ``s`` and ``b``; then ``gap`` and ``logits``.
"""

from __future__ import annotations

import keras

from cafe_tf.models.common import check_args, conv_bn, scaled

L = keras.layers
VALID_DEPTHS = (20, 32, 44, 56, 110, 1202)
STAGE_CHANNELS = (16, 32, 64)


def basic_block(x, filters: int, stride: int, prefix: str):
    """Two 3x3 conv-BN with a residual add; a 1x1 conv-BN projection when the shape changes."""
    y = conv_bn(x, filters, 3, stride, prefix, "1")
    y = conv_bn(y, filters, 3, 1, prefix, "2", activation=None)
    if stride != 1 or x.shape[-1] != filters:
        x = conv_bn(x, filters, 1, stride, f"{prefix}_proj", activation=None)
    x = L.Add(name=f"{prefix}_add")([x, y])
    return L.ReLU(name=f"{prefix}_out")(x)


def resnet_cifar(
    input_shape: tuple[int, int, int] = (32, 32, 3),
    num_classes: int = 10,
    width_mult: float = 1.0,
    depth: int = 20,
) -> keras.Model:
    """ResNet-``depth`` for CIFAR-sized inputs (any size, e.g. 28x28x1); logits out.

    Example: ``resnet_cifar(depth=56).count_params() == 860_026``.

    Raises:
      ValueError: ``depth`` not in :data:`VALID_DEPTHS`, or bad shape/classes/width.
    """
    shape = check_args("resnet_cifar", input_shape, num_classes, width_mult)
    if depth not in VALID_DEPTHS:
        raise ValueError(f"depth {depth!r} is not a CIFAR ResNet depth (6n+2 of He et al.); valid: {VALID_DEPTHS}")
    blocks = (depth - 2) // 6
    inputs = keras.Input(shape, name="image")
    x = conv_bn(inputs, scaled(STAGE_CHANNELS[0], width_mult), 3, 1, "stem")
    for stage, channels in enumerate(STAGE_CHANNELS, start=1):
        filters = scaled(channels, width_mult)
        for block in range(1, blocks + 1):
            stride = 2 if stage > 1 and block == 1 else 1
            x = basic_block(x, filters, stride, f"stage{stage}_block{block}")
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")
