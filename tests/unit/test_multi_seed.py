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


def _round(folder: Path, correct: list[bool], agreement: float | None = None) -> None:
    (folder / "eval").mkdir(parents=True)
    preds = [{"id": f"q{i}", "correct_strict": c} for i, c in enumerate(correct)]
    (folder / "eval" / "arith__fewshot_cot.jsonl").write_text(
        "".join(json.dumps(p) + "\n" for p in preds)
    )
    metrics = {"arith": {"fewshot_cot": {"n": len(correct), "strict": sum(correct) / len(correct)}}}
    if agreement is not None:  # what the label-free choice of round ranks by
        metrics["arith"]["sc"] = {"label_free": {"agreement": agreement, "n": len(correct)}}
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


def test_table_last_round_gain_and_label_free_loss_are_paired_within_runs(
    tmp_path, multi_seed, capsys
):
    n = 40
    for seed in (0, 1, 2):
        rounds = tmp_path / f"lmsi_s{seed}/data/rounds"
        _round(rounds / "r0", [i < 10 for i in range(n)], agreement=0.5)
        # label-free picks r1 (highest agreement), r2 is truly best: +0.1 in every seed
        _round(rounds / "r1", [i < 16 for i in range(n)], agreement=0.9)
        _round(rounds / "r2", [i < 20 for i in range(n)], agreement=0.7)
        for name, frac in (("r1", 0.1), ("r2", 0.5 + seed / 10)):
            (rounds / name / "filter.json").write_text(
                json.dumps({"selected_fraction": frac, "answer_entropy": 1.0})
            )
    out = tmp_path / "t.json"
    rc = multi_seed.main(["table", "--root", str(tmp_path), "--methods", "lmsi", "--seeds", "0",
                          "1", "2", "--json", str(out), "--resamples", "200"])
    assert rc == 0
    assert "| lmsi | arith / fewshot_cot / strict | +0.100" in capsys.readouterr().out
    got = json.loads(out.read_text())
    (step,) = got["last_minus_prev"]["lmsi"]
    (loss,) = got["label_free_loss"]["lmsi"]
    assert step["diff"] == pytest.approx(0.1) and step["n_runs"] == 3
    # the same gain in every seed: resampling seeds adds nothing, questions still do
    assert 0 < step["lo"] < 0.1 < step["hi"]
    assert loss["rounds"] == [["r1", "r2"]] * 3 and loss["diff"] == pytest.approx(0.1)
    monitors = got["monitors"]["lmsi"]
    assert monitors["r2"]["selected_fraction"] == [0.5, 0.6, 0.7]
    assert monitors["r1"]["answer_entropy"] == [1.0] * 3
