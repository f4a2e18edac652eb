from __future__ import annotations

import copy
import json

import pytest
from pydantic import ValidationError

from selfimprove.config.methods import FilterConfig, FormatsConfig
from selfimprove.core.io import InputError
from selfimprove.core.prompts import build_prompt
from selfimprove.methods.filter import filter_samples, finalize_path

ALL_OFF = dict.fromkeys(["fewshot_cot", "fewshot_direct", "zeroshot_cot", "zeroshot_direct"], False)


def formats(**on: bool) -> FormatsConfig:
    return FormatsConfig(**{**ALL_OFF, **on})


def sample(qid: str, answers: list[str | None], paths: list[str] | None = None) -> dict:
    if paths is None:
        paths = [
            f"Path {i} of {qid}. The answer is {a}." if a is not None else f"Path {i}: no idea."
            for i, a in enumerate(answers)
        ]
    return {"id": qid, "question": f"Question {qid}?", "paths": paths, "answers": answers}


def test_config_defaults_and_validation() -> None:
    cfg = FilterConfig()
    assert (cfg.min_agreement, cfg.max_paths_per_question, cfg.dedupe, cfg.n_shots) == (
        0.5,
        2,
        True,
        2,
    )
    assert cfg.formats.enabled() == [
        "fewshot_cot",
        "fewshot_direct",
        "zeroshot_cot",
        "zeroshot_direct",
    ]
    for field in ("min_agreement", "max_paths_per_question", "dedupe", "n_shots", "formats"):
        assert FilterConfig.model_fields[field].description
    for field in FormatsConfig.model_fields.values():
        assert field.description
    for bad in (
        {"min_agreement": 1.5},
        {"min_agreement": -0.1},
        {"max_paths_per_question": -1},
        {"n_shots": 9},
        {"unknown_key": 1},
        {"formats": {"fewshot_cot": True, "typo": True}},
    ):
        with pytest.raises(ValidationError):
            FilterConfig(**bad)
    with pytest.raises(ValidationError, match="at least one of"):
        FormatsConfig(**ALL_OFF)


def test_vote_selection_and_rationale_records() -> None:
    samples = [
        sample("a", ["5", "5", "6", None]),  # 0.5 -> selected at 0.5
        sample("b", ["1", "2", "3", "4"]),  # 0.25 -> not selected
        sample("c", [None, None, None]),  # no majority
        sample("d", ["7", "7", "7"]),  # 1.0
    ]
    cfg = FilterConfig(min_agreement=0.5, max_paths_per_question=4)
    rationales, train, stats = filter_samples(samples, cfg)
    assert [r["id"] for r in rationales] == ["a", "b", "c", "d"]
    assert [r["majority"] for r in rationales] == ["5", "1", None, "7"]
    assert [r["agreement"] for r in rationales] == [0.5, 0.25, 0.0, 1.0]
    assert [r["selected"] for r in rationales] == [True, False, False, True]
    assert rationales[0]["kept"] == [True, True, False, False]
    assert rationales[1]["kept"] == [False] * 4  # not selected: nothing kept
    assert rationales[2]["kept"] == [False] * 3
    assert rationales[3]["kept"] == [True] * 3
    assert rationales[0]["paths"] == samples[0]["paths"]
    assert rationales[0]["answers"] == samples[0]["answers"]
    assert {t["id"] for t in train} == {"a", "d"}
    assert stats["n_questions"] == 4
    assert stats["n_selected"] == 2
    assert stats["selected_fraction"] == 0.5
    assert stats["n_paths"] == 14
    assert stats["n_kept_paths"] == 5
    assert stats["mean_agreement"] == pytest.approx((0.5 + 0.25 + 0 + 1) / 4, abs=1e-4)
    assert stats["no_answer_rate"] == pytest.approx(4 / 14, abs=1e-4)
    assert stats["agreement_histogram"] == [1, 0, 1, 0, 0, 1, 0, 0, 0, 1]
    # per format: 5 kept paths x 2 CoT formats + 2 questions x 2 direct formats
    assert stats["n_train_fewshot_cot"] == 5
    assert stats["n_train_zeroshot_cot"] == 5
    assert stats["n_train_fewshot_direct"] == 2
    assert stats["n_train_zeroshot_direct"] == 2
    assert stats["n_train_examples"] == len(train) == 14
    json.dumps(stats)  # JSON-serializable (written to filter.json)
    json.dumps(rationales)


@pytest.mark.parametrize(
    ("min_agreement", "selected"),
    [
        (0.0, [True, True, True, False]),  # the paper: any majority is enough
        (0.25, [True, True, True, False]),
        (0.5, [True, True, False, False]),
        (0.51, [True, False, False, False]),
        (1.0, [True, False, False, False]),
    ],
)
def test_min_agreement_threshold(min_agreement: float, selected: list[bool]) -> None:
    samples = [
        sample("full", ["3", "3", "3", "3"]),
        sample("half", ["3", "3", "4", None]),
        sample("quarter", ["1", "2", "3", None]),
        sample("none", [None, None, None, None]),
    ]
    rationales, _, stats = filter_samples(samples, FilterConfig(min_agreement=min_agreement))
    assert [r["selected"] for r in rationales] == selected
    assert stats["n_selected"] == sum(selected)


def test_cot_and_direct_examples_content() -> None:
    paths = ["3 + 2 = 5. The answer is 5.", "2 + 3 = 5, so 5", "It is 6. The answer is 6."]
    s = {"id": "q", "question": " Tom has 3 and gets 2. How many? ", "paths": paths,
         "answers": ["5", "5", "6"]}  # fmt: skip
    cfg = FilterConfig(min_agreement=0.0, n_shots=2)
    _, train, _ = filter_samples([s], cfg)
    by_format: dict[str, list[dict]] = {}
    for t in train:
        assert set(t) == {"id", "format", "prompt", "completion"}
        by_format.setdefault(t["format"], []).append(t)
    assert [t["completion"] for t in by_format["fewshot_cot"]] == [
        " 3 + 2 = 5. The answer is 5.",
        " 2 + 3 = 5, so 5. The answer is 5.",  # answer sentence appended
    ]
    assert [t["completion"] for t in by_format["zeroshot_cot"]] == [
        t["completion"] for t in by_format["fewshot_cot"]
    ]
    assert [t["completion"] for t in by_format["fewshot_direct"]] == [" The answer is 5."]
    assert [t["completion"] for t in by_format["zeroshot_direct"]] == [" The answer is 5."]
    for fmt, examples in by_format.items():
        prefix, suffix = build_prompt(s["question"], fmt, 2)
        assert all(t["prompt"] == prefix + suffix for t in examples)
    assert by_format["zeroshot_cot"][0]["prompt"] == (
        "Q: Tom has 3 and gets 2. How many?\nA: Let's think step by step."
    )
    assert by_format["fewshot_cot"][0]["prompt"].count("Q: ") == 3
    # order follows the input, formats in a fixed order per question
    assert [t["format"] for t in train] == [
        "fewshot_cot", "fewshot_cot", "fewshot_direct", "zeroshot_cot", "zeroshot_cot",
        "zeroshot_direct",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("on", "expected_formats"),
    [
        ({"fewshot_cot": True}, {"fewshot_cot": 3}),
        ({"zeroshot_direct": True}, {"zeroshot_direct": 1}),
        ({"fewshot_direct": True, "zeroshot_cot": True}, {"fewshot_direct": 1, "zeroshot_cot": 3}),
    ],
)
def test_enabled_formats_only(on: dict[str, bool], expected_formats: dict[str, int]) -> None:
    cfg = FilterConfig(min_agreement=0.0, max_paths_per_question=0, formats=formats(**on))
    _, train, stats = filter_samples([sample("q", ["4", "4", "4", "1"])], cfg)
    counts: dict[str, int] = {}
    for t in train:
        counts[t["format"]] = counts.get(t["format"], 0) + 1
    assert counts == expected_formats
    for fmt in ("fewshot_cot", "fewshot_direct", "zeroshot_cot", "zeroshot_direct"):
        assert stats[f"n_train_{fmt}"] == expected_formats.get(fmt, 0)


@pytest.mark.parametrize(("cap", "n_kept"), [(0, 6), (1, 1), (4, 4), (6, 6), (10, 6)])
def test_max_paths_per_question(cap: int, n_kept: int) -> None:
    s = sample("q", ["9"] * 6 + ["8"])
    cfg = FilterConfig(
        min_agreement=0.0, max_paths_per_question=cap, formats=formats(fewshot_cot=True)
    )
    rationales, train, stats = filter_samples([s], cfg)
    assert len(train) == n_kept == stats["n_kept_paths"]
    # the first agreeing paths, in input order
    assert rationales[0]["kept"] == [True] * n_kept + [False] * (7 - n_kept)
    assert [t["completion"] for t in train] == [" " + p for p in s["paths"][:n_kept]]
    assert stats["n_agreeing_paths"] == 6


def test_dedupe() -> None:
    paths = [
        "A. The answer is 2.",
        " A. The answer is 2.\n",
        "B. The answer is 2.",
        "A. The answer is 2.",
    ]
    s = {"id": "q", "question": "?", "paths": paths, "answers": ["2"] * 4}
    on = formats(zeroshot_cot=True)
    rationales, train, stats = filter_samples(
        [s], FilterConfig(min_agreement=0.0, max_paths_per_question=0, formats=on)
    )
    assert rationales[0]["kept"] == [True, False, True, False]
    assert [t["completion"] for t in train] == [" A. The answer is 2.", " B. The answer is 2."]
    assert stats["n_duplicate_paths"] == 2
    # duplicates also do not use up the cap
    _, train, _ = filter_samples(
        [s], FilterConfig(min_agreement=0.0, max_paths_per_question=2, formats=on)
    )
    assert len(train) == 2
    # dedupe off keeps them all
    rationales, train, _ = filter_samples(
        [s], FilterConfig(min_agreement=0.0, max_paths_per_question=0, dedupe=False, formats=on)
    )
    assert rationales[0]["kept"] == [True] * 4
    assert [t["completion"] for t in train][1] == " A. The answer is 2."


def test_path_cleanup_and_contradictions() -> None:
    paths = [
        "9 * 2 = 18. The answer is $18. Janet is happy.\n\nQ: Next question? A: The answer is 3.",
        "9 * 2 = 18",
        "The answer is 17. Oops, 18",  # its answer sentence says 17: not trained on
        "",
    ]
    s = {"id": 1, "question": "?", "paths": paths, "answers": ["18", "18", "18", "18"]}
    cfg = FilterConfig(
        min_agreement=0.0, max_paths_per_question=0, formats=formats(fewshot_cot=True)
    )
    rationales, train, stats = filter_samples([s], cfg)
    assert [t["completion"] for t in train] == [
        " 9 * 2 = 18. The answer is $18.",
        " 9 * 2 = 18. The answer is 18.",
    ]
    assert rationales[0]["kept"] == [True, True, False, False]
    assert rationales[0]["id"] == 1 and train[0]["id"] == 1
    assert stats["n_unusable_paths"] == 2


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("The answer is 18.", "The answer is 18."),
        ("The answer is 18", "The answer is 18."),
        ("The answer is 18\n", "The answer is 18."),
        ("The answer is **18**. Great.", "The answer is **18**."),
        ("So \\boxed{18} yes. The answer is 18 dollars.", "So \\boxed{18} yes. The answer is 18."),
        ("6 + 12 = 18!", "6 + 12 = 18! The answer is 18."),
        ("#### 18", "#### 18."),
        ("  ", None),
        ("\n\nQ: The answer is 18.", None),
    ],
)
def test_finalize_path(path: str, expected: str | None) -> None:
    assert finalize_path(path, "18") == expected


def test_deterministic_and_input_untouched() -> None:
    samples = [sample(f"q{i}", [str(i % 3), str(i % 2), str(i % 3), None]) for i in range(12)]
    before = copy.deepcopy(samples)
    out1 = filter_samples(samples, FilterConfig(min_agreement=0.0))
    out2 = filter_samples(copy.deepcopy(samples), FilterConfig(min_agreement=0.0))
    assert out1 == out2
    assert samples == before


def test_empty_input() -> None:
    rationales, train, stats = filter_samples([], FilterConfig())
    assert rationales == [] and train == []
    assert stats["n_questions"] == 0
    assert stats["selected_fraction"] == 0.0
    assert stats["mean_agreement"] == 0.0
    assert stats["no_answer_rate"] == 0.0
    assert stats["agreement_histogram"] == [0] * 10


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"id": "x", "question": "?", "paths": ["a"]}, "sample 1: missing key 'answers'"),
        ({"id": "x", "question": "?", "paths": ["a", "b"], "answers": ["1"]}, "2 paths but 1"),
        ({"id": "x", "question": "?", "paths": "a", "answers": ["1"]}, "'paths' must be a list"),
        ({"id": "x", "question": "?", "paths": ["a"], "answers": [1]}, "'answers' must be a list"),
        ({"id": "x", "question": 3, "paths": [], "answers": []}, "'question' must be a string"),
        ({"id": None, "question": "?", "paths": [], "answers": []}, "'id' must be"),
    ],
)
def test_bad_samples(bad: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        filter_samples([bad], FilterConfig())


def test_duplicate_ids() -> None:
    with pytest.raises(InputError, match="sample 2: id 'a' appears twice"):
        filter_samples([sample("a", ["1"]), sample("a", ["1"])], FilterConfig())
