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

.PHONY: venv data demo test test-slow bazel-test bench clean

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
	$(BIN)/python -m cafe_tf.pipeline --config configs/fashion_mnist_resnet20.py --workdir $(WORKDIR)

test: venv data
	$(BIN)/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

test-slow: venv data
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

bench: venv data
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
