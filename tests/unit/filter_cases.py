"""Hand-made refine-stage records and filter settings for the characterization test
(tests/unit/test_filter_golden.py): every method's filter outputs on them, byte for byte."""

from __future__ import annotations

import copy


def _records() -> list[dict]:
    recs = []
    for i in range(7):
        k = 2 + i % 5
        a, b = 3 + i, 2
        right, wrong = str(a + b), str(a * b)
        texts = [
            f"{a} + {b} = {right}. The answer is {right}.",
            f"{a} + {b} = {right}. The answer is {right}.",
            f"{a} * {b} = {wrong}. The answer is {wrong}. Extra words.",
            "I don't know.",
            f"{b} + {a} = {right}",
            f"The answer is {int(right) - 1}.",
        ]
        answers = [right, right, wrong, None, right, right]
        paths = texts[:k]
        ans = answers[:k]
        gold = str(5 + i) if i % 3 else str(6 + i)
        rec = {
            "id": f"q{i}" if i != 4 else 4,
            "question": f"Tom has {3 + i} apples and buys 2. How many?",
            "paths": paths,
            "answers": ans,
            "refined_paths": [p + " Checked." if j % 2 else p for j, p in enumerate(paths)],
            "refined_answers": [x if j != 2 else right for j, x in enumerate(ans)],
            "final_verdicts": [[True, None, False][(i + j) % 3] for j in range(k)],
            "gold": gold,
            "correct": [a == gold for a in ans],
            "rationalization": (
                f"So {3 + i} * 2 = {6 + 2 * i}. The answer is {6 + 2 * i}." if i % 3 == 0 else None
            ),
            "rationalization_correct": i % 3 == 0 and i != 6,
        }
        recs.append(rec)
    return recs


RECORDS = _records()

#: name -> (FilterConfig kwargs, method knobs as the old keyword arguments, seed)
CASES = {
    "default": ({}, {}, 0),
    "min0_all": ({"min_agreement": 0.0, "max_paths_per_question": 0}, {}, 3),
    "strict": (
        {
            "min_agreement": 0.8,
            "dedupe": False,
            "n_shots": 1,
            "formats": {
                "fewshot_cot": False,
                "fewshot_direct": True,
                "zeroshot_cot": True,
                "zeroshot_direct": False,
            },
        },
        {"require_consistency": False, "rest_em_max_per_question": 1},
        7,
    ),
}


def records() -> list[dict]:
    return copy.deepcopy(RECORDS)
