# The README's two commands: `make demo` (the main job) and `make test` (the tests).
# Both create the virtualenv and install what they need on first use; a second run installs nothing.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
WORKDIR ?= runs/demo
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv data demo lint test test-slow bazel-test bazel-ci bench clean

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# Debian's dataset-fashion-mnist: the offline default dataset.
data: $(FMNIST)
$(FMNIST):
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q dataset-fashion-mnist

demo: venv data
	$(BIN)/cafe-tf pipeline --config configs/fashion_mnist_resnet20.py --workdir $(WORKDIR)

# ruff, pinned in pyproject's `test` extra and configured there ([tool.ruff]).
lint: venv
	$(BIN)/ruff check .

test: venv data
	$(BIN)/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

test-slow: venv data
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

bench: venv data
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis

# Bazel: Debian's bazel-bootstrap (4.2.3), offline; flags in .bazelrc, Python from .venv.
# `make bazel-test` runs the whole suite (one target per tests/test_*.py); `make bazel-ci` checks
# that every BUILD file still analyses and runs one real test target (CI runs it).
BAZEL ?= bazel
BAZEL_ARGS ?=
BAZEL_MOCKS := /usr/src/bazel-bootstrap/mock_repos
BAZEL_INSTALL := command -v $(BAZEL) >/dev/null && test -d $(BAZEL_MOCKS) || { $(SUDO) apt-get update -q && \
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q bazel-bootstrap bazel-bootstrap-source; }

bazel-test: venv data
	@$(BAZEL_INSTALL)
	$(BAZEL) test $(BAZEL_ARGS) //tests/...

bazel-ci: venv
	@$(BAZEL_INSTALL)
	$(BAZEL) build $(BAZEL_ARGS) //...
	$(BAZEL) test $(BAZEL_ARGS) --nocache_test_results //tests:test_io
