"""The supernet that runs any channel selection of a functional model.

How each layer kind is sliced and run on compact tensors is its rule in ``cafe_tf.layers``; sharing
patterns (fixed and locally free) and their candidates live in ``cafe_tf.space``.
"""

from cafe_tf.slim.supernet import Supernet

__all__ = ["Supernet"]
