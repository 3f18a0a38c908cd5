"""A small plain CNN for 28x28 / 32x32 images (the offline default's model).

Three conv stages (32, 64, 128 channels at ``width_mult=1``), each Conv-BN-ReLU followed by 2x2
max pooling, then flatten, a 128-unit hidden layer (Dense-BN-ReLU), dropout and a linear
classifier. About 7.7M multiply-accumulates per 28x28 image: it trains Fashion-MNIST past 90% test
accuracy in a few epochs on two CPU cores (a global-average-pooling head needed more epochs), and
every layer is one the channel graph (``cafe_tf.graph``) and the slimmable layers understand, so
it can also be a supernet.
"""

from __future__ import annotations

import keras

# Output channels per conv at width_mult=1, and whether a 2x2 max pool follows it.
_STAGES: tuple[tuple[int, bool], ...] = ((32, True), (64, True), (128, True))
_HIDDEN_UNITS = 128


def _scaled(channels: int, width_mult: float) -> int:
    # Never below 1 channel, so tiny multipliers still give a valid model.
    return max(1, int(round(channels * width_mult)))


def cnn_small(
    input_shape: tuple[int, int, int] = (28, 28, 1),
    num_classes: int = 10,
    width_mult: float = 1.0,
    dropout: float = 0.2,
) -> keras.Model:
    """Builds the small CNN; layer names (``conv{i}``, ``bn{i}``, ``relu{i}``, ``pool{i}``, ``flatten``,
    ``fc``, ``fc_bn``, ``fc_relu``, ``dropout``, ``logits``) are fixed.

    Example: ``cnn_small((28, 28, 1), 10).output_shape == (None, 10)``.
    """
    if len(tuple(input_shape)) != 3:
        raise ValueError(f"cnn_small needs input_shape (height, width, channels), got {input_shape!r}")
    if num_classes < 1:
        raise ValueError(f"cnn_small needs num_classes >= 1, got {num_classes!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"cnn_small needs 0 <= dropout < 1, got {dropout!r}")
    L = keras.layers
    x = inputs = keras.Input(tuple(input_shape), name="image")
    for i, (channels, pool) in enumerate(_STAGES, start=1):
        # No conv bias: the following BatchNormalization's beta plays that role.
        x = L.Conv2D(_scaled(channels, width_mult), 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = L.BatchNormalization(name=f"bn{i}")(x)
        x = L.ReLU(name=f"relu{i}")(x)
        if pool:
            x = L.MaxPooling2D(2, name=f"pool{i}")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(_scaled(_HIDDEN_UNITS, width_mult), use_bias=False, name="fc")(x)
    x = L.BatchNormalization(name="fc_bn")(x)
    x = L.ReLU(name="fc_relu")(x)
    if dropout:
        x = L.Dropout(dropout, name="dropout")(x)
    # float32 logits so losses stay exact under a mixed-precision policy.
    outputs = L.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name="cnn_small")
