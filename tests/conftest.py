"""Test-wide settings: offline, one thread (thread contention made tests several times slower)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

#: the marker each test folder gives its tests (doctests in src/ are unit tests); `make test-fast`
#: runs ``-m "unit and not e2e and not slow"``, `make test` everything
FOLDER_MARKERS = {
    "unit": "unit",
    "integration": "integration",
    "e2e": "e2e",
    "vllm_engine": "engine",
}
_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    for item in items:
        rel = Path(str(item.path)).resolve().relative_to(_ROOT).parts
        if rel[0] == "src":
            item.add_marker("unit")
        elif rel[0] == "tests" and len(rel) > 2 and rel[1] in FOLDER_MARKERS:
            item.add_marker(FOLDER_MARKERS[rel[1]])


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random Llama folder (``selfimprove tiny-model``), made once per test session."""
    from selfimprove.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-model")
