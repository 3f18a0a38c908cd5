"""``python -m cafe_tf PROGRAM [FLAGS]``: the ``cafe-tf`` command (see :mod:`cafe_tf.cli.main`)."""

from cafe_tf.cli.main import main

main()
