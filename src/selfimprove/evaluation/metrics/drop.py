"""DROP exact match and F1, following the official AllenNLP ``drop_eval`` algorithm.

Written from the published algorithm (Dua et al., 2019; allenai/allennlp-reading-comprehension
``drop_eval.py``), not copied. The behaviour is meant to be the same, quirks included:

* An answer is a list of spans (a bare string is one span).
* Each span is split into tokens on single spaces and hyphens. Each token is lowercased; unless
  the token parses as a float, every ASCII punctuation character is removed from it; a token that
  parses as a float is written as ``str(float(token))`` (so ``7`` == ``7.0``); the articles
  a/an/the are removed; whitespace is collapsed. Empty tokens are dropped and the rest joined by
  one space: that is the normalized span. Its set of words is the span's bag.
* A gold/predicted span pair scores the bag-of-words F1 of the two bags, but 0 when the gold
  bag has numbers and none of them is in the predicted bag ("numbers must match").
* Spans are paired one-to-one by the assignment that maximizes the total score
  (``scipy.optimize.linear_sum_assignment``); F1 is the mean of the paired scores over
  ``max(len(gold), len(predicted))`` slots (unpaired spans count 0), rounded to 2 decimals.
* EM is 1 when the normalized spans, as sets, are equal and the lists have the same length.
* With several gold alternatives, EM and F1 are each the max over the alternatives; an
  alternative whose first span is blank is skipped.
"""

from __future__ import annotations

import re
import string

from selfimprove.core.answers import cut_at_stop
from selfimprove.core.io import InputError
from selfimprove.core.prompts.drop import DROP_STOP_SEQUENCES

__all__ = [
    "DROP_STOP_SEQUENCES",
    "MAX_SPANS",
    "alignment_scores",
    "drop_em_f1",
    "drop_record_problem",
    "extract_drop_answer",
    "normalize_span",
    "score_drop",
    "score_drop_one",
    "split_spans",
]

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_TOKEN_SPLIT = re.compile(r"[ -]")


def _as_float_text(token: str) -> str | None:
    """``str(float(token))`` when ``token`` parses as a float (Python rules), else None."""
    try:
        return str(float(token))
    except ValueError:
        return None


def _normalize_token(token: str) -> str:
    token = token.lower()
    if _as_float_text(token) is None:  # punctuation stays only inside a number ("50.6")
        token = "".join(ch for ch in token if ch not in _PUNCT)
    number = _as_float_text(token)  # also "(7)" -> "7" -> "7.0"
    if number is not None:
        token = number
    token = _ARTICLES.sub(" ", token)
    return " ".join(token.split())


def normalize_span(span: str) -> str:
    """Normalize one answer span the DROP way.

    >>> normalize_span("The  Green-Bay Packers!")
    'green bay packers'
    >>> normalize_span("7 touchdowns"), normalize_span("7.0 Touchdowns.")
    ('7.0 touchdowns', '7.0 touchdowns')
    >>> normalize_span("50.6"), normalize_span("1,700 francs")
    ('50.6', '1700.0 francs')
    """
    parts = (_normalize_token(tok) for tok in _TOKEN_SPLIT.split(span))
    return " ".join(p for p in parts if p.strip()).strip()


def _is_number(word: str) -> bool:
    return _as_float_text(word) is not None


def _bag_f1(predicted: set[str], gold: set[str]) -> float:
    common = len(predicted & gold)
    precision = common / len(predicted) if predicted else 1.0
    recall = common / len(gold) if gold else 1.0
    if precision == 0.0 and recall == 0.0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


#: most spans in one answer (a prediction, or one gold alternative); DROP answers have a few,
#: and the one-to-one alignment of two answers is a (spans x spans) assignment problem
MAX_SPANS = 1000


def _spans(answer: str | list[str] | tuple[str, ...]) -> list[str]:
    if isinstance(answer, str):
        return [answer]
    if isinstance(answer, (list, tuple)) and all(isinstance(s, str) for s in answer):
        if len(answer) > MAX_SPANS:
            raise ValueError(
                f"an answer of {len(answer)} spans; at most {MAX_SPANS} are scored (DROP answers "
                "have a few)"
            )
        return list(answer) or [""]
    raise TypeError(f"a DROP answer must be a string or a list of strings, got {answer!r}")


def alignment_scores(
    pred_bags: list[set[str]], gold_bags: list[set[str]]
) -> tuple[dict[tuple[int, int], float], int]:
    """The non-zero pair scores ``{(gold i, predicted j): score}`` of two answers' bags, and
    how many pairs were compared.

    Only pairs that can score above 0 are compared: those sharing a word (found through an
    index of the gold words), and empty with empty (F1 1). Every other pair scores 0 (no common
    word). The numbers of each bag are found once, not once per pair: at most
    ``len(pred) x len(gold)`` comparisons, each linear in the bags' sizes.

    >>> alignment_scores([{"a", "b"}, {"c"}], [{"a"}, {"d"}])
    ({(0, 0): 0.6666666666666666}, 1)
    """
    gold_numbers = [{w for w in g if _is_number(w)} for g in gold_bags]
    pred_numbers = [{w for w in p if _is_number(w)} for p in pred_bags]
    index: dict[str, list[int]] = {}
    empty_gold = []
    for i, g in enumerate(gold_bags):
        for w in g:
            index.setdefault(w, []).append(i)
        if not g:
            empty_gold.append(i)
    scores: dict[tuple[int, int], float] = {}
    compared = 0
    for j, p in enumerate(pred_bags):
        candidates = {i for w in p for i in index.get(w, ())} if p else set(empty_gold)
        for i in sorted(candidates):
            compared += 1
            if gold_numbers[i] and not gold_numbers[i] & pred_numbers[j]:
                continue  # numbers must match
            score = _bag_f1(p, gold_bags[i])
            if score:
                scores[i, j] = score
    return scores, compared


def _em_f1_one(predicted: list[str], gold: list[str]) -> tuple[float, float]:
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    pred_norm = [normalize_span(s) for s in predicted]
    gold_norm = [normalize_span(s) for s in gold]
    em = 1.0 if set(pred_norm) == set(gold_norm) and len(pred_norm) == len(gold_norm) else 0.0

    pred_bags = [set(s.split()) for s in pred_norm]
    gold_bags = [set(s.split()) for s in gold_norm]
    pairs, _ = alignment_scores(pred_bags, gold_bags)
    best = np.zeros(max(len(gold_bags), len(pred_bags)))
    if pairs:
        # the assignment over the rows and columns that can score: the others add 0
        rows = sorted({i for i, _ in pairs})
        cols = sorted({j for _, j in pairs})
        scores = np.zeros((len(rows), len(cols)))
        row_at = {i: k for k, i in enumerate(rows)}
        col_at = {j: k for k, j in enumerate(cols)}
        for (i, j), score in pairs.items():
            scores[row_at[i], col_at[j]] = score
        for r, c in zip(*linear_sum_assignment(scores, maximize=True), strict=True):
            best[rows[r]] = max(best[rows[r]], scores[r, c])
    return em, float(np.round(best.mean(), 2))


def drop_em_f1(prediction: str | list[str], golds: list[str | list[str]]) -> tuple[float, float]:
    """DROP ``(em, f1)`` of one prediction against gold alternatives (max over alternatives).

    ``prediction`` is one span (a string) or a list of spans. ``golds`` is a list of
    alternatives; each is one span (a string, kept whole even if it reads "A and B") or a list of
    spans.

    >>> drop_em_f1("7", ["7.0"])
    (1.0, 1.0)
    >>> drop_em_f1("the Bears", ["Chicago Bears"])
    (0.0, 0.67)
    >>> drop_em_f1("8", ["7"])  # numbers must match
    (0.0, 0.0)
    >>> drop_em_f1(["Smith"], [["Smith", "Jones"]])  # one of two spans found
    (0.0, 0.5)
    >>> drop_em_f1(["Jones", "Smith"], [["Smith", "Jones"]])
    (1.0, 1.0)
    >>> drop_em_f1("50.6", ["49.7", "50.6"])
    (1.0, 1.0)
    """
    if isinstance(golds, str) or not isinstance(golds, (list, tuple)):
        raise TypeError(f"golds must be a list of alternatives, got {golds!r}")
    predicted = _spans(prediction)
    best_em, best_f1 = 0.0, 0.0
    for alternative in golds:
        gold = _spans(alternative)
        if not gold[0].strip():
            continue
        em, f1 = _em_f1_one(predicted, gold)
        best_em, best_f1 = max(best_em, em), max(best_f1, f1)
    return best_em, best_f1


_ANSWER_IS = re.compile(r"answer is", re.IGNORECASE)
_EDGE_JUNK = ' \t\r\n*`"_'


def extract_drop_answer(text: str) -> str:
    """The answer a chain of thought ends with: the text after the last "answer is".

    The text is first cut at :data:`DROP_STOP_SEQUENCES` (a model that runs on into a new
    "Passage:" must not change its answer). Takes the first non-blank line after the phrase and
    strips whitespace, a leading ":", markdown ``*``, quotes and trailing periods; a decimal
    point inside a number is never cut ("50.6" stays). Without the phrase, the whole (cut)
    text is stripped the same way (direct-answer prompts). An answer that is one number
    decorated with "$" or "%" loses them: the official normalization keeps punctuation only in
    tokens that parse as numbers, so "38.5%" would otherwise become 385.

    >>> extract_drop_answer("He kicked 3 field goals. So the answer is 3.")
    '3'
    >>> extract_drop_answer("So the answer is 50.6.\\n\\nPassage: ...")
    '50.6'
    >>> extract_drop_answer("The answer is: **Tom Brady and Randy Moss**.")
    'Tom Brady and Randy Moss'
    >>> extract_drop_answer("100 - 61.5 = 38.5. So the answer is 38.5%.")
    '38.5'
    >>> extract_drop_answer("$1,250")
    '1,250'
    >>> extract_drop_answer("  Chicago Bears ")
    'Chicago Bears'
    """
    text = cut_at_stop(text, DROP_STOP_SEQUENCES)
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        rest = text[matches[-1].end() :].lstrip(" \t:")
        lines = [ln for ln in rest.splitlines() if ln.strip()]
        answer = lines[0] if lines else ""
    else:
        answer = text
    answer = answer.strip(_EDGE_JUNK).rstrip(".").strip(_EDGE_JUNK)
    lone = _LONE_NUMBER.fullmatch(answer)
    return lone.group("num") if lone else answer


_LONE_NUMBER = re.compile(r"\$?\s?(?P<num>-?\d[\d,]*(?:\.\d+)?)\s?%?")


_SPAN_SEP = re.compile(r"\s*;\s*|\s*,\s+(?:and\s+)?|\s+and\s+")


def split_spans(answer: str) -> list[str]:
    """Split a flat multi-span answer ("A, B and C") into spans; for predictions only.

    Gold answers are never split (a simple-evals gold "A and B" is scored as one span). Commas
    inside numbers ("1,700") do not split.

    >>> split_spans("Tom Brady, Randy Moss and Wes Welker")
    ['Tom Brady', 'Randy Moss', 'Wes Welker']
    >>> split_spans("1,700 francs")
    ['1,700 francs']
    >>> split_spans("")
    []
    """
    return [s.strip() for s in _SPAN_SEP.split(answer) if s.strip()]


def _check_answer_field(value: object) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list)
        and len(value) <= MAX_SPANS
        and all(isinstance(s, str) for s in value)
    )


def score_drop_one(
    prediction: str | list[str], answers: list[str | list[str]]
) -> tuple[float, float]:
    """``(em, f1)`` of one record: a string prediction is raw model text, reduced by
    :func:`extract_drop_answer` to one span; a list is taken as the predicted spans.

    >>> score_drop_one("They kicked 2 field goals. So the answer is 2.", ["2"])
    (1.0, 1.0)
    >>> score_drop_one(["Smith", "Jones"], [["Jones", "Smith"]])
    (1.0, 1.0)
    """
    pred = extract_drop_answer(prediction) if isinstance(prediction, str) else prediction
    return drop_em_f1(pred, answers)


def _shown(value: object) -> str:
    if isinstance(value, list) and len(value) > MAX_SPANS:
        return f"a list of {len(value)}"
    return repr(str(value)[:80])


def drop_record_problem(record: object) -> str | None:
    """What is wrong with a ``{"prediction", "answers"}`` record, or None when it is usable.

    >>> drop_record_problem({"prediction": "7", "answers": ["7", ["A", "B"]]}) is None
    True
    >>> print(drop_record_problem({"prediction": "7", "answers": "7"}))  # doctest: +ELLIPSIS
    'answers' must be a non-empty list of gold alternatives, ... got '7'
    """
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    pred = record.get("prediction")
    if not _check_answer_field(pred):
        return (
            "'prediction' must be a string (model text) or a list of answer spans (strings, "
            f"at most {MAX_SPANS}), got {_shown(pred)}"
        )
    answers = record.get("answers")
    if (
        not isinstance(answers, list)
        or not answers
        or not all(_check_answer_field(a) and a for a in answers)
    ):
        return (
            "'answers' must be a non-empty list of gold alternatives, each a string or a "
            f'non-empty list of at most {MAX_SPANS} span strings (e.g. ["7"] or [["A", "B"]]), '
            f"got {_shown(answers)}"
        )
    return None


def score_drop(records: list[dict]) -> dict:
    """Mean DROP EM and F1 of ``{"prediction", "answers"}`` records (see :func:`score_drop_one`).

    Returns ``{"n", "em", "f1"}``; the means are ``None`` when ``records`` is empty. A malformed
    record raises :class:`~selfimprove.core.io.InputError` naming it (0-based) before anything is
    scored.

    >>> score_drop([
    ...     {"prediction": "So the answer is 50.6.", "answers": ["50.6", "49.7"]},
    ...     {"prediction": "the Bears", "answers": ["Chicago Bears"]},
    ... ])
    {'n': 2, 'em': 0.5, 'f1': 0.835}
    """
    for i, rec in enumerate(records):
        problem = drop_record_problem(rec)
        if problem:
            raise InputError(f"record {i}: {problem}")
    em_sum = f1_sum = 0.0
    for rec in records:
        em, f1 = score_drop_one(rec["prediction"], rec["answers"])
        em_sum += em
        f1_sum += f1
    n = len(records)
    return {"n": n, "em": em_sum / n if n else None, "f1": f1_sum / n if n else None}
