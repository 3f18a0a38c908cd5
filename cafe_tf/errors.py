"""The error a program reports as a usage error (exit code 2), importable without absl.

Library functions raise it for an argument that cannot work (``deploy.export``'s ``quant``);
:mod:`cafe_tf.programs` maps it, and ``cafe_tf.config.ConfigError``, to exit code 2.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A command line or argument that cannot run as given; the message names it and what is valid."""
