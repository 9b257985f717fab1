# Two entry points, each creating its own virtual environment when needed:
#   make demo   the main job on the built-in offline default
#   make test   the whole test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# pip compiles every installed module to bytecode one file at a time (~90 s
# of CPU); this does the same on every core. The install on this 2-core CPU,
# 4 runs each, interleaved: 151-190 s with pip's compilation, 112-157 s so.
# As with pip, a file that does not compile for this Python (torch ships one
# written for 3.12) is left to fail at import, if it is ever imported.
define COMPILE_SITE_PACKAGES
import compileall, sysconfig
compileall.compile_dir(sysconfig.get_paths()["purelib"], quiet=2, workers=0)
endef
export COMPILE_SITE_PACKAGES

.PHONY: demo test bench install

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e ".[test,torch]" "torch==2.13.0"
	$(PY) -c "$$COMPILE_SITE_PACKAGES"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo --workdir=runs/demo

test: $(STAMP)
	$(PY) -m pytest -n 2 -q -rs --durations=20

bench: $(STAMP)
	$(PY) benchmarks/losses.py
