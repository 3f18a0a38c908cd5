"""Main of every Bazel py_test in tests/: runs pytest on the files given as arguments.

Bazel starts tests in the runfiles copy of the workspace, which holds pyproject.toml (pytest's
options, including ``-m 'not slow'``), tests/conftest.py and the package sources. Nothing is
written into runfiles: pytest's cache is off and hypothesis' database lives in TEST_TMPDIR.

  bazel test //tests:test_io --test_filter=round_trip          # pytest -k round_trip
  bazel test //tests/... --test_arg=-m --test_arg=slow --test_timeout=3600   # the slow tests
"""

import os
import sys

# Bazel leaves HOME unset in tests; keras (~/.keras) and tfds (~/tensorflow_datasets, the default
# data dir) would then fall back to the real home, which the sandbox mounts read-only.
if os.environ.get("TEST_TMPDIR") and not os.environ.get("HOME"):
    os.environ["HOME"] = os.environ["TEST_TMPDIR"]

import pytest


def main(argv: list[str]) -> int:
    tmp = os.environ.get("TEST_TMPDIR")
    args = ["-p", "no:cacheprovider", "-p", "no:xdist"]
    only = os.environ.get("TESTBRIDGE_TEST_ONLY")
    if only:  # bazel test --test_filter=EXPR: a pytest -k expression
        args += ["-k", only]
    xml = os.environ.get("XML_OUTPUT_FILE")
    if xml:  # Bazel reads test cases from here (bazel-testlogs/.../test.xml).
        # "legacy" keeps record_property() working (xunit2, the default, rejects it).
        args += ["--junitxml", xml, "-o", "junit_family=legacy"]
    code = int(pytest.main(args + argv, plugins=[_TmpHypothesisHome(tmp)] if tmp else []))
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        # A file whose tests are all marked slow is deselected by `-m 'not slow'`: not a failure.
        print("pytest_main: no tests selected in", " ".join(argv))
        return 0
    return code


class _TmpHypothesisHome:
    """Keeps hypothesis' example database in TEST_TMPDIR (set once pytest has loaded plugins)."""

    def __init__(self, tmp: str):
        self.tmp = tmp

    def pytest_configure(self, config):
        try:
            from hypothesis.configuration import set_hypothesis_home_dir
        except ImportError:
            return
        set_hypothesis_home_dir(os.path.join(self.tmp, ".hypothesis"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
