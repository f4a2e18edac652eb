"""`selfimprove score`: score_file, the CLI entry, the `evaluate` modules, and a cross-check of
our GSM8K extraction against lm-evaluation-harness's regexes."""

from __future__ import annotations

import argparse
import gzip
import json
import re
from pathlib import Path

import pytest

from selfimprove.core.answers import extract_flexible, extract_strict, normalize_number
from selfimprove.core.io import InputError
from selfimprove.data.drop import generate_drop
from selfimprove.evaluation.metrics import load_metric, metric_module_path
from selfimprove.evaluation.metrics.gsm8k import score_gsm8k
from selfimprove.evaluation.score import add_score_parser, run_score, score_file


def _write(path: Path, rows: list) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


GSM8K_ROWS = [
    {"prediction": "3 + 4 = 7. The answer is 7.", "answer": "Some steps.\n#### 7"},  # s, f
    {"prediction": "3 + 5 = 8", "answer": 8},  # flexible only
    {"prediction": "The answer is 9. Then 2 more.", "answer": "9"},  # strict only
    {"prediction": "The answer is $1,600.\n\nQ: Tom has 3 apples.", "answer": "1600"},  # s, f
    {"prediction": "I am not sure.", "answer": "#### 4"},  # neither
]

DROP_ROWS = [
    {"prediction": "So the answer is 50.6.", "answers": ["50.6", "49.7"]},  # 1, 1
    {"prediction": "the Bears", "answers": ["Chicago Bears"]},  # 0, 0.67
    {"prediction": ["Smith"], "answers": [["Smith", "Jones"]]},  # 0, 0.5
    {"prediction": "So the answer is 8.\nPassage: x. So the answer is 7.", "answers": [["7"]]},
]


def test_score_file_gsm8k(tmp_path):
    out = score_file("gsm8k", _write(tmp_path / "p.jsonl", GSM8K_ROWS))
    assert out == {"n": 5, "strict": 3 / 5, "flexible": 3 / 5}
    assert out == score_gsm8k(GSM8K_ROWS)
    assert score_file("gsm8k", _write(tmp_path / "p.jsonl.gz", GSM8K_ROWS)) == out


def test_score_file_drop(tmp_path):
    out = score_file("drop", _write(tmp_path / "p.jsonl", DROP_ROWS))
    assert out["n"] == 4
    assert out["em"] == pytest.approx(1 / 4)
    assert out["f1"] == pytest.approx((1 + 0.67 + 0.5 + 0) / 4)  # last: text after the stop


@pytest.mark.parametrize(
    ("kind", "bad", "match"),
    [
        ("gsm8k", {"prediction": 7, "answer": 7}, "line 4: 'prediction' must be the generated"),
        ("gsm8k", {"prediction": "7", "answer": "seven"}, "line 4: 'answer' 'seven' has no num"),
        ("gsm8k", {"prediction": "7", "answer": None}, "line 4: 'answer' must be a number"),
        ("gsm8k", {"prediction": "7"}, "line 4: missing key 'answer'"),
        ("drop", {"prediction": "7", "answers": "7"}, "line 4: 'answers' must be a non-empty"),
        ("drop", {"prediction": {"a": 1}, "answers": ["7"]}, "line 4: 'prediction' must be"),
        ("drop", {"prediction": "7", "answer": ["7"]}, "line 4: missing key 'answers'"),
        ("drop", "[1, 2]", "line 4: expected a JSON object"),
        ("drop", '{"prediction": ', "line 4: not valid JSON"),
    ],
)
def test_score_file_errors_name_file_and_line(tmp_path, kind, bad, match):
    good = GSM8K_ROWS[0] if kind == "gsm8k" else DROP_ROWS[0]
    path = _write(tmp_path / "preds.jsonl", [good, "", good, bad, good])
    with pytest.raises(InputError, match=match) as e:
        score_file(kind, path)
    assert "preds.jsonl" in str(e.value)


def test_score_file_empty_missing_unknown(tmp_path):
    with pytest.raises(InputError, match="no records"):
        score_file("gsm8k", _write(tmp_path / "empty.jsonl", [""]))
    with pytest.raises(InputError, match="file not found"):
        score_file("drop", tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="unknown score kind"):
        score_file("squad", _write(tmp_path / "p.jsonl", DROP_ROWS))


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="selfimprove")
    add_score_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_run_score_prints_one_json_object(tmp_path, capsys):
    path = _write(tmp_path / "p.jsonl", GSM8K_ROWS)
    out_file = tmp_path / "metrics" / "score.json"
    args = _parse(["score", "gsm8k", str(path), "--output", str(out_file)])
    assert args.func is run_score
    assert run_score(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"n": 5, "strict": 0.6, "flexible": 0.6}
    assert captured.out.count("\n") == 1 and captured.err == ""
    assert json.loads(out_file.read_text()) == {"n": 5, "strict": 0.6, "flexible": 0.6}


def test_run_score_error_goes_to_stderr_exit_2(tmp_path, capsys):
    path = _write(tmp_path / "p.jsonl", [DROP_ROWS[0], {"prediction": 1, "answers": ["1"]}])
    out_file = tmp_path / "score.json"
    assert run_score(_parse(["score", "drop", str(path), "--output", str(out_file)])) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and "p.jsonl line 2" in captured.err
    assert not out_file.exists()
    with pytest.raises(SystemExit):
        _parse(["score", "squad", str(path)])


def test_cli_main_wires_score(tmp_path, capsys):
    cli = pytest.importorskip("selfimprove.cli")
    path = _write(tmp_path / "p.jsonl", DROP_ROWS[:1])
    assert cli.main(["score", "drop", str(path)]) == 0
    assert json.loads(capsys.readouterr().out) == {"n": 1, "em": 1.0, "f1": 1.0}


# --------------------------------------------------------------------------- evaluate modules


def test_evaluate_gsm8k_module_matches_score_file(tmp_path):
    metric = load_metric("gsm8k")
    got = metric.compute(
        predictions=[r["prediction"] for r in GSM8K_ROWS],
        references=[r["answer"] for r in GSM8K_ROWS],
    )
    assert got == score_file("gsm8k", _write(tmp_path / "p.jsonl", GSM8K_ROWS))


def test_evaluate_drop_module_matches_score_file(tmp_path):
    import evaluate

    recs = generate_drop(60, seed=2)
    rows = []
    for i, r in enumerate(recs):
        gold = r["answers"][0]
        if i % 4 == 0:
            pred = f"Let me see. So the answer is {' and '.join(gold)}."
        elif i % 4 == 1:
            pred = list(gold)
        elif i % 4 == 2:
            pred = "So the answer is 3."
        else:
            pred = [gold[0], "Nobody"]
        answers = [a if len(a) > 1 or i % 2 else a[0] for a in r["answers"]]  # mixed shapes
        rows.append({"prediction": pred, "answers": answers})
    expected = score_file("drop", _write(tmp_path / "p.jsonl", rows))
    assert 0 < expected["em"] < 1 and 0 < expected["f1"] < 1

    by_path = evaluate.load(str(metric_module_path("drop")), keep_in_memory=True)
    for metric in (load_metric("drop"), by_path):
        got = metric.compute(
            predictions=[r["prediction"] for r in rows], references=[r["answers"] for r in rows]
        )
        assert got == pytest.approx(expected)
    # incremental add/add_batch give the same numbers
    metric = load_metric("drop")
    metric.add(prediction=rows[0]["prediction"], reference=rows[0]["answers"])
    metric.add_batch(
        predictions=[r["prediction"] for r in rows[1:]],
        references=[r["answers"] for r in rows[1:]],
    )
    assert metric.compute() == pytest.approx(expected)


def test_evaluate_drop_module_rejects_bad_shapes():
    metric = load_metric("drop")
    with pytest.raises(TypeError, match="reference must be a non-empty list"):
        metric.compute(predictions=["7"], references=["7"])
    with pytest.raises(TypeError, match="prediction"):
        metric.compute(predictions=[7], references=[["7"]])


def test_load_metric_unknown():
    with pytest.raises(ValueError, match="unknown metric"):
        load_metric("squad")


# ------------------------------------------------- cross-check with lm-evaluation-harness

# lm-evaluation-harness GSM8K filters, written here as data (gsm8k.yaml / gsm8k-cot.yaml):
LM_STRICT_HASH = r"#### (\-?[0-9\.\,]+)"  # "strict-match" of gsm8k (first match)
LM_STRICT_COT = r"The answer is (\-?[0-9\.\,]+)."  # "strict-match" of gsm8k_cot (first match)
LM_FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"  # "flexible-extract" (last match)
LM_IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]  # exact_match regexes_to_ignore


def _lm_filter(text: str, regex: str, group_select: int) -> str:
    matches = re.findall(regex, text)
    if not matches:
        return "[invalid]"
    m = matches[group_select]
    if isinstance(m, tuple):
        m = [x for x in m if x][0]
    return m.strip()


def _lm_value(extracted: str) -> str | None:
    """What lm-eval compares (after regexes_to_ignore), as our normalized number."""
    if extracted == "[invalid]":
        return None
    for r in LM_IGNORE:
        extracted = re.sub(r, "", extracted)
    return normalize_number(extracted)


def lm_strict(text: str) -> str | None:
    regex = LM_STRICT_HASH if "####" in text else LM_STRICT_COT
    return _lm_value(_lm_filter(text, regex, 0))


def lm_flexible(text: str) -> str | None:
    return _lm_value(_lm_filter(text, LM_FLEXIBLE, -1))


AGREE = [
    "There are 15 trees originally. Then there were 21. So 21 - 15 = 6. The answer is 6.",
    "So in total they had 32 + 42 = 74. After eating 35, 74 - 35 = 39. The answer is 39.\n\n",
    "She sells 16 - 3 - 4 = 9 eggs and makes 9 * 2 = 18 dollars. The answer is 18.",
    "Natalia sold 48 / 2 = 24 clips in May.\n#### 72",
    "The total is 1,000 + 600 = 1,600.\n#### 1,600",
    "It drops by 3 degrees. The answer is -3.",
    "Half of 1 is 0.5. The answer is 0.5.",
    "The bill is 1,234.50 dollars. The answer is 1,234.50.",
    "5 + 4 = 9. The answer is 9.",
    "The answer is 18 dollars.",
    "He has 5 apples and buys 3 more, so he has 8 apples",
    "9 * 2 = $18 a day",
    "It takes 3.5 hours.",
    "The final count is 1,000,000 grains",
    "The temperature is -7 degrees",
    "I do not know",
    "Weng earns 12 / 60 = 0.2 per minute. 0.2 * 50 = 10. The answer is 10.",
]

# Known pitfalls of the lm-eval regexes, where we differ on purpose (our value is the right one).
PITFALLS = [
    # "The answer is (...)." needs one more character after the number: gives "1"
    ("6 + 12 = 18. The answer is 18", "strict", "18"),
    ("6 + 12 = 18. The answer is 18\nQ: How many legs do 2 cats have?", "strict", "18"),
    # a "$" right after "The answer is" is not matched at all
    ("9 * 2 = 18. The answer is $18.", "strict", "18"),
    # the model continues with a new exemplar: flexible takes its last number
    (
        "9 * 2 = 18. The answer is 18.\n\nQ: Tom has 3 apples and eats 1. A: 3 - 1 = 2.",
        "flex",
        "18",
    ),
]


@pytest.mark.parametrize("text", AGREE)
def test_extraction_agrees_with_lm_eval(text):
    assert extract_strict(text) == lm_strict(text)
    assert extract_flexible(text) == lm_flexible(text)


@pytest.mark.parametrize(("text", "which", "ours"), PITFALLS)
def test_known_lm_eval_pitfalls(text, which, ours):
    mine, theirs = (
        (extract_strict(text), lm_strict(text))
        if which == "strict"
        else (extract_flexible(text), lm_flexible(text))
    )
    assert mine == ours
    assert theirs != ours


def test_agreement_cases_cover_both_outcomes():
    strict = [lm_strict(t) for t in AGREE]
    assert any(v is None for v in strict) and sum(v is not None for v in strict) >= 10
