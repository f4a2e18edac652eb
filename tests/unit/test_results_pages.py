"""The generated results pages (docs/results/, `python benchmarks/results_pages.py`) are not stale,
and the README's headline figures are the ones in the result summaries."""

import importlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ROOT / "docs" / "results"


@pytest.fixture
def results_pages(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("results_pages")


def test_committed_pages_equal_a_fresh_generation(tmp_path, results_pages):
    written = results_pages.write(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in PAGES.glob("*.md")), (
        "docs/results/ holds other pages than the generator writes"
    )
    stale = [p.name for p in written if p.read_text() != (PAGES / p.name).read_text()]
    assert not stale, f"stale: {stale}; run `python benchmarks/results_pages.py` and commit"


def test_a_changed_summary_makes_the_page_stale(tmp_path, results_pages, monkeypatch):
    fake = tmp_path / "results"
    fake.mkdir()
    for name, page in [("ms3q", "three-seeds.md"), ("multi_seed", "three-seeds-amx.md")]:
        d = json.loads((ROOT / f"benchmarks/results/{name}.json").read_text())
        d["rows"]["star_vs_lmsi"][1]["diff"] += 0.5  # arith_1step fewshot_cot strict
        (fake / f"{name}.json").write_text(json.dumps(d))
        monkeypatch.setattr(results_pages, "RESULTS", fake)
        assert results_pages.three_seeds(name) != (PAGES / page).read_text()


def _headline_figures(text: str) -> set[str]:
    return set(re.findall(r"[+−-]?0\.\d{3} \[[+−-]?0\.\d{3}, [+−-]?0\.\d{3}\]", text))


def test_readme_headline_figures_are_in_the_study_pages():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    figures = _headline_figures(readme.replace("−", "-"))
    assert len(figures) >= 3, "the README states its headline with intervals (x.xxx [lo, hi])"
    pages = "".join((PAGES / p).read_text(encoding="utf-8")
                    for p in ("label-free.md", "three-seeds.md", "three-seeds-amx.md"))
    missing = sorted(f for f in figures if f not in pages)
    assert not missing, f"README figures in no docs/results page: {missing}"
