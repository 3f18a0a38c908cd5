"""Starts a pipeline stage tied to its parent: ``python -m cafe_tf.stage_launcher PARENT_PID ARGS...``.

On Linux it asks the kernel to send this process SIGTERM when its parent dies
(``prctl(PR_SET_PDEATHSIG)``), then replaces itself with ``python ARGS...``; the request survives
``exec``, so a stage stops when its pipeline is killed, even by SIGKILL. SIGINT and SIGTERM are
reset to their defaults first, so a stage always honours what the pipeline forwards. It runs as a process of
its own rather than as a ``preexec_fn`` because the pipeline has imported TensorFlow, whose threads
make Python code between fork and exec unsafe. Elsewhere it only execs (the pipeline still forwards
SIGTERM and SIGINT).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def tie_to_parent(parent_pid: int) -> None:
    """Arms SIGTERM on the parent's death; exits at once if the parent is already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have died before the signal was armed: then we were adopted by another process.
    if os.getppid() != parent_pid:
        sys.exit(128 + int(signal.SIGTERM))


def main(argv: list[str]) -> None:
    """``argv``: this module's name, the parent's pid, then the arguments for ``python``."""
    if len(argv) < 3 or not argv[1].isdigit():
        sys.stderr.write(f"stage_launcher: usage error: expected PARENT_PID ARGS..., got {argv[1:]}\n")
        sys.exit(2)
    tie_to_parent(int(argv[1]))
    # A pipeline started with SIGINT ignored (a background job of a script: `make demo &`) would pass
    # that on through exec, and the stage's Python would then ignore the SIGINT the pipeline forwards.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    os.execv(sys.executable, [sys.executable, *argv[2:]])


if __name__ == "__main__":
    main(sys.argv)
