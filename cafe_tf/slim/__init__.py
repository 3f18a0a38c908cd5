"""Slimmable layers and the supernet that runs any channel selection of a functional model.

Sharing patterns (fixed and locally free) and their candidates live in ``cafe_tf.space``; this
package executes a selection.
"""

from cafe_tf.slim.layers import SlimBatchNormalization, SlimConv2D, SlimDense, SlimDepthwiseConv2D
from cafe_tf.slim.supernet import Supernet

__all__ = ["Supernet", "SlimConv2D", "SlimDepthwiseConv2D", "SlimDense", "SlimBatchNormalization"]
