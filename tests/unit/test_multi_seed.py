"""benchmarks/multi_seed.py's table: means over seeds with intervals, differences paired."""

import importlib
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def multi_seed(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("multi_seed")


def _round(folder: Path, correct: list[bool]) -> None:
    (folder / "eval").mkdir(parents=True)
    preds = [{"id": f"q{i}", "correct_strict": c} for i, c in enumerate(correct)]
    (folder / "eval" / "arith__fewshot_cot.jsonl").write_text(
        "".join(json.dumps(p) + "\n" for p in preds)
    )
    metrics = {"arith": {"fewshot_cot": {"n": len(correct), "strict": sum(correct) / len(correct)}}}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_table_means_over_seeds_and_paired_difference(tmp_path, multi_seed, capsys):
    n = 40
    for seed in (0, 1):
        _round(tmp_path / f"lmsi_s{seed}/data/rounds/r0", [i < 10 for i in range(n)])
        _round(tmp_path / f"lmsi_s{seed}/data/rounds/r2", [i < 20 + seed * 4 for i in range(n)])
        _round(tmp_path / f"format_only_s{seed}/data/rounds/r2", [i < 12 for i in range(n)])
    out = tmp_path / "t.json"
    rc = multi_seed.main(["table", "--root", str(tmp_path), "--methods", "lmsi", "format_only",
                          "--seeds", "0", "1", "--json", str(out), "--resamples", "200"])
    assert rc == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("| arith"))
    assert "0.250" in row and "0.550" in row and "0.300" in row  # r0, lmsi mean of 0.5/0.6, format
    rows = json.loads(out.read_text())["rows"]["format_only_vs_lmsi"]
    diff = next(r for r in rows if r["metric"] == "strict")
    assert diff["diff"] == pytest.approx(-0.25)
    assert diff["lo"] < -0.25 < diff["hi"] < 0  # a real difference: the interval excludes 0


def test_table_names_missing_runs(tmp_path, multi_seed, capsys):
    rc = multi_seed.main(["table", "--root", str(tmp_path), "--methods", "lmsi", "--seeds", "0"])
    assert rc == 2
    assert "lmsi_s0" in capsys.readouterr().err
