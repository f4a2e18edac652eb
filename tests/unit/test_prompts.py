from __future__ import annotations

import pytest

from selfimprove.core.answers import extract_answer, extract_strict
from selfimprove.core.prompts import (
    GSM8K_EXEMPLARS,
    STYLES,
    build_prompt,
    direct_completion,
    is_cot,
)

Q = "Tom has 3 apples and buys 2 more. How many apples does he have?"


def test_exemplars_are_the_eight_of_wei_et_al() -> None:
    assert len(GSM8K_EXEMPLARS) == 8
    starts = [
        "There are 15 trees in the grove.",
        "If there are 3 cars in the parking lot",
        "Leah had 32 chocolates",
        "Jason had 20 lollipops.",
        "Shawn has five toys.",
        "There were nine computers in the server room.",
        "Michael had 58 golf balls.",
        "Olivia has $23.",
    ]
    answers = ["6", "5", "39", "8", "9", "29", "33", "8"]
    for ex, start, answer in zip(GSM8K_EXEMPLARS, starts, answers, strict=True):
        assert set(ex) == {"question", "rationale", "answer"}
        assert ex["question"].startswith(start)
        assert ex["answer"] == answer
        assert "The answer is" not in ex["rationale"]
        assert ex["rationale"] == ex["rationale"].strip()
        assert "  " not in ex["question"] + ex["rationale"]  # no doubled spaces from joining
        # the exemplar's own text gives its answer through our extractor
        assert extract_answer(f"{ex['rationale']} The answer is {ex['answer']}.") == answer
    # a few exact sentences from the paper (Wei et al. 2022, Table 20)
    assert GSM8K_EXEMPLARS[5]["rationale"].endswith(
        "So 5 * 4 = 20 computers were added. 9 + 20 is 29."
    )
    assert GSM8K_EXEMPLARS[7]["rationale"] == (
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. "
        "So she has 23 - 15 dollars left. 23 - 15 is 8."
    )


def test_fewshot_cot() -> None:
    prefix, suffix = build_prompt(Q, "fewshot_cot", n_shots=8)
    assert suffix == f"Q: {Q}\nA:"
    blocks = prefix.split("\n\n")
    assert blocks[-1] == ""  # prefix ends with a blank line
    assert len(blocks) == 9
    ex = GSM8K_EXEMPLARS[2]
    assert blocks[2] == f"Q: {ex['question']}\nA: {ex['rationale']} The answer is 39."
    assert prefix.startswith("Q: There are 15 trees in the grove.")
    assert prefix.count("Q: ") == 8 and prefix.count("The answer is") == 8


def test_fewshot_direct() -> None:
    prefix, suffix = build_prompt(Q, "fewshot_direct", n_shots=3)
    assert suffix == f"Q: {Q}\nA:"
    expected = "".join(
        f"Q: {ex['question']}\nA: The answer is {ex['answer']}.\n\n" for ex in GSM8K_EXEMPLARS[:3]
    )
    assert prefix == expected


@pytest.mark.parametrize("n", [0, 1, 4, 8])
def test_n_shots(n: int) -> None:
    for style in ("fewshot_cot", "fewshot_direct"):
        prefix, _ = build_prompt(Q, style, n_shots=n)
        assert prefix.count("Q: ") == n
    assert build_prompt(Q, "fewshot_cot", n_shots=0)[0] == ""


@pytest.mark.parametrize("n", [-1, 9])
def test_n_shots_out_of_range(n: int) -> None:
    with pytest.raises(ValueError, match="n_shots"):
        build_prompt(Q, "fewshot_cot", n_shots=n)


def test_zeroshot() -> None:
    assert build_prompt(Q, "zeroshot_cot") == ("", f"Q: {Q}\nA: Let's think step by step.")
    assert build_prompt(Q, "zeroshot_direct") == ("", f"Q: {Q}\nA:")
    # n_shots does not matter for zero-shot styles
    assert build_prompt(Q, "zeroshot_cot", n_shots=99) == build_prompt(Q, "zeroshot_cot")


@pytest.mark.parametrize("style", STYLES)
def test_prefix_does_not_depend_on_question(style: str) -> None:
    p1, s1 = build_prompt("What is 1 + 1?", style, 4)
    p2, s2 = build_prompt("A farmer has 12 cows and sells 5. How many are left?", style, 4)
    assert p1 == p2
    assert s1 != s2
    assert "1 + 1" in s1


def test_question_is_stripped() -> None:
    assert build_prompt(f"  {Q}\n", "zeroshot_direct")[1] == f"Q: {Q}\nA:"


def test_completion_after_prompt_is_extracted_not_the_exemplars() -> None:
    # sampled text that runs on into a new exemplar keeps its own answer
    prefix, suffix = build_prompt(Q, "fewshot_cot", 8)
    completion = " 3 + 2 = 5. The answer is 5.\n\n" + prefix
    assert extract_strict(completion) == "5"
    assert extract_answer(" 3 + 2 = 5\n\n" + prefix) == "5"


def test_unknown_style() -> None:
    with pytest.raises(
        ValueError, match="fewshot_cot, fewshot_direct, zeroshot_cot, zeroshot_direct"
    ):
        build_prompt(Q, "few_shot")
    with pytest.raises(ValueError, match="unknown prompt style"):
        is_cot("cot")


def test_direct_completion_and_is_cot() -> None:
    assert direct_completion("18") == " The answer is 18."
    assert extract_strict(direct_completion("-1600")) == "-1600"
    assert [is_cot(s) for s in STYLES] == [True, False, True, False]
