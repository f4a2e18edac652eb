"""Collapse monitors per round: answer entropy, distinct answers and path length in the filter
statistics (filter.json, vote.json, so MLflow too), with agreement, no-answer rate and the
analysis-only precisions, drawn by the report in one per-round plot."""

from __future__ import annotations

import csv
import math

import pytest

from selfimprove.config.methods import FilterConfig
from selfimprove.core.io import write_json, write_jsonl
from selfimprove.core.voting import answer_entropy, distinct_answers
from selfimprove.evaluation.analysis import majority_precision
from selfimprove.evaluation.report import build_report
from selfimprove.evaluation.summaries import MONITOR_FIELDS, monitor_rows
from selfimprove.methods.filter import (
    collapse_monitors,
    filter_refined,
    filter_samples,
    vote_summary,
)


@pytest.mark.parametrize(
    "answers, entropy, distinct",
    [
        (["5", "5", "5", "5"], 0.0, 1),
        (["1", "2", "3", "4"], 2.0, 4),
        (["1", "1", "2", "2"], 1.0, 2),
        (["1", "1", "1", "2"], -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)), 2),
        (["7", None, None, None], 0.0, 1),  # no-answer paths are the no-answer rate's business
        ([None, None], 0.0, 0),
        ([], 0.0, 0),
    ],
)
def test_entropy_and_distinct(answers, entropy, distinct):
    assert answer_entropy(answers) == pytest.approx(entropy)
    assert distinct_answers(answers) == distinct


def test_collapse_monitors_on_crafted_rounds():
    diverse = [
        {"answers": [str(i * 4 + j) for j in range(4)], "n_tokens": [40] * 4} for i in range(3)
    ]
    collapsed = [{"answers": ["9"] * 4, "n_tokens": [12] * 4} for _ in range(3)]
    d, c = collapse_monitors(diverse), collapse_monitors(collapsed)
    assert d == {"answer_entropy": 2.0, "distinct_answers": 4.0, "mean_path_tokens": 40.0}
    assert c == {"answer_entropy": 0.0, "distinct_answers": 1.0, "mean_path_tokens": 12.0}
    # without n_tokens (e.g. hand-written samples) no length is claimed
    assert "mean_path_tokens" not in collapse_monitors([{"answers": ["1"]}])
    assert "mean_path_tokens" not in collapse_monitors([*collapsed, {"answers": ["1"]}])
    assert collapse_monitors([]) == {"answer_entropy": 0.0, "distinct_answers": 0.0}


def _samples():
    return [
        {"id": "a", "question": "Q a?", "paths": ["x. The answer is 3."] * 3 + ["y"],
         "answers": ["3", "3", "3", None], "n_tokens": [10, 10, 10, 30]},
        {"id": "b", "question": "Q b?", "paths": ["p. The answer is 1.", "q. The answer is 2."],
         "answers": ["1", "2"], "n_tokens": [20, 20]},
    ]  # fmt: skip


def test_every_filter_reports_them():
    cfg = FilterConfig(min_agreement=0.5)
    _, _, stats = filter_samples(_samples(), cfg)
    assert stats["answer_entropy"] == 0.5 and stats["distinct_answers"] == 1.5
    assert stats["mean_path_tokens"] == pytest.approx(100 / 6, abs=1e-4)
    assert stats["no_answer_rate"] == pytest.approx(1 / 6, abs=1e-4)  # as before
    gold = [s | {"gold": "3", "correct": [a == "3" for a in s["answers"]]} for s in _samples()]
    for method in ("rest_em", "format_only"):
        _, _, st = filter_refined(gold, cfg, method)
        assert (st["answer_entropy"], st["distinct_answers"]) == (0.5, 1.5), method


def test_kept_precision_is_analysis_of_the_kept_paths():
    rats, _, _ = filter_samples(_samples(), FilterConfig(min_agreement=0.5))
    mp = majority_precision(rats, {"a": "#### 3", "b": "#### 2"})
    # a: majority 3 right, 1 path kept (dedupe); b: majority 1 wrong (tie, first), 1 path kept
    assert mp["selected_precision"] == 0.5 and mp["kept_precision"] == 0.5
    assert "kept_precision" not in majority_precision(
        [{"id": "a", "majority": "3", "selected": True}], {"a": "#### 3"}
    )


def _round(rounds, name, samples, cfg):

    rats, _, stats = filter_samples(samples, cfg)
    d = rounds / name
    write_jsonl(d / "rationales.jsonl", rats)
    write_json(d / "filter.json", stats)
    write_json(d / "vote.json", vote_summary(stats))
    write_json(d / "metrics.json", {"s": {"cot": {"n": 1, "strict": 0.5}}})


def test_report_draws_the_monitors_per_round(tmp_path):
    rounds = tmp_path / "rounds"
    write_json(rounds / "r0" / "metrics.json", {"s": {"cot": {"n": 1, "strict": 0.5}}})
    cfg = FilterConfig(min_agreement=0.5)
    diverse = [
        {"id": f"q{i}", "question": f"Q{i}?", "paths": [f"p{j}" for j in range(4)],
         "answers": [str(i), str(i), str(j + 10), None], "n_tokens": [50, 50, 50, 128]}
        for i, j in enumerate(range(6))
    ]  # fmt: skip
    collapsed = [d | {"answers": ["7"] * 4, "n_tokens": [20] * 4} for d in diverse]
    _round(rounds, "r1", diverse, cfg)
    _round(rounds, "r2", collapsed, cfg)
    labels = tmp_path / "labels.jsonl"
    write_jsonl(labels, [{"id": f"q{i}", "answer": f"#### {i}"} for i in range(6)])

    rows = monitor_rows(rounds, ["r0", "r1", "r2"])
    assert [r["round_name"] for r in rows] == ["r1", "r2"]  # r0 has no filter step
    r1, r2 = rows
    assert r1["answer_entropy"] > r2["answer_entropy"] == 0.0
    assert r1["distinct_answers"] == 2.0 and r2["distinct_answers"] == 1.0
    assert r1["mean_path_tokens"] > r2["mean_path_tokens"] == 20.0
    assert r1["no_answer_rate"] == 0.25 and r2["no_answer_rate"] == 0.0
    assert r2["mean_agreement"] == 1.0 > r1["mean_agreement"]
    assert r1["selected_precision"] is None  # no labels given: no analysis numbers

    files = build_report(rounds, ["r0", "r1", "r2"], tmp_path / "report", labels_path=labels)
    names = {p.relative_to(tmp_path / "report").as_posix() for p in files}
    assert {"monitors.png", "monitors.csv", "monitors.json", "plots/monitors.csv"} <= names
    assert (tmp_path / "report/monitors.png").read_bytes()[:4] == b"\x89PNG"
    with open(tmp_path / "report/monitors.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(MONITOR_FIELDS)
    # with the labels (analysis only): r1's majorities are right, r2's collapsed "7" is wrong
    assert float(table[0]["selected_precision"]) == 1.0
    assert float(table[1]["selected_precision"]) == 0.0
    assert float(table[1]["kept_precision"]) == 0.0
