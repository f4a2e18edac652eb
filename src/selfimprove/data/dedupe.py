"""When two questions are the same problem, and taking questions that no other set has claimed.

Two keys (:mod:`selfimprove.data.prepare` keeps every set disjoint under both):

* the text key (:func:`normalize_question`): the same words up to case, punctuation and spacing;
* the numbers key (:func:`question_numbers`): the same template with the same numbers and other
  names is the same problem, so a generated question must not share its number tuple with any
  other question.

A run keeps one ``seen_text`` and one ``seen_numbers`` set; each set of the run claims its
questions in them (:func:`claim`, :func:`take_unique`, :func:`take_real`), so a later set cannot
take them again.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable, Iterable

from selfimprove.core.io import InputError

_NUM_RE = re.compile(r"\d[\d,]*(?:\.\d+)?")

MAX_MISSES = 2000  # consecutive repeats after which a pool counts as used up


def normalize_question(text: str) -> str:
    """Text key for duplicate detection: NFKC, lower case, punctuation and spacing ignored.

    >>> normalize_question("Janet’s ducks  lay 16.5 eggs!")
    'janet s ducks lay 16.5 eggs'
    """
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    return " ".join(re.sub(r"[^0-9a-z.]+|(?<!\d)\.|\.(?!\d)", " ", text).split())


def question_numbers(text: str) -> tuple[str, ...]:
    """The numbers of a question in order (commas dropped): the key for "same problem".

    >>> question_numbers("Jack has 5 stamps. He buys 1,200 more for $0.50 each.")
    ('5', '1200', '0.50')
    """
    return tuple(m.replace(",", "") for m in _NUM_RE.findall(text))


def claim(rec: dict, seen_numbers: set, seen_text: set) -> bool:
    """Claim ``rec`` (its number tuple and its text) unless either is already claimed.

    >>> nums, text = set(), set()
    >>> claim({"question": "Jo has 3 cats."}, nums, text)
    True
    >>> claim({"question": "Al has 3 dogs."}, nums, text), sorted(nums)  # same numbers
    (False, [('3',)])
    """
    nums = question_numbers(rec["question"])
    text = normalize_question(rec["question"])
    if nums in seen_numbers or text in seen_text:
        return False
    seen_numbers.add(nums)
    seen_text.add(text)
    return True


def too_few(what: str, got: int, n: int, hint: str) -> InputError:
    """The error for a pool that ran out of new problems before ``n``.

    >>> str(too_few("data.train", 3, 5, ""))  # doctest: +ELLIPSIS
    'data.train: could only make 3 of n=5 problems whose numbers differ ...; lower n'
    """
    return InputError(
        f"{what}: could only make {got} of n={n} problems whose numbers differ from every other "
        f"problem in any set; lower n{hint}"
    )


def take_unique(
    stream: Iterable[dict], n: int, seen_numbers: set, seen_text: set, what: str
) -> list[dict]:
    """Take ``n`` records from ``stream`` whose numbers and text are not yet claimed.

    >>> qs = [{"question": f"Jo has {i % 2} cats."} for i in range(5)]
    >>> [r["question"] for r in take_unique(qs, 2, set(), set(), "demo")]
    ['Jo has 0 cats.', 'Jo has 1 cats.']
    """
    out: list[dict] = []
    if n == 0:
        return out
    misses = 0
    for rec in stream:
        if not claim(rec, seen_numbers, seen_text):
            misses += 1
            if misses > MAX_MISSES:
                break
            continue
        misses = 0
        out.append(rec)
        if len(out) == n:
            return out
    raise too_few(what, len(out), n, "")


def take_real(
    rows: list[dict],
    n: int | None,
    rng: random.Random,
    seen_text: set,
    key: str,
    origin: str,
    text: Callable[[dict], str] = lambda r: normalize_question(r["question"]),
) -> tuple[list[dict], dict]:
    """A seeded subset (file order kept) of rows whose text no earlier set has claimed.

    >>> rows = [{"question": q} for q in ("A?", "B?", "a?", "C?")]
    >>> take_real(rows, None, random.Random(0), {"c"}, "data.eval.x", "x.jsonl")
    ([{'question': 'A?'}, {'question': 'B?'}], {'duplicate_in_source': 1, 'in_other_set': 1})
    """
    dropped = {"duplicate_in_source": 0, "in_other_set": 0}
    usable: list[tuple[int, dict, str]] = []
    local: set[str] = set()
    for i, r in enumerate(rows):
        t = text(r)
        if t in local:
            dropped["duplicate_in_source"] += 1
            continue
        local.add(t)
        if t in seen_text:
            dropped["in_other_set"] += 1
        else:
            usable.append((i, r, t))
    if n is not None and n > len(usable):
        raise InputError(
            f"{key}.n={n} but {origin} has only {len(usable)} usable questions "
            f"({dropped['in_other_set']} are in other sets, {dropped['duplicate_in_source']} "
            "duplicates); lower n or set n: null to take all"
        )
    if n is not None:
        usable = sorted(rng.sample(usable, n), key=lambda u: u[0])
    seen_text.update(t for _, _, t in usable)
    return [r for _, r, _ in usable], dropped
