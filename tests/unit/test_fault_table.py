"""The fault tables of the docs (docs/faults.md: "Fault tolerance", "Bad input") and the fault
tests agree: every test a table names exists, and every fault test is named in a table."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: the files whose every test is a fault case the fault tables must name
FAULT_FILES = (
    "tests/unit/test_bad_input.py",
    "tests/unit/test_health.py",
    "tests/unit/test_preflight.py",
    "tests/integration/test_faults.py",
)
#: tests in those files that check a good input still passes (not fault cases)
NOT_FAULT_CASES = {
    "test_check_tracking_disabled_checks_nothing",
    "test_check_tracking_file_store_refused",
    "test_check_tracking_http_answering",
    "test_check_tracking_sqlite_creates_nothing",
    "test_defaults_have_no_problem",
    "test_memory_problems_measured_floor",
    "test_tracking_disabled_is_not_checked",
    "test_tracking_uri_default",
}


def _fault_sections() -> str:
    text = (ROOT / "docs" / "faults.md").read_text(encoding="utf-8")
    return text[text.index("## Fault tolerance"):]


def _named_tests(section: str) -> set[str]:
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return set(re.findall(r"`(test_[a-z0-9_]+)`", "\n".join(rows)))


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        n.name
        for n in tree.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")
    }


def test_every_named_test_exists():
    every = set().union(*(_tests_in(p) for p in (ROOT / "tests").rglob("test_*.py")))
    missing = sorted(_named_tests(_fault_sections()) - every)
    assert not missing, f"docs/faults.md names tests that do not exist: {missing}"


def test_every_fault_test_is_in_a_table():
    named = _named_tests(_fault_sections())
    unnamed = {
        f"{f}::{t}"
        for f in FAULT_FILES
        for t in _tests_in(ROOT / f)
        if t not in named and t not in NOT_FAULT_CASES
    }
    assert not unnamed, f"add these fault tests to the tables in docs/faults.md: {sorted(unnamed)}"


def test_the_check_catches_a_missing_row():
    section = _fault_sections()
    planted = section.replace("`test_seed_range`", "`test_seed_range_gone`")
    assert "test_seed_range" not in _named_tests(planted)
    assert "test_seed_range_gone" in _named_tests(planted)
