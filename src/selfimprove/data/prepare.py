"""Data step: the unlabeled training pool, a small labeled seed set and held-out eval sets.

Two record formats:

* GSM8K format (every set but DROP ones): ``{"id", "question", "answer"}`` where ``answer`` is a
  GSM8K-style worked solution whose last line is ``#### N`` (N an integer or decimal, no commas).
* DROP format (eval sets only): ``{"id", "passage", "question", "answers"}`` with ``answers`` a
  list of gold alternatives, each a list of spans (see :mod:`selfimprove.drop_data`).

Sources (:class:`SourceConfig.source`):

* ``arith`` -- our own pure-python generator of easy 1-, 2- and 3-step word problems
  (:func:`generate_arith`), offline, the default.
* ``gsm_symbolic`` -- GSM-Symbolic templates via ``reasoning_gym`` (Apache-2.0), offline.
  These templates come from GSM8K *test* questions: do not train on them and evaluate on the
  GSM8K test set.
* ``jsonl`` -- a local file in the official GSM8K format (``{"question", "answer"}`` per line).
* ``gsm8k_hub`` -- ``datasets.load_dataset(hub_id, hub_config, split=split)`` (needs the hub).
* ``drop_gen`` -- procedural DROP-style football passages with computed golds
  (:func:`selfimprove.data.drop.generate_drop`), offline. Eval only, like the two below.
* ``drop_jsonl`` -- the simple-evals DROP file ``drop_v0_dev.jsonl(.gz)``
  (:func:`selfimprove.data.drop.load_drop_jsonl`).
* ``drop_hub`` -- ``ucinlp/drop`` through ``datasets`` (needs the hub or its cache).

Disjointness: no two sets share a question (normalized text), and a generated question never
shares its tuple of numbers with any question of another set (or of its own set): the same
template with the same numbers and other names is the same problem.  Real (jsonl/hub) sets are
filled first, then the generated ones, each source from one seeded stream; within a kind the
eval sets (by name) come first, then the seed set, then train, so changing the size of the
training pool never changes the eval sets. DROP sets only share the duplicate check among
themselves (normalized passage + question): each is deduplicated and no two DROP sets share a
question; a real DROP set is a seeded subset of n (file order kept) and keeps the source's ids.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from selfimprove.config.data import (
    _NAME_RE,
    GENERATED,
    REAL,
    RESERVED_NAMES,
    DataConfig,
    SourceConfig,
)
from selfimprove.core.digest import file_sha256
from selfimprove.core.io import InputError, atomic_path, read_jsonl, write_jsonl

_NUM_RE = re.compile(r"\d[\d,]*(?:\.\d+)?")
_FINAL_RE = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)\s*")
_GSM_SYMBOLIC_SUFFIX = " Give the result as your final answer. Do not include units."


# ----------------------------------------------------------------------------------------------
# configs


# ----------------------------------------------------------------------------------------------
# small pure helpers


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


def format_number(x: float | int | str) -> str:
    """A final answer as GSM8K writes it: no commas, integers without a decimal point.

    >>> format_number(12.0), format_number("1,080"), format_number(2.50), format_number(-3)
    ('12', '1080', '2.5', '-3')
    """
    if isinstance(x, str):
        x = float(x.replace(",", ""))
    if float(x).is_integer():
        return str(int(x))
    return repr(float(x))


def final_answer(solution: str) -> str | None:
    """The ``N`` of a solution's last line ``#### N`` (commas removed), else None.

    >>> final_answer("5 + 3 = <<5+3=8>>8\\n#### 8")
    '8'
    >>> final_answer("#### 1,080"), final_answer("no marker")
    ('1080', None)
    """
    lines = solution.rstrip().splitlines()
    if not lines:
        return None
    m = _FINAL_RE.fullmatch(lines[-1].strip())
    if not m:
        return None
    try:
        return format_number(m.group(1))
    except ValueError:
        return None


def _with_final_line(solution: str, value: str) -> str:
    """Replace (or add) the ``#### N`` last line with a clean ``#### value``."""
    lines = solution.rstrip().splitlines()
    if lines and lines[-1].strip().startswith("####"):
        lines = lines[:-1]
    return "\n".join([*lines, f"#### {value}"])


# ----------------------------------------------------------------------------------------------
# the "arith" generator

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


class _Story:
    """One problem being built: question sentences, solution lines, the running amount."""

    def __init__(self, rng: random.Random) -> None:
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
        return r

    def ann(self, a: int, op: str, b: int, r: int) -> str:
        return f"{a} {op} {b} = <<{a}{op}{b}={r}>>{r}"

    def sentence(self, rng: random.Random, phrase: str) -> str:
        if self.q and rng.random() < 0.6:
            return f"{rng.choice(_THEN)} {self.pron} {phrase}."
        return f"{self.pron.capitalize()} {phrase}." if self.q else f"{self.name} {phrase}."


def _open_has(rng: random.Random, s: _Story) -> bool:
    s.x = rng.randint(2, 20)
    s.q.append(f"{s.name} has {s.x} {s.item}.")
    return True


def _open_groups(rng: random.Random, s: _Story) -> bool:
    a, b = rng.randint(2, 10), rng.randint(2, 12)
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
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 10)
    if (a + b) * c >= 200:
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
    a, c = rng.randint(3, 15), rng.randint(2, 12)
    b = rng.randint(1, a - 1)
    if (a - b) * c >= 200:
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
    b = rng.randint(1, 20)
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
    b = rng.randint(1, min(20, s.x - 1))
    q, g = rng.choice(_SUB)
    s.q.append(s.sentence(rng, q.format(b=b, friend=s.friend)))
    y = s.calc(s.x, "-", b)
    s.sol.append(
        f"After {g.format(b=b, friend=s.friend)}, {s.name} has {s.ann(s.x, '-', b, y)} {s.item}."
    )
    s.x, s.ending = y, "left"
    return True


def _op_share(rng: random.Random, s: _Story) -> bool:
    ds = [d for d in range(2, 11) if s.x % d == 0 and s.x // d >= 2]
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
    a, b = rng.randint(2, 10), rng.randint(1, 20)
    if a * b >= (20 if change else 200):
        return False
    buys = [f"{a} {s.item} for ${b} each"]
    s.x = s.calc(a, "*", b)
    s.sol.append(f"The {s.item} cost {s.ann(a, '*', b, s.x)} dollars.")
    if n_items == 2:
        item2 = rng.choice([i for i in _ITEMS if i != s.item])
        c, d = rng.randint(2, 10), rng.randint(1, 20)
        if c * d >= 200:
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


def _arith_problem(rng: random.Random, k: int) -> dict:
    """One problem with exactly ``k`` operations."""
    while True:
        s = _Story(rng)
        if rng.choice(_SHAPES[k])(rng, s) and s.ops == k:
            break
    end = s.question_end or f"How many {s.item} does {s.name} have {s.ending}?"
    return {"question": " ".join([*s.q, end]), "answer": "\n".join([*s.sol, f"#### {s.x}"])}


_MAX_MISSES = 2000  # consecutive repeats after which a pool counts as used up


def _is_new(rec: dict, seen_numbers: set, seen_text: set) -> bool:
    """Claim ``rec`` (its number tuple and its text) unless either is already claimed."""
    nums = question_numbers(rec["question"])
    text = normalize_question(rec["question"])
    if nums in seen_numbers or text in seen_text:
        return False
    seen_numbers.add(nums)
    seen_text.add(text)
    return True


def _too_few(what: str, got: int, n: int, hint: str) -> InputError:
    return InputError(
        f"{what}: could only make {got} of n={n} problems whose numbers differ from every other "
        f"problem in any set; lower n{hint}"
    )


class _ArithStream:
    """One seeded stream of arith problems shared by all arith sets of a run.

    Each problem draws its number of operations uniformly from the set's ``steps``; a step
    count whose distinct number tuples are used up (1 step: ~380) is dropped for the rest of
    the stream, so the mix shifts to the other step counts (``steps_made`` records it).
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.exhausted: set[int] = set()

    def take(
        self, n: int, steps: list[int], seen_numbers: set, seen_text: set, what: str
    ) -> tuple[list[dict], dict[str, int]]:
        out: list[dict] = []
        made = {str(k): 0 for k in steps}
        misses = dict.fromkeys(steps, 0)
        while len(out) < n:
            active = [k for k in steps if k not in self.exhausted]
            if not active:
                raise _too_few(what, len(out), n, " or add step counts, e.g. steps: [1, 2, 3]")
            k = self.rng.choice(active)
            rec = _arith_problem(self.rng, k)
            if not _is_new(rec, seen_numbers, seen_text):
                misses[k] += 1
                if misses[k] > _MAX_MISSES:
                    self.exhausted.add(k)
                continue
            misses[k] = 0
            made[str(k)] += 1
            out.append(rec)
        return out, made


def _take_unique(
    stream: Iterator[dict], n: int, seen_numbers: set, seen_text: set, what: str
) -> list[dict]:
    """Take ``n`` records from ``stream`` whose numbers and text are not yet claimed."""
    out: list[dict] = []
    if n == 0:
        return out
    misses = 0
    for rec in stream:
        if not _is_new(rec, seen_numbers, seen_text):
            misses += 1
            if misses > _MAX_MISSES:
                break
            continue
        misses = 0
        out.append(rec)
        if len(out) == n:
            return out
    raise _too_few(what, len(out), n, "")


def generate_arith(n: int, steps: list[int], seed: int) -> list[dict]:
    """``n`` distinct easy word problems with 1-3 operations each, GSM8K-style solutions.

    Operands are 1-20 (products < 200), no result is negative, every problem has a different
    tuple of numbers, and the same arguments give the same problems.

    >>> recs = generate_arith(3, steps=[1], seed=0)
    >>> [r["id"] for r in recs]
    ['arith-0', 'arith-1', 'arith-2']
    >>> print(recs[0]["question"])
    Ava has 7 cards. Later she uses 1 of them. How many cards does Ava have left?
    >>> print(recs[0]["answer"])
    After using 1, Ava has 7 - 1 = <<7-1=6>>6 cards.
    #### 6
    """
    steps = SourceConfig(source="arith", n=n, steps=steps).steps
    stream = _ArithStream(random.Random(f"arith:{seed}"))
    recs, _ = stream.take(n, steps, set(), set(), f"generate_arith(n={n}, steps={steps})")
    return [{"id": f"arith-{i}", **r} for i, r in enumerate(recs)]


# ----------------------------------------------------------------------------------------------
# gsm_symbolic (reasoning_gym)


def _gsm_symbolic_stream(seed: int, size: int) -> Iterator[dict]:
    """GSM-Symbolic items as GSM8K records; items with a negative answer are skipped."""
    import reasoning_gym

    # Item i depends only on (seed, i): a bigger size keeps the same prefix.
    ds = reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)
    for i in range(size):
        item = ds[i]
        q = item["question"]
        if q.endswith(_GSM_SYMBOLIC_SUFFIX):
            q = q[: -len(_GSM_SYMBOLIC_SUFFIX)]
        value = format_number(item["answer"])
        if value.startswith("-"):  # a known broken template (an age of -1)
            continue
        cot = str(item.get("metadata", {}).get("answer_cot") or "").strip()
        if final_answer(cot) != value:
            cot = _with_final_line(cot, value)
        yield {"question": q.strip(), "answer": _with_final_line(cot, value)}


# ----------------------------------------------------------------------------------------------
# real sets: jsonl and hub


def _line_number(path: Path, index: int) -> int:
    """1-based line of the ``index``-th record of a jsonl file (blank lines are skipped)."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    seen = -1
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                seen += 1
                if seen == index:
                    return lineno
    return -1


def _clean_real(rows: list[dict], where: Callable[[int], str]) -> list[dict]:
    """Check GSM8K-format rows and normalize the last line to ``#### N``."""
    out = []
    for i, row in enumerate(rows):
        q, a = row.get("question"), row.get("answer")
        if not isinstance(q, str) or not q.strip():
            raise InputError(f"{where(i)}: 'question' must be a non-empty string, got {q!r}")
        if not isinstance(a, str):
            raise InputError(f"{where(i)}: 'answer' must be a string, got {type(a).__name__}")
        value = final_answer(a)
        if value is None:
            last = (a.rstrip().splitlines() or [""])[-1]
            raise InputError(
                f"{where(i)}: 'answer' must end with a line '#### N' (N a number), "
                f"the last line is {last[:80]!r}; fix the record or remove it"
            )
        out.append({"question": q.strip(), "answer": _with_final_line(a, value)})
    return out


def _load_jsonl(path: str) -> list[dict]:
    p = Path(path)
    rows = read_jsonl(p, required=["question", "answer"])
    return _clean_real(rows, lambda i: f"{p} line {_line_number(p, i)}")


def _hub_offline() -> bool:
    import os

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def _hub_error(where: str, e: Exception, local: str, check: str) -> InputError:
    """One clear message for any failure to load a hub dataset (offline or not)."""
    if _hub_offline() or "offline" in str(e).lower():
        return InputError(
            f"{where}: the Hugging Face hub is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE "
            f"is set or there is no network) and the dataset is not cached; use {local} instead"
        )
    return InputError(
        f"{where}: could not load the dataset ({type(e).__name__}: {e}); check {check}, "
        f"or use {local}"
    )


def _load_hub(cfg: SourceConfig, key: str) -> list[dict]:
    where = f"{key} ({cfg.hub_id!r}, config {cfg.hub_config!r}, split {cfg.split!r})"
    try:
        import datasets

        ds = datasets.load_dataset(cfg.hub_id, cfg.hub_config, split=cfg.split)
    except Exception as e:  # every failure becomes one clear message
        raise _hub_error(
            where,
            e,
            "`source: jsonl` with `path:` a local file in the GSM8K format",
            "hub_id, hub_config and split",
        ) from None
    missing = [c for c in ("question", "answer") if c not in (ds.column_names or [])]
    if missing:
        raise InputError(
            f"{where}: the dataset has no column(s) {missing} (has {ds.column_names}); "
            "use a GSM8K-format dataset"
        )
    rows = [{"question": r["question"], "answer": r["answer"]} for r in ds]
    return _clean_real(rows, lambda i: f"{where} row {i}")


def _load_drop_hub(cfg: SourceConfig, key: str) -> list[dict]:
    from selfimprove.data.drop import records_from_hub_rows

    where = f"{key} ({cfg.hub_id!r}, split {cfg.split!r})"
    try:
        import datasets

        ds = datasets.load_dataset(cfg.hub_id, split=cfg.split)
    except Exception as e:  # every failure becomes one clear message
        raise _hub_error(
            where,
            e,
            "`source: drop_jsonl` with `path:` a local simple-evals DROP file "
            "(drop_v0_dev.jsonl.gz)",
            "hub_id and split",
        ) from None
    need = ("passage", "question", "answers_spans")
    missing = [c for c in need if c not in (ds.column_names or [])]
    if missing:
        raise InputError(
            f"{where}: the dataset has no column(s) {missing} (has {ds.column_names}); "
            "use a DROP-format dataset such as ucinlp/drop"
        )
    return records_from_hub_rows(ds)


def _drop_text(record: dict) -> str:
    """Duplicate key of a DROP record: normalized passage and question."""
    return normalize_question(record["passage"]) + "\n" + normalize_question(record["question"])


def _take_real(
    rows: list[dict],
    n: int | None,
    rng: random.Random,
    seen_text: set,
    key: str,
    origin: str,
    text: Callable[[dict], str] = lambda r: normalize_question(r["question"]),
) -> tuple[list[dict], dict]:
    """A seeded subset (file order kept) of rows whose text no earlier set has claimed."""
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


# ----------------------------------------------------------------------------------------------
# prepare


def _sets(cfg: DataConfig) -> list[tuple[str, str, SourceConfig]]:
    """(set name, config key, source config) in priority order: eval by name, seed, train."""
    out = [(name, f"data.eval.{name}", cfg.eval[name]) for name in sorted(cfg.eval)]
    if cfg.seed_set is not None:
        out.append(("seed", "data.seed_set", cfg.seed_set))
    out.append(("train", "data.train", cfg.train))
    return out


def _check_paths(sets: list[tuple[str, str, SourceConfig]]) -> None:
    for _, key, sc in sets:
        if sc.source in ("jsonl", "drop_jsonl"):
            p = Path(sc.path or "")
            if not p.is_file():
                what = (
                    "a GSM8K-format .jsonl file"
                    if sc.source == "jsonl"
                    else "the simple-evals DROP file (drop_v0_dev.jsonl.gz)"
                )
                raise InputError(
                    f"{key}.path: file {str(p)!r} not found (relative to {Path.cwd()}); "
                    f"point it at {what}"
                )


def _overlaps(out: dict[str, list[dict]], generated: set[str]) -> dict:
    names = list(out)
    text = {n: {normalize_question(r["question"]) for r in out[n]} for n in names}
    nums = {n: {question_numbers(r["question"]) for r in out[n]} - {()} for n in names}
    stats: dict[str, dict[str, int]] = {"text": {}, "numbers": {}}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pair = f"{a}|{b}"
            stats["text"][pair] = len(text[a] & text[b])
            stats["numbers"][pair] = len(nums[a] & nums[b])
            if stats["text"][pair] or (
                stats["numbers"][pair] and (a in generated or b in generated)
            ):
                raise AssertionError(f"internal error: sets {a} and {b} overlap: {stats}")
    return stats


def _drop_sets(
    sets: list[tuple[str, str, SourceConfig]], seed: int
) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """The DROP-format sets (deduplicated, no question in two of them) and their statistics."""
    from selfimprove.data.drop import generate_drop, load_drop_jsonl

    seen: set[str] = set()
    made: dict[str, list[dict]] = {}
    info: dict[str, dict] = {}
    drop = [s for s in sets if s[2].is_drop]
    for name, key, sc in drop:  # real sets first, as for GSM8K
        if sc.source == "drop_gen":
            continue
        if sc.source == "drop_jsonl":
            rows, origin = load_drop_jsonl(sc.path or ""), Path(sc.path or "").name
            info[name] = {"source": sc.source, "path": sc.path, "sha256": file_sha256(sc.path)}
        else:
            rows, origin = _load_drop_hub(sc, key), f"{sc.hub_id} ({sc.split})"
            info[name] = {"source": sc.source, "hub": [sc.hub_id, sc.split]}
        rng = random.Random(f"{sc.source}:{origin}:{name}:{seed}")
        made[name], dropped = _take_real(rows, sc.n, rng, seen, key, origin, text=_drop_text)
        info[name].update(format="drop", available=len(rows), dropped=dropped)
    gen = [(name, key, sc) for name, key, sc in drop if sc.source == "drop_gen"]
    if gen:
        pool = iter(generate_drop(2 * sum(sc.n or 0 for _, _, sc in gen) + 50, seed=seed))
        for name, key, sc in gen:
            made[name] = []
            while len(made[name]) < (sc.n or 0):
                rec = next(pool, None)
                if rec is None:
                    break
                t = _drop_text(rec)
                if t not in seen:
                    seen.add(t)
                    made[name].append(rec)
            if len(made[name]) < (sc.n or 0):
                raise _too_few(key, len(made[name]), sc.n or 0, "")
            info[name] = {"source": "drop_gen", "format": "drop"}
    return made, info


def _build(cfg: DataConfig, seed: int) -> tuple[dict[str, list[dict]], dict]:
    """Every set of ``cfg`` by name (``train``, ``seed``, eval names) and the statistics."""
    sets = _sets(cfg)
    _check_paths(sets)
    drop_made, drop_info = _drop_sets(sets, seed)
    sets_gsm = [s for s in sets if not s[2].is_drop]

    seen_text: set[str] = set()
    seen_numbers: set[tuple[str, ...]] = set()
    made: dict[str, list[dict]] = {}
    info: dict[str, dict[str, Any]] = {}

    # Real sets first (they only claim text and numbers), then the generated ones, which must
    # also avoid every number tuple already claimed.
    hub_cache: dict[tuple, list[dict]] = {}
    for name, key, sc in sets_gsm:
        if sc.source not in REAL:
            continue
        if sc.source == "jsonl":
            rows, origin = _load_jsonl(sc.path or ""), str(sc.path)
            info[name] = {"source": "jsonl", "path": sc.path, "sha256": file_sha256(sc.path)}
        else:
            hk = (sc.hub_id, sc.hub_config, sc.split)
            if hk not in hub_cache:
                hub_cache[hk] = _load_hub(sc, key)
            rows, origin = hub_cache[hk], f"{sc.hub_id} ({sc.hub_config}/{sc.split})"
            info[name] = {"source": "gsm8k_hub", "hub": list(hk)}
        rng = random.Random(f"{sc.source}:{origin}:{name}:{seed}")
        recs, dropped = _take_real(rows, sc.n, rng, seen_text, key, origin)
        info[name].update(available=len(rows), dropped=dropped)
        made[name] = recs
    for recs in made.values():
        seen_numbers.update(question_numbers(r["question"]) for r in recs)
    seen_numbers.discard(())

    gen = [s for s in sets_gsm if s[2].source in GENERATED]
    if any(sc.source == "arith" for _, _, sc in gen):
        arith = _ArithStream(random.Random(f"arith:{seed}"))
        for name, key, sc in gen:
            if sc.source == "arith":
                made[name], per_step = arith.take(sc.n or 0, sc.steps, seen_numbers, seen_text, key)
                info[name] = {"source": "arith", "steps": sc.steps, "steps_made": per_step}
    sym = [(name, key, sc) for name, key, sc in gen if sc.source == "gsm_symbolic"]
    if sym:
        total = sum(sc.n or 0 for _, _, sc in sym)
        stream = _gsm_symbolic_stream(seed, size=4 * total + 1000)
        for name, key, sc in sym:
            made[name] = _take_unique(stream, sc.n or 0, seen_numbers, seen_text, key)
            info[name] = {"source": "gsm_symbolic"}

    label = {name: ("eval/" + name if name in cfg.eval else name) for name, _, _ in sets}
    labeled = {
        name: [{"id": f"{name}-{i}", **r} for i, r in enumerate(made[name])]
        for name, _, _ in sets_gsm
    }
    overlap = _overlaps(
        {label[name]: recs for name, recs in labeled.items()},
        {label[name] for name, _, _ in gen},
    )
    labeled |= drop_made  # DROP records keep their source ids
    info |= drop_info

    warnings = []
    if cfg.train.source == "gsm_symbolic" and any(sc.source in REAL for sc in cfg.eval.values()):
        warnings.append(
            "train is gsm_symbolic, whose templates are GSM8K test questions (other numbers): "
            "a GSM8K test eval set is then not fully held out"
        )
    for name, _, sc in sets:
        info[name]["n"] = sc.n
    stats = {
        "seed": seed,
        "counts": {"seed": 0, **{label[name]: len(labeled[name]) for name, _, _ in sets}},
        "sets": {label[name]: info[name] for name, _, _ in sets},
        "overlap": overlap,
        "warnings": warnings,
    }
    return labeled, stats


def prepare(cfg: DataConfig, out_dir: Path, seed: int) -> dict:
    """Make the sets of ``cfg`` and write them under ``out_dir``; return statistics.

    Writes (each atomically) ``train.jsonl`` (``{"id", "question"}`` only: labels never reach
    the self-improvement rounds), ``train_labels.jsonl`` (``{"id", "answer"}``, for analysis),
    ``seed.jsonl`` (labeled; empty when ``cfg.seed_set`` is None) and ``eval/<name>.jsonl``
    (labeled). Ids are ``<set>-<index>`` (``train-0``, ``seed-0``, ``<name>-0``), except in
    DROP-format eval sets (``{"id", "passage", "question", "answers"}``), which keep the ids of
    their source (``drop_v0_dev-<row>``, the hub's query id, ``gen-<seed>-<i>``). The
    ``overlap`` statistics cover the GSM8K-format sets.
    """
    out_dir = Path(out_dir)
    labeled, stats = _build(cfg, seed)
    write_jsonl(
        out_dir / "train.jsonl",
        ({"id": r["id"], "question": r["question"]} for r in labeled["train"]),
    )
    write_jsonl(
        out_dir / "train_labels.jsonl",
        ({"id": r["id"], "answer": r["answer"]} for r in labeled["train"]),
    )
    write_jsonl(out_dir / "seed.jsonl", labeled.get("seed", []))
    with atomic_path(out_dir / "eval", is_dir=True) as tmp:
        for name in sorted(cfg.eval):
            write_jsonl(tmp / f"{name}.jsonl", labeled[name])
    return stats


def make_set(name: str, source: SourceConfig, seed: int) -> tuple[list[dict], dict]:
    """One eval set on its own, in memory: ``(records, statistics)``.

    The records are those :func:`prepare` writes to ``eval/<name>.jsonl`` for the same name,
    source and seed when no other set claims any of its questions (e.g. the benchmarks use it
    to score the real GSM8K / DROP files in place).

    >>> recs, info = make_set("easy", SourceConfig(source="arith", n=2, steps=[1]), seed=0)
    >>> [r["id"] for r in recs], info["source"]
    (['easy-0', 'easy-1'], 'arith')
    """
    if not _NAME_RE.fullmatch(name) or name in RESERVED_NAMES:
        raise InputError(f"set name {name!r}: use only a-z, 0-9 and _ (not train or seed)")
    cfg = DataConfig(train=SourceConfig(source="arith", n=0, steps=[1]), eval={name: source})
    labeled, stats = _build(cfg, seed)
    return labeled[name], stats["sets"][f"eval/{name}"]
