"""The two kinds of error deploy reports in one line instead of a traceback.

``UsageError`` (the same class as ``cafe_tf.programs.UsageError``): a flag or argument that cannot
run as given; exit code 2. ``DeployError``: the job ran and failed for a reason the user can act on
(a model the converter or the Edge TPU cannot take, a truncated ``.tflite``, no adb, no device, no
Edge TPU runtime); exit code 1. Both say what was wrong and what would be valid.
"""

from __future__ import annotations

from cafe_tf.errors import UsageError

__all__ = ["DeployError", "UsageError"]


class DeployError(ValueError):
    """A deployment step failed for a reason the message explains (exit code 1)."""
