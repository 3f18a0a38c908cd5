"""Small functional models that exercise every coupling the channel graph knows."""

import keras


def coupling_zoo(input_shape=(12, 12, 3), num_classes=5, flatten=False) -> keras.Model:
    """Residual add, depthwise, squeeze-excitation multiply, concatenation, flatten/GAP into dense."""
    L = keras.layers
    x = inp = keras.Input(input_shape, name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(x)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    y = L.Conv2D(8, 3, padding="same", use_bias=False, name="res_conv")(x)
    y = L.BatchNormalization(name="res_bn")(y)
    x = L.Add(name="res_add")([x, y])
    x = L.Activation("relu", name="res_relu")(x)
    d = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    d = L.BatchNormalization(name="dw_bn")(d)
    d = L.Activation("swish", name="dw_swish")(d)
    s = L.GlobalAveragePooling2D(keepdims=True, name="se_pool")(d)
    s = L.Conv2D(4, 1, activation="swish", name="se_reduce")(s)
    s = L.Conv2D(8, 1, activation="sigmoid", name="se_expand")(s)
    d = L.Multiply(name="se_mul")([d, s])
    a = L.Conv2D(6, 1, padding="same", use_bias=True, name="branch_a")(d)
    b = L.Conv2D(5, 3, strides=2, padding="same", name="branch_b")(d)
    b = L.ZeroPadding2D(((0, 0), (0, 0)), name="pad")(b)
    a = L.MaxPooling2D(2, name="pool_a")(a)
    c = L.Concatenate(name="concat")([a, b])
    c = L.BatchNormalization(name="concat_bn")(c)
    c = L.ReLU(name="concat_relu")(c)
    if flatten:
        c = L.Conv2D(7, 3, strides=2, padding="valid", name="head_conv")(c)
        c = L.Flatten(name="flatten")(c)
    else:
        c = L.GlobalAveragePooling2D(name="gap")(c)
    c = L.Dense(9, activation="relu", name="fc1")(c)
    c = L.Dropout(0.1, name="drop")(c)
    out = L.Dense(num_classes, name="logits")(c)
    return keras.Model(inp, out, name="coupling_zoo")
