# Two commands do all set-up on a fresh machine:
#   make repro   install into .venv from the lock (requirements/cpu.txt), then `dvc repro`
#   make test    install into .venv from the lock, then run the test suite
#   make lock    refresh the lock from pyproject.toml + constraints-cpu.txt (uv pip compile)
# GPU users: install into your own environment with `pip install -e ".[dev]"` (keeps your CUDA torch).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true

LOCK := requirements/cpu.txt
UV_VERSION := 0.13.9

.PHONY: setup repro test lint lock
setup: $(VENV)/.installed

# Every package at the version and sha256 in the lock, then the project itself (no deps: the lock
# has them all). A lock that no longer matches pyproject.toml fails `pip check`.
$(VENV)/.installed: $(LOCK) pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --require-hashes --no-deps -r $(LOCK) 2>&1 \
	  | { grep -v "^WARNING: Location" || true; }
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e . 2>&1 \
	  | { grep -v "^WARNING: Location" || true; }
	$(PY) -m pip check
	$(PY) -c "import selfimprove, torch, transformers, dvc, mlflow"
	touch $@

# Regenerate the lock (run after editing dependencies in pyproject.toml or constraints-cpu.txt).
lock:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --constraint constraints-cpu.txt \
	  --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  $(if $(wildcard /opt/wheels),--find-links /opt/wheels) --no-header --output-file $(LOCK)
	sed -i '1i # The CPU lock: `make lock` writes it (uv pip compile of pyproject.toml [dev] + constraints-cpu.txt).' $(LOCK)

# `selfimprove check` first: params, tracking URI, data files, model source and memory are
# validated in a second, so a bad setup fails (exit 2, every problem listed) before any model loads
repro: setup
	selfimprove check
	dvc repro

test: setup
	ruff check src stages tests benchmarks
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 pytest  # exit 5 (no tests collected) fails too

lint: setup
	ruff check src stages tests benchmarks
