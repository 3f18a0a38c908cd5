"""Command lines of library modules (``python -m cafe_tf.flops``): flags and ``main`` live here, so a
library module keeps only a two-line ``__main__`` delegation and imports nothing it does not compute with."""
