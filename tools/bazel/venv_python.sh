#!/bin/sh
# The Python interpreter of Bazel's py_test/py_binary targets: the project's virtualenv.
#
# Bazel runs this file from the runfiles tree, where it is a symlink into the source tree;
# resolving it gives the workspace root (two levels up), wherever the clone lives.
# `make venv` creates .venv; the sandbox sees it read-only, which is all Python needs.
here=$(dirname "$(readlink -f "$0")")
root=$(cd "$here/../.." && pwd)
py="$root/.venv/bin/python"
if [ ! -x "$py" ]; then
  echo "tools/bazel/venv_python.sh: $py is missing; run 'make venv' first" >&2
  exit 1
fi
exec "$py" "$@"
