# pytest-memline: `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CROSS_TARGETS := x86_64-apple-darwin x86_64-pc-windows-msvc
# `make demo V=1`: show pip's and cargo's whole output while the extension builds
PIP_Q := $(if $(V),-v,-q)

# What the native extension is built from: the editable install is redone only when one of
# these changed (or the module cannot be imported); Python files are read from the clone.
RUST_SOURCES := Cargo.toml Cargo.lock build.rs pyproject.toml $(shell find src -name '*.rs')
BUILT := $(VENV)/.memline-built
TEST_DEPS := $(VENV)/.memline-test-deps

# Release wheels (`make wheels`): one per CPython, manylinux_2_17 (glibc 2.17, the oldest that
# Rust's std supports) through zig as the linker, so the host's newer glibc does not leak in.
# maturin finds each interpreter on PATH, or uses its bundled sysconfig when it is absent.
WHEEL_PYTHONS ?= python3.11 python3.12 python3.13 python3.14
MANYLINUX ?= manylinux_2_17
BUILD_VENV ?= .venv-build
BUILD_TOOLS := maturin==1.16.0 ziglang==0.17.1 auditwheel==6.8.2
DIST ?= dist

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(BUILT): $(VENV)/bin/python $(RUST_SOURCES)
	@echo "make: building the Rust extension for $$($(PY) -V) into $(VENV) (cargo, release profile:"
	@echo "      about 1 minute with a warm cargo cache, up to 4 the first time; V=1 shows its output)"
	@start=$$(date +%s); $(PY) -m pip install $(PIP_Q) -e . && \
	  echo "make: built in $$(( $$(date +%s) - start )) s; rebuilt only when src/, Cargo.* or pyproject.toml change"
	@touch $@

.PHONY: build
build: $(VENV)/bin/python ## build the extension into .venv (editable), unless it is up to date
	@cd / && $(abspath $(PY)) -c "import pytest_memline._memline" 2>/dev/null || rm -f $(BUILT)
	@$(MAKE) --no-print-directory $(BUILT)

$(TEST_DEPS): $(VENV)/bin/python pyproject.toml
	$(PY) -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['test']))" > $(VENV)/test-requirements.txt
	$(PY) -m pip install -q -r $(VENV)/test-requirements.txt
	@touch $@

.PHONY: demo
demo: build ## install into .venv and run the demo suite (examples/) with --memline
	-$(PY) -m pytest --memline --memline-tables=all examples/
	@echo "(one demo test fails on purpose: it is over its memory budget)"

.PHONY: install-test
install-test: build $(TEST_DEPS) ## install into .venv with the test dependencies

.PHONY: test
test: install-test ## install into .venv, then run the Rust unit tests and the whole pytest suite
	PYO3_PYTHON=$(abspath $(PY)) cargo test --quiet
	$(PY) -m pytest

.PHONY: lint
lint: install-test ## rustfmt, clippy, mypy, the stub check and the GitHub workflows' schema
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
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

$(BUILD_VENV)/.tools: Makefile
	@test -x $(BUILD_VENV)/bin/python || $(PYTHON) -m venv $(BUILD_VENV)
	$(BUILD_VENV)/bin/python -m pip install -q $(BUILD_TOOLS)
	@touch $@

.PHONY: wheels
wheels: $(BUILD_VENV)/.tools ## release wheels (manylinux, one per CPython) and the sdist, into dist/
	@echo "make: building $(words $(WHEEL_PYTHONS)) wheels ($(MANYLINUX), zig as the linker) and the sdist into $(DIST)/"
	PATH=$(abspath $(BUILD_VENV))/bin:$$PATH maturin build --release --strip --zig \
	  --compatibility $(MANYLINUX) --out $(DIST) -i $(WHEEL_PYTHONS)
	$(BUILD_VENV)/bin/maturin sdist --out $(DIST)
	@ls -l $(DIST)

.PHONY: check-dist
check-dist: $(BUILD_VENV)/.tools ## install each wheel (no Rust on PATH) and the sdist into fresh venvs, run the demo
	$(BUILD_VENV)/bin/python .ci/check-dist $(DIST)

.PHONY: bench
bench: ## run the benchmark (bench/run.py --quick)
	$(PY) bench/run.py --quick
