"""Training loops: ``standard`` (plain models: train, retrain, fine-tune); run one with ``cafe-tf train``.

The supernet (min-min) loop lives beside it in ``supernet``; Dagger's gate training in
``cafe_tf.dagger.train``. What the three share (checkpoints, L2, history, progress, evaluation,
mixed precision) is ``kernel``.
"""
