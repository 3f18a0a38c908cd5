"""The two kinds of error deploy's programs report in one line instead of a traceback.

``UsageError``: the command line cannot run as given (a flag missing, contradictory or naming a file
that does not exist); exit code 2. ``DeployError``: the job ran and failed for a reason the user can
act on (a model the converter or the Edge TPU cannot take, a truncated ``.tflite``, no adb, no
device, no Edge TPU runtime); exit code 1. Both say what was wrong and what would be valid.
"""

from __future__ import annotations


class DeployError(ValueError):
    """A deployment step failed for a reason the message explains (exit code 1)."""


class UsageError(ValueError):
    """A command line or argument that cannot run (exit code 2)."""
