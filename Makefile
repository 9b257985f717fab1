# Two entry points, each creating its own virtual environment when needed:
#   make demo   the main job on the built-in offline default
#   make test   the whole test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench install

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,torch]" "torch==2.13.0"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo --workdir=runs/demo

test: $(STAMP)
	$(PY) -m pytest -n 2 -q -rs --durations=20

bench: $(STAMP)
	$(PY) benchmarks/losses.py
