"""``python -m cafe_tf.study``: the program is :mod:`cafe_tf.cli.study`."""
from cafe_tf.cli.study import main; main()  # noqa: E702
