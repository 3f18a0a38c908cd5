"""The frame shared by deploy's absl programs: flag parsing, one-line errors and exit codes.

Exit codes: 0 done; 1 the job failed (``DeployError`` and the library's other ``ValueError``
subclasses such as ``ArtifactError`` / ``DatasetError`` print one line); 2 bad usage (unknown or
missing flags, invalid values, missing input files); 130 interrupted. Unexpected exceptions keep
their traceback, since they are bugs rather than user errors.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn

from absl import app, flags, logging

from cafe_tf import programs
from deploy.errors import UsageError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def require_file(path: str | None, flag: str) -> str:
    """Returns ``path`` if it names an existing file, else raises :class:`UsageError` naming ``flag``."""
    if not path:
        raise UsageError(f"--{flag} is required")
    if not os.path.isfile(path):
        raise UsageError(f"--{flag}={path!r} does not exist or is not a file")
    return path


def run(main: Callable[[], None]) -> NoReturn:
    """Runs ``main()`` (which reads ``absl.flags.FLAGS``) as an absl program; never returns."""

    # TensorFlow is imported lazily by the library, so this still quiets its C++ start-up logs.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def _main(argv: list[str]) -> int:
        name = programs.program_name()
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # tfds and the converter log a page per call at INFO
        if len(argv) > 1:
            sys.stderr.write(f"{name}: usage error: unexpected arguments {argv[1:]}; flags look like --name=value\n")
            return EXIT_USAGE
        try:
            main()
        except UsageError as e:
            sys.stderr.write(f"{name}: usage error: {e}\nPass --help to see the flags.\n")
            return EXIT_USAGE
        except KeyboardInterrupt:
            sys.stderr.write(f"{name}: interrupted\n")
            return EXIT_INTERRUPTED
        except ValueError as e:  # DeployError, ArtifactError, DatasetError: clear messages by contract
            sys.stderr.write(f"{name}: error: {e}\n")
            return EXIT_FAILURE
        return EXIT_OK

    app.run(_main, flags_parser=programs.parse_flags)
    raise AssertionError("app.run returned")  # pragma: no cover - app.run always exits
