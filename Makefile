# pytest-memline: `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CROSS_TARGETS := x86_64-apple-darwin x86_64-pc-windows-msvc

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

.PHONY: demo
demo: $(VENV)/bin/python ## install into .venv and run the demo suite (examples/) with --memline
	$(PY) -m pip install -q -e .
	-$(PY) -m pytest --memline --memline-tables=all examples/
	@echo "(one demo test fails on purpose: it is over its memory budget)"

.PHONY: install-test
install-test: $(VENV)/bin/python ## install into .venv with the test dependencies
	$(PY) -m pip install -q -e '.[test]'

.PHONY: test
test: install-test ## install into .venv, then run the Rust unit tests and the whole pytest suite
	PYO3_PYTHON=$(abspath $(PY)) cargo test --quiet
	$(PY) -m pytest

.PHONY: lint
lint: install-test ## rustfmt, clippy, mypy and the stub check
	cargo fmt --check
	PYO3_PYTHON=$(abspath $(PY)) cargo clippy --all-targets -- -D warnings
	@# macOS and Windows (the portable RSS reader): checked when their std is installed
	@# (`rustup target add x86_64-apple-darwin x86_64-pc-windows-msvc`), else skipped
	@for t in $(CROSS_TARGETS); do \
	  if rustup target list --installed 2>/dev/null | grep -qx $$t; then \
	    echo "clippy --target $$t"; \
	    PYO3_CROSS=1 PYO3_CROSS_PYTHON_VERSION=3.12 cargo clippy --quiet --target $$t \
	      --target-dir target/cross --all-targets -- -D warnings || exit 1; \
	  else echo "clippy --target $$t: skipped (rustup target add $$t)"; fi; \
	done
	$(PY) -m mypy pytest_memline
	$(PY) -m mypy.stubtest pytest_memline._memline

.PHONY: bench
bench: ## run the benchmark (bench/run.py --quick)
	$(PY) bench/run.py --quick
