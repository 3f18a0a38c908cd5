"""VGG-16 for CIFAR, the variant of the pruning literature (Li et al. 2017, HRank, DepGraph).

13 conv3x3-BN-ReLU layers in five stages (64, 64, M, 128, 128, M, 256 x3, M, 512 x3, M, 512 x3, M;
channels times ``width_mult``, rounded, at least 1), 2x2 max pools, flatten, then the classifier.
BatchNormalization uses PyTorch's defaults (Keras momentum 0.9, epsilon 1e-5).

Classifier head (``hidden_units``), at 32x32x3 and 10 classes:
- ``hidden_units=0`` (default): one Dense 512 -> classes, the head of the ~14.7 M-parameter
  VGG-16 figures: 313,201,664 MACs (313,196,544 conv + 5,120 dense), 14,732,490 params
  (14,724,042 trainable).
- ``hidden_units=512``: Dense 512 -> 512 (no bias) -> BN -> ReLU -> Dense 512 -> classes, the head
  of Li et al.'s CIFAR VGG-16 (their 3.13e8 FLOPs, 1.5e7 params; HRank's 14.98 M):
  313,463,808 MACs, 14,996,682 params (14,987,210 trainable).
Both are the published ~313 M MACs (the five conv stages are 99.9% of it); the 14.7 M parameter
figure singles out the one-layer head, so it is the default.

The max pools use 'same' padding: identical to the reference's (floor) pooling when each stage's
input side is even (32x32 and any multiple of 32), and they keep every stage non-empty for other
sizes (28x28 goes 14, 7, 4, 2, 1 instead of reaching 0 at the fifth pool).

Layer names: ``stage{s}_conv{k}``, ``stage{s}_bn{k}``, ``stage{s}_relu{k}``, ``stage{s}_pool``
(1-based), ``flatten``, [``fc``, ``fc_bn``, ``fc_relu``], ``logits``.
"""

from __future__ import annotations

import keras

from cafe_tf.models.common import TORCH_BN, check_args, conv_bn, scaled

L = keras.layers
# Output channels of the convolutions of each stage; a 2x2 max pool ends every stage.
STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def vgg16_cifar(
    input_shape: tuple[int, int, int] = (32, 32, 3),
    num_classes: int = 10,
    width_mult: float = 1.0,
    hidden_units: int = 0,
) -> keras.Model:
    """VGG-16 with BN for CIFAR-sized inputs; logits out.

    Example: ``vgg16_cifar().count_params() == 14_732_490``.
    """
    shape = check_args("vgg16_cifar", input_shape, num_classes, width_mult)
    if not (isinstance(hidden_units, int) and hidden_units >= 0):
        raise ValueError(f"vgg16_cifar needs hidden_units >= 0 (0: no hidden layer), got {hidden_units!r}")
    inputs = keras.Input(shape, name="image")
    x = inputs
    for stage, convs in enumerate(STAGES, start=1):
        for k, channels in enumerate(convs, start=1):
            x = conv_bn(x, scaled(channels, width_mult), 3, 1, f"stage{stage}", str(k))
        x = L.MaxPooling2D(2, padding="same", name=f"stage{stage}_pool")(x)
    x = L.Flatten(name="flatten")(x)
    if hidden_units:
        x = L.Dense(scaled(hidden_units, width_mult), use_bias=False, name="fc")(x)
        x = L.BatchNormalization(momentum=TORCH_BN.momentum, epsilon=TORCH_BN.epsilon, name="fc_bn")(x)
        x = L.ReLU(name="fc_relu")(x)
    outputs = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="vgg16_cifar")
