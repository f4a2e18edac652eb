"""The ``arith`` source: an offline generator of easy 1-, 2- and 3-step word problems.

Each problem is a small story (a person, an item, a container) built from one of a few shapes
per number of operations (:data:`_SHAPES`), with a GSM8K-style solution: one calculator-annotated
line per operation (``a + b = <<a+b=r>>r``) and a last line ``#### N``. Operands are 1-20
(products < 200) and no result is negative. All arith sets of a run draw from one seeded
:class:`ArithStream`, which never yields two problems with the same text or tuple of numbers
(:mod:`selfimprove.data.dedupe`).

A set's ``max_operand`` (null by default: the generator above, byte for byte) widens the
operands to 1-``max_operand`` (every range scales with it, products < 10 x ``max_operand``) and
also keeps each computation (the problem's (operation, operands) steps, ``+``/``*`` operands
unordered) distinct from every earlier problem of the run: a bigger training pool that repeats
no held-out computation (docs/unlabeled-pool.md).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from selfimprove.config.data import SourceConfig
from selfimprove.data.dedupe import MAX_MISSES, claim, too_few

_NAMES = [
    ("Jack", "he", "his"),
    ("Mia", "she", "her"),
    ("Liam", "he", "his"),
    ("Emma", "she", "her"),
    ("Noah", "he", "his"),
    ("Ava", "she", "her"),
    ("Ethan", "he", "his"),
    ("Sofia", "she", "her"),
    ("Lucas", "he", "his"),
    ("Zoe", "she", "her"),
    ("Omar", "he", "his"),
    ("Priya", "she", "her"),
    ("Mateo", "he", "his"),
    ("Hana", "she", "her"),
    ("Ben", "he", "his"),
    ("Chloe", "she", "her"),
    ("Ravi", "he", "his"),
    ("Lena", "she", "her"),
    ("Tom", "he", "his"),
    ("Aisha", "she", "her"),
]
_ITEMS = [
    "stamps",
    "marbles",
    "apples",
    "stickers",
    "pencils",
    "cookies",
    "shells",
    "cards",
    "books",
    "balloons",
    "coins",
    "buttons",
    "crayons",
    "beads",
    "toy cars",
    "oranges",
    "eggs",
    "candies",
    "flowers",
    "rocks",
]
_CONTAINERS = [
    ("box", "boxes"),
    ("bag", "bags"),
    ("jar", "jars"),
    ("basket", "baskets"),
    ("pack", "packs"),
    ("tray", "trays"),
    ("bowl", "bowls"),
    ("tin", "tins"),
]
# (question phrase, solution phrase) for taking more / giving some away; {b} the amount.
_ADD = [
    ("buys {b} more", "buying {b} more"),
    ("finds {b} more", "finding {b} more"),
    ("gets {b} more from {friend}", "getting {b} more from {friend}"),
    ("wins {b} more", "winning {b} more"),
    ("picks up {b} more", "picking up {b} more"),
    ("receives {b} more as a gift", "receiving {b} more"),
]
_SUB = [
    ("gives {b} to {friend}", "giving {b} to {friend}"),
    ("loses {b} of them", "losing {b}"),
    ("sells {b} of them", "selling {b}"),
    ("gives away {b}", "giving away {b}"),
    ("uses {b} of them", "using {b}"),
    ("trades {b} of them to {friend}", "trading away {b}"),
]
_THEN = ["Then", "Later", "After that", "The next day", "On Monday", "In the afternoon"]


#: the operand scale of the default generator (``max_operand: null``)
DEFAULT_MAX_OPERAND = 20


class _Story:
    """One problem being built: question sentences, solution lines, the running amount, its
    computation (``steps``) and the operand scale ``m`` (20 by default)."""

    def __init__(self, rng: random.Random, m: int = DEFAULT_MAX_OPERAND) -> None:
        self.m = m
        self.steps: list[tuple[str, int, int]] = []
        people = rng.sample(_NAMES, 2)
        self.name, self.pron, self.poss = people[0]
        self.friend = people[1][0]
        self.item = rng.choice(_ITEMS)
        self.cont, self.conts = rng.choice(_CONTAINERS)
        self.q: list[str] = []
        self.sol: list[str] = []
        self.x = 0
        self.ops = 0
        self.ending = "now"
        self.question_end: str | None = None

    def calc(self, a: int, op: str, b: int) -> int:
        r = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
        self.ops += 1
        self.steps.append((op, *sorted((a, b))) if op in "+*" else (op, a, b))
        return r

    def ann(self, a: int, op: str, b: int, r: int) -> str:
        return f"{a} {op} {b} = <<{a}{op}{b}={r}>>{r}"

    def sentence(self, rng: random.Random, phrase: str) -> str:
        if self.q and rng.random() < 0.6:
            return f"{rng.choice(_THEN)} {self.pron} {phrase}."
        return f"{self.pron.capitalize()} {phrase}." if self.q else f"{self.name} {phrase}."


def _open_has(rng: random.Random, s: _Story) -> bool:
    s.x = rng.randint(2, s.m)
    s.q.append(f"{s.name} has {s.x} {s.item}.")
    return True


def _open_groups(rng: random.Random, s: _Story) -> bool:
    a, b = rng.randint(2, s.m // 2), rng.randint(2, 3 * s.m // 5)  # 2-10, 2-12
    if a * b >= 10 * s.m:  # never by default (10 x 12 < 200)
        return False
    s.q.append(
        rng.choice(
            [
                f"{s.name} has {a} {s.conts} of {s.item} with {b} {s.item} in each {s.cont}.",
                f"{s.name} has {a} {s.conts}, and each {s.cont} holds {b} {s.item}.",
                f"There are {b} {s.item} in each of {s.name}'s {a} {s.conts}.",
            ]
        )
    )
    s.x = s.calc(a, "*", b)
    s.sol.append(f"{s.name} has {s.ann(a, '*', b, s.x)} {s.item}.")
    s.ending = "in total"
    return True


def _open_sum_groups(rng: random.Random, s: _Story) -> bool:
    top = 9 * s.m // 20  # 9
    a, b, c = rng.randint(2, top), rng.randint(2, top), rng.randint(2, s.m // 2)
    if (a + b) * c >= 10 * s.m:
        return False
    s.q.append(
        f"{s.name} buys {a} {s.conts} of {s.item} on Monday and {b} {s.conts} on Tuesday. "
        f"Each {s.cont} has {c} {s.item}."
    )
    k = s.calc(a, "+", b)
    s.x = s.calc(k, "*", c)
    s.sol.append(f"{s.name} buys {s.ann(a, '+', b, k)} {s.conts}.")
    s.sol.append(f"That is {s.ann(k, '*', c, s.x)} {s.item}.")
    s.ending = "in total"
    return True


def _open_diff_groups(rng: random.Random, s: _Story) -> bool:
    a, c = rng.randint(3, 3 * s.m // 4), rng.randint(2, 3 * s.m // 5)  # 3-15, 2-12
    b = rng.randint(1, a - 1)
    if (a - b) * c >= 10 * s.m:
        return False
    s.q.append(
        f"{s.name} has {a} {s.conts} with {c} {s.item} in each {s.cont}. "
        f"{s.pron.capitalize()} gives {b} of the {s.conts} to {s.friend}."
    )
    k = s.calc(a, "-", b)
    s.x = s.calc(k, "*", c)
    s.sol.append(f"{s.name} keeps {s.ann(a, '-', b, k)} {s.conts}.")
    s.sol.append(f"They hold {s.ann(k, '*', c, s.x)} {s.item}.")
    s.ending = "left"
    return True


def _op_add(rng: random.Random, s: _Story) -> bool:
    b = rng.randint(1, s.m)
    q, g = rng.choice(_ADD)
    s.q.append(s.sentence(rng, q.format(b=b, friend=s.friend)))
    y = s.calc(s.x, "+", b)
    s.sol.append(
        f"After {g.format(b=b, friend=s.friend)}, {s.name} has {s.ann(s.x, '+', b, y)} {s.item}."
    )
    s.x, s.ending = y, "now"
    return True


def _op_sub(rng: random.Random, s: _Story) -> bool:
    if s.x < 2:
        return False
    b = rng.randint(1, min(s.m, s.x - 1))
    q, g = rng.choice(_SUB)
    s.q.append(s.sentence(rng, q.format(b=b, friend=s.friend)))
    y = s.calc(s.x, "-", b)
    s.sol.append(
        f"After {g.format(b=b, friend=s.friend)}, {s.name} has {s.ann(s.x, '-', b, y)} {s.item}."
    )
    s.x, s.ending = y, "left"
    return True


def _op_share(rng: random.Random, s: _Story) -> bool:
    ds = [d for d in range(2, s.m // 2 + 1) if s.x % d == 0 and s.x // d >= 2]  # 2-10
    if not ds:
        return False
    d = rng.choice(ds)
    how = rng.choice([f"among {d} friends", f"into {d} {s.conts}"])
    who = "friend" if "friends" in how else s.cont
    verb = "gets" if who == "friend" else "holds"
    s.q.append(s.sentence(rng, f"shares all the {s.item} equally {how}"))
    y = s.calc(s.x, "/", d)
    s.sol.append(f"Each {who} {verb} {s.ann(s.x, '/', d, y)} {s.item}.")
    s.question_end = f"How many {s.item} does each {who} {'get' if who == 'friend' else 'hold'}?"
    s.x = y
    return True


def _money(rng: random.Random, s: _Story, n_items: int, change: bool) -> bool:
    a, b = rng.randint(2, s.m // 2), rng.randint(1, s.m)
    if a * b >= (20 if change else 10 * s.m):
        return False
    buys = [f"{a} {s.item} for ${b} each"]
    s.x = s.calc(a, "*", b)
    s.sol.append(f"The {s.item} cost {s.ann(a, '*', b, s.x)} dollars.")
    if n_items == 2:
        item2 = rng.choice([i for i in _ITEMS if i != s.item])
        c, d = rng.randint(2, s.m // 2), rng.randint(1, s.m)
        if c * d >= 10 * s.m:
            return False
        buys.append(f"{c} {item2} for ${d} each")
        k = s.calc(c, "*", d)
        s.sol.append(f"The {item2} cost {s.ann(c, '*', d, k)} dollars.")
        y = s.calc(s.x, "+", k)
        s.sol.append(f"{s.name} spends {s.ann(s.x, '+', k, y)} dollars in total.")
        s.x = y
    s.q.append(f"{s.name} buys {' and '.join(buys)}.")
    if change:
        bills = [v for v in (10, 20) if v > s.x]
        if not bills:
            return False
        bill = rng.choice(bills)
        s.q.append(f"{s.pron.capitalize()} pays with a ${bill} bill.")
        y = s.calc(bill, "-", s.x)
        s.sol.append(f"{s.pron.capitalize()} gets {s.ann(bill, '-', s.x, y)} dollars in change.")
        s.x = y
        s.question_end = f"How many dollars of change does {s.name} get?"
    else:
        total = " in total" if n_items == 2 else ""
        s.question_end = f"How many dollars does {s.name} spend{total}?"
    return True


def _chain(opener: Callable, *ops: Callable) -> Callable[[random.Random, _Story], bool]:
    def build(rng: random.Random, s: _Story) -> bool:
        return opener(rng, s) and all(op(rng, s) for op in ops)

    return build


def _add_or_sub(rng: random.Random, s: _Story) -> bool:
    return (_op_add if rng.random() < 0.5 else _op_sub)(rng, s)


def _spend(n_items: int, change: bool) -> Callable[[random.Random, _Story], bool]:
    return lambda rng, s: _money(rng, s, n_items, change)


# Problem shapes by number of operations (each shape uses exactly that many).
_SHAPES: dict[int, list[Callable[[random.Random, _Story], bool]]] = {
    1: [
        _chain(_open_has, _op_add),
        _chain(_open_has, _op_sub),
        _chain(_open_groups),
        _chain(_open_has, _op_share),
        _spend(1, False),
    ],
    2: [
        _chain(_open_has, _add_or_sub, _add_or_sub),
        _chain(_open_has, _add_or_sub, _op_share),
        _chain(_open_groups, _add_or_sub),
        _chain(_open_sum_groups),
        _chain(_open_diff_groups),
        _spend(1, True),
    ],
    3: [
        _chain(_open_has, _add_or_sub, _add_or_sub, _add_or_sub),
        _chain(_open_has, _add_or_sub, _add_or_sub, _op_share),
        _chain(_open_groups, _add_or_sub, _add_or_sub),
        _chain(_open_groups, _add_or_sub, _op_share),
        _chain(_open_sum_groups, _add_or_sub),
        _chain(_open_diff_groups, _add_or_sub),
        _spend(2, False),
    ],
}


def _arith_problem(rng: random.Random, k: int, m: int = DEFAULT_MAX_OPERAND) -> tuple[dict, tuple]:
    """One problem with exactly ``k`` operations, operands scaled by ``m``, and its
    computation."""
    while True:
        s = _Story(rng, m)
        if rng.choice(_SHAPES[k])(rng, s) and s.ops == k:
            break
    end = s.question_end or f"How many {s.item} does {s.name} have {s.ending}?"
    rec = {"question": " ".join([*s.q, end]), "answer": "\n".join([*s.sol, f"#### {s.x}"])}
    return rec, tuple(s.steps)


class ArithStream:
    """One seeded stream of arith problems shared by all arith sets of a run.

    Each problem draws its number of operations uniformly from the set's ``steps``; a step
    count whose distinct number tuples are used up (1 step: ~380) is dropped for the rest of
    the stream (for that ``max_operand``), so the mix shifts to the other step counts
    (``steps_made`` records it). The stream records every computation it yields; a set with a
    ``max_operand`` also skips a problem whose computation is already there.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.exhausted: set[tuple[int, int | None]] = set()
        self.computations: set[tuple] = set()

    def take(
        self,
        n: int,
        steps: list[int],
        seen_numbers: set,
        seen_text: set,
        what: str,
        max_operand: int | None = None,
    ) -> tuple[list[dict], dict[str, int]]:
        out: list[dict] = []
        made = {str(k): 0 for k in steps}
        misses = dict.fromkeys(steps, 0)
        m = max_operand or DEFAULT_MAX_OPERAND
        while len(out) < n:
            active = [k for k in steps if (k, max_operand) not in self.exhausted]
            if not active:
                hint = " or add step counts, e.g. steps: [1, 2, 3], or set max_operand above "
                hint += f"{m} (docs/unlabeled-pool.md)"
                raise too_few(what, len(out), n, hint)
            k = self.rng.choice(active)
            rec, comp = _arith_problem(self.rng, k, m)
            repeat = max_operand is not None and comp in self.computations
            if repeat or not claim(rec, seen_numbers, seen_text):
                misses[k] += 1
                if misses[k] > MAX_MISSES:
                    self.exhausted.add((k, max_operand))
                continue
            self.computations.add(comp)
            misses[k] = 0
            made[str(k)] += 1
            out.append(rec)
        return out, made


def generate_arith(
    n: int, steps: list[int], seed: int, max_operand: int | None = None
) -> list[dict]:
    """``n`` distinct easy word problems with 1-3 operations each, GSM8K-style solutions.

    Operands are 1-20 (products < 200; with ``max_operand``: 1-``max_operand``, products
    < 10 x ``max_operand``, and no two problems with the same computation), no result is
    negative, every problem has a different tuple of numbers, and the same arguments give the
    same problems.

    >>> recs = generate_arith(3, steps=[1], seed=0)
    >>> [r["id"] for r in recs]
    ['arith-0', 'arith-1', 'arith-2']
    >>> print(recs[0]["question"])
    Ava has 7 cards. Later she uses 1 of them. How many cards does Ava have left?
    >>> print(recs[0]["answer"])
    After using 1, Ava has 7 - 1 = <<7-1=6>>6 cards.
    #### 6
    """
    sc = SourceConfig(source="arith", n=n, steps=steps, max_operand=max_operand)
    stream = ArithStream(random.Random(f"arith:{seed}"))
    what = f"generate_arith(n={n}, steps={sc.steps})"
    recs, _ = stream.take(n, sc.steps, set(), set(), what, sc.max_operand)
    return [{"id": f"arith-{i}", **r} for i, r in enumerate(recs)]
