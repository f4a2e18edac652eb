# Two commands do all set-up on a fresh machine:
#   make repro   install into .venv (CPU torch from constraints-cpu.txt), then `dvc repro`
#   make test    install into .venv, then run the test suite
# GPU users: install into your own environment with `pip install -e ".[dev]"` (keeps your CUDA torch).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup repro test lint
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints-cpu.txt -e ".[dev]" 2>&1 \
	  | { grep -v "^WARNING: Location" || true; }
	$(PY) -c "import selfimprove, torch, transformers, dvc, mlflow"
	touch $@

repro: setup
	dvc repro

test: setup
	ruff check src stages tests benchmarks
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 pytest  # exit 5 (no tests collected) fails too

lint: setup
	ruff check src stages tests benchmarks
