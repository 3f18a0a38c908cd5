"""Training loops: ``standard`` (plain models: train, retrain, fine-tune); run one with ``python -m cafe_tf.train``.

The supernet (min-min) loop lives beside it in ``supernet``.
"""
