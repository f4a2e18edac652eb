"""The report with uncertainty: intervals per round (tables, bands in accuracy.png), paired
differences between rounds from the saved predictions, the label-free selection's loss, the
compare table with intervals; the files the report wrote before stay byte-identical."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from selfimprove.cli import main as cli_main
from selfimprove.config.evaluation import StatsConfig
from selfimprove.core.io import write_json, write_jsonl
from selfimprove.evaluation.evaluate import sc_scores
from selfimprove.evaluation.intervals import annotate_metrics
from selfimprove.evaluation.report import build_report

FAST = StatsConfig(n_resamples=200)
#: per round: share of questions right (strict), and how much the sampled answers agree
ROUNDS = {"r0": (0.3, 0.4), "r1": (0.6, 0.9), "r2": (0.7, 0.6)}
N, M = 40, 5


def _predictions(acc: float, agree: float, seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    right = [i < acc * N for i in range(N)]
    greedy = [
        {"id": f"q{i}", "correct_strict": r, "correct_flexible": r, "strict": "1" if r else "2"}
        for i, r in enumerate(right)
    ]
    sc = []
    for i in range(N):
        answers = ["1" if rng.random() < agree else str(rng.randint(2, 9)) for _ in range(M)]
        (scores,) = sc_scores([answers], ["1"], [M])  # as the evaluate step writes them
        sc.append({"id": f"q{i}", "gold": "1", "answers": answers, "scores": scores})
    return {"s__cot": greedy, "s__sc": sc}


def _metrics(preds: dict) -> dict:
    from selfimprove.core.answers import answers_match
    from selfimprove.core.voting import maj_at_k

    g = preds["s__cot"]
    sc = preds["s__sc"]
    strict = sum(p["correct_strict"] for p in g) / N
    maj = sum(answers_match(maj_at_k(p["answers"], M), p["gold"]) for p in sc) / N
    return {
        "s": {
            "cot": {"n": N, "strict": strict, "flexible": strict, "no_answer": 0.0},
            "sc": {"n": N, f"maj@{M}": maj},
        }
    }


def _write(root: Path, with_intervals: bool) -> Path:
    rounds = root / "rounds"
    for k, (name, (acc, agree)) in enumerate(ROUNDS.items()):
        preds = _predictions(acc, agree, k)
        metrics = _metrics(preds)
        if with_intervals:
            metrics = annotate_metrics(metrics, preds, FAST)
            for key, p in preds.items():
                write_jsonl(rounds / name / "eval" / f"{key}.jsonl", p)
        write_json(rounds / name / "metrics.json", metrics)
    return rounds


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_report_intervals_differences_selection(tmp_path):
    rounds = _write(tmp_path, with_intervals=True)
    out = tmp_path / "report"
    build_report(rounds, list(ROUNDS), out, stats=FAST)

    intervals = _read_csv(out / "intervals.csv")
    strict = {r["round"]: r for r in intervals if r["metric"] == "strict"}
    for name, (acc, _) in ROUNDS.items():
        row = strict[name]
        assert float(row["value"]) == acc and float(row["lo"]) < acc < float(row["hi"])
        assert row["level"] == "0.95"
    assert json.loads((out / "intervals.json").read_text()) == [
        {
            **r,
            "round_index": int(r["round_index"]),
            **{k: float(r[k]) for k in ("value", "lo", "hi", "level")},
        }
        for r in intervals
    ]

    diffs = {
        (r["round"], r["vs"], r["style"], r["metric"]): r
        for r in _read_csv(out / "differences.csv")
    }
    assert {(k[0], k[1]) for k in diffs} == {("r1", "r0"), ("r2", "r0"), ("r2", "r1")}
    up = diffs[("r1", "r0", "cot", "strict")]  # +0.3, paired over the 40 questions
    assert float(up["diff"]) == 0.3 and float(up["lo"]) > 0 and up["n"] == "40"
    small = diffs[("r2", "r1", "cot", "strict")]  # +0.1: 4 more right, none lost
    assert abs(float(small["diff"]) - 0.1) < 1e-12 and float(small["lo"]) >= 0.0
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"

    sel = json.loads((out / "selection.json").read_text())
    assert (
        sel["by"] == "label_free"
        and max(sel["label_free_score"], key=sel["label_free_score"].get) == "r1"
    )
    row = next(r for r in sel["metrics"] if r["accuracy_metric"] == "s.cot.strict")
    assert (row["chosen_round"], row["best_round"]) == ("r1", "r2")
    assert abs(row["loss"] - 0.1) < 1e-12 and row["n_rounds"] == 3
    assert row["loss_ci"]["n"] == 40 and row["loss_ci"]["lo"] <= row["loss"] <= row["loss_ci"]["hi"]


#: the report's files that the intervals, monitors and selection added
ADDED = {
    f"{stem}.{ext}" for stem in ("intervals", "differences", "monitors") for ext in ("csv", "json")
} | {"selection.json", "monitors.png", "plots/monitors.csv"}


def test_existing_report_files_are_byte_identical(tmp_path):
    """Adding the intervals to metrics.json (and eval/ files) changes no file the report wrote
    before, except accuracy.png, which now has the bands."""
    old = tmp_path / "old"
    new = tmp_path / "new"
    build_report(_write(old, with_intervals=False), list(ROUNDS), old / "report", stats=FAST)
    build_report(_write(new, with_intervals=True), list(ROUNDS), new / "report", stats=FAST)

    def files(root: Path) -> dict[str, Path]:
        return {
            p.relative_to(root).as_posix(): p
            for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).as_posix() not in ADDED
        }

    before, after = files(old / "report"), files(new / "report")
    assert set(before) == set(after) and "accuracy.csv" in before
    assert "plots/accuracy/s.cot.csv" in before and "kept.png" in before
    changed = sorted(k for k, p in before.items() if p.read_bytes() != after[k].read_bytes())
    assert changed == ["accuracy.png"]
    assert json.loads((old / "report/intervals.json").read_text()) == []
    assert json.loads((old / "report/differences.json").read_text()) == []


def test_compare_with_intervals(tmp_path, capsys, monkeypatch):
    rounds = _write(tmp_path, with_intervals=True)
    monkeypatch.chdir(tmp_path)
    args = ["compare", "--rounds-dir", str(rounds), "--metrics", "s.cot.strict", "s.sc.maj@5"]
    assert cli_main([*args, "--ci", "--digits", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["round", "s.cot.strict", "s.sc.maj@5"]
    assert lines[1].startswith("r0     0.30 [") and lines[1].count("[") == 2
    assert cli_main(args) == 0  # without --ci: plain numbers, as before
    assert "[" not in capsys.readouterr().out


def _benchmark(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_runs_over_seeds(tmp_path, capsys):
    """Two systems with two runs each: means with intervals over runs and questions, and the
    paired difference; a system against itself differs by exactly 0."""
    folders = {}
    for system, acc in (("a", 0.3), ("b", 0.6)):
        for seed in (0, 1):
            rounds = tmp_path / f"{system}{seed}"
            preds = _predictions(acc + 0.05 * seed, 0.5, seed)
            metrics = annotate_metrics(_metrics(preds), preds, FAST)
            write_json(rounds / "r1" / "metrics.json", metrics)
            for key, p in preds.items():
                write_jsonl(rounds / "r1" / "eval" / f"{key}.jsonl", p)
            folders.setdefault(system, []).append(str(rounds))
    bench = _benchmark("compare_runs")
    args = ["--a", *folders["a"], "--b", *folders["b"], "--round", "r1", "--resamples", "200"]
    assert bench.main(args) == 0
    rows = {(r["style"], r["metric"]): r for r in json.loads(capsys.readouterr().out)["rows"]}
    strict = rows[("cot", "strict")]
    assert strict["n_questions"] == N and strict["a"]["n_runs"] == 2
    assert abs(strict["a"]["mean"] - 0.325) < 1e-12 and abs(strict["diff"] - 0.3) < 1e-12
    assert 0.0 < strict["lo"] < 0.3 < strict["hi"]
    assert strict["a"]["lo"] < strict["a"]["mean"] < strict["a"]["hi"]
    assert bench.main(["--a", *folders["a"], "--b", *folders["a"], "--round", "r1"]) == 0
    same = json.loads(capsys.readouterr().out)["rows"]
    assert all(r["diff"] == 0.0 for r in same)
