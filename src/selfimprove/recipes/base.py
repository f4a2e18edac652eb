"""What a recipe is: :class:`Recipe` (everything one self-improvement method does), the per-question
:class:`Choice` it makes for the filter's one selection loop (:func:`selfimprove.methods.filter.
select`), the one rationale record schema, and how a path becomes a training rationale
(:func:`finalize_path`, :func:`keep_paths`).

Pure and light (core only): ``config`` imports the recipe list to validate ``method:`` and each
method's own params section.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from selfimprove.core.answers import cut_at_stop, strict_answer_span

if TYPE_CHECKING:
    from selfimprove.config.methods import FilterConfig

_ANSWER_TAIL = re.compile(r"[*}]*\.?")

#: the refine step of a method: nothing (refined.jsonl = samples.jsonl), the model's own
#: feedback + refinement of every path (needs the meta-skill stage), or the gold marks
#: (reads data/prepared/train_labels.jsonl)
RefineStep = Literal["none", "self_refine", "gold"]

#: optional keys of the rationale schema, in the order they appear in a record
RATIONALE_OPTIONAL = ("final_answers", "kept_texts", "method")

#: the filter's path counters (what :func:`keep_paths` counts) -> filter.json key, by default
PATH_STATS = {
    "candidates": "n_candidate_paths",
    "kept": "n_kept_paths",
    "duplicates": "n_duplicate_paths",
    "unusable": "n_unusable_paths",
}


class Knobs(BaseModel):
    """Base of a method's own params section: unknown keys refused, strict scalar types (no
    ``true`` for a number, no ``1`` for a boolean), no nan/inf."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


@dataclass(frozen=True)
class Choice:
    """What a recipe makes of one question; the selection loop keeps paths from it.

    ``paths``/``answers``: the paths to choose from and their answers (refined ones, or the
    samples plus a rationalization); ``eligible``: which may be kept (in order, capped, cleaned
    by :func:`finalize_path`, deduplicated); ``majority``/``agreement``: the question's vote
    (rationales, ``mean_agreement``); ``direct``: the direct formats' answer (None: the most
    common kept answer); ``selected``: the question trains (None: a path was kept; a vote may
    select a question whose paths all turn out unusable, and it still gets direct examples);
    ``counts``: the recipe's own counters (``Recipe.extra_stats``), summed over questions;
    ``weight``: the weight of its training examples (1: the key is left out of train.jsonl).
    """

    paths: list[str]
    answers: list[str | None]
    eligible: list[bool]
    majority: str | None
    agreement: float
    direct: str | None = None
    selected: bool | None = None
    counts: dict[str, int] = field(default_factory=dict)
    weight: float = 1.0


@dataclass(frozen=True)
class Round:
    """What a recipe's selection sees of the round: the filter settings, the method's own params
    section (``knobs``), the round's seed, what :attr:`Recipe.plan` returned, and ``select_with``
    (run the selection loop of another recipe on the same records)."""

    cfg: FilterConfig
    knobs: Any
    seed: int
    plan: Any = None
    select_with: Callable[[Recipe], tuple[list[dict], list[dict], dict]] | None = None


def read_train(round_dir: Path) -> list[dict]:
    """The training examples the filter wrote (the default train step input)."""
    from selfimprove.core.io import read_jsonl

    return read_jsonl(Path(round_dir) / "train.jsonl", required=["prompt", "completion"])


def _rationale_keys_default() -> tuple[str, ...]:
    return RATIONALE_OPTIONAL


@dataclass(frozen=True)
class Recipe:
    """Everything one self-improvement method does; the refine, filter and finetune stages ask it.

    * ``uses_labels``: reads the training questions' gold answers (a baseline, not label-free);
      ``needs_seed_set``: learns meta-skills from the labeled seed set (the meta_skill stage).
    * ``refine``: the refine step (:data:`RefineStep`); ``rationalize(knobs)``: with the gold
      step, also STaR's rationalization of unsolved questions.
    * selection: ``choose(i, record, round) -> Choice`` per question, ``needs_keys`` (keys of
      refined.jsonl it reads; per-path lists unless in ``scalar_keys``), ``cap(cfg, knobs)``
      (kept paths per question, 0 = all), ``plan(records, round)`` (a pass over the whole round
      first; its result is ``round.plan``; its ``stats`` go to filter.json), ``path_stats``
      (which path counters filter.json reports, under which key), ``extra_stats`` (the
      ``Choice.counts`` keys, 0 when no question counts one), ``rationale_keys`` (the optional
      keys of the rationale schema it writes).
    * training: ``objective`` (what finetune runs: "sft", or "dpo" on the filter's
      preference pairs), ``train_inputs(round_dir)``
      (the examples the train step reads; default the filter's train.jsonl), ``init`` (the
      ``finetune.init`` its paper uses; another value is kept, with a warning; None: any).
      ``pairs(records, filter_cfg, knobs) -> (rows, stats)``: the preference pairs the filter
      stage writes to pairs.jsonl (None: it writes an empty file).
    * ``params``: the method's own params section (a :class:`Knobs` model), named after the
      method (``params.yaml``: ``<name>: {...}``); None: it has none.
    """

    name: str
    summary: str
    choose: Callable[[int, dict, Round], Choice]
    uses_labels: bool = False
    needs_seed_set: bool = False
    refine: RefineStep = "none"
    rationalize: Callable[[Any], bool] | None = None
    needs_keys: tuple[str, ...] = ()
    scalar_keys: tuple[str, ...] = ()
    cap: Callable[[FilterConfig, Any], int] | None = None
    plan: Callable[[list[dict], Round], Any] | None = None
    path_stats: dict[str, str] = field(default_factory=lambda: dict(PATH_STATS))
    extra_stats: tuple[str, ...] = ()
    rationale_keys: tuple[str, ...] = field(default_factory=_rationale_keys_default)
    objective: str = "sft"
    train_inputs: Callable[[Path], list[dict]] = read_train
    init: Literal["previous", "base"] | None = None
    params: type[Knobs] | None = None
    pairs: Callable[[list[dict], FilterConfig, Any], tuple[list[dict], dict]] | None = None

    def knobs(self, params: Any) -> Any:
        """This method's own params section of a validated ``params`` (None when it has none)."""
        return getattr(params, self.name) if self.params is not None else None

    def max_paths(self, cfg: FilterConfig, knobs: Any) -> int:
        """Kept paths per question at most (0 = all)."""
        return cfg.max_paths_per_question if self.cap is None else self.cap(cfg, knobs)


def rationale_record(recipe: Recipe, rec: dict, choice: Choice, kept: list[bool],
                     texts: list[str], selected: bool) -> dict:  # fmt: skip
    """The one rationale schema (rationales.jsonl), with the optional keys the recipe writes."""
    full = {
        "id": rec["id"],
        "question": rec["question"],
        "paths": rec["paths"],
        "answers": rec["answers"],
        "final_answers": choice.answers,
        "majority": choice.majority,
        "agreement": choice.agreement,
        "kept": kept,
        "kept_texts": texts,
        "selected": selected,
        "method": recipe.name,
    }
    keys = recipe.rationale_keys
    return {k: v for k, v in full.items() if k not in RATIONALE_OPTIONAL or k in keys}


def finalize_path(path: str, answer: str) -> str | None:
    """A kept path as a training rationale ending in its answer sentence, or ``None`` if it is
    empty or its own "The answer is ..." contradicts ``answer``.

    The path is cut at stop sequences and stripped; text after the last "The answer is N" is
    dropped (its "." is kept or added); a path with no such sentence gets one appended.

    >>> finalize_path("9 * 2 = 18. The answer is $18. Janet is happy.\\n\\nQ: ...", "18")
    '9 * 2 = 18. The answer is $18.'
    >>> finalize_path("She makes 9 * 2 = 18 dollars", "18")
    'She makes 9 * 2 = 18 dollars. The answer is 18.'
    >>> finalize_path("The answer is 17.", "18") is None
    True
    """
    text = cut_at_stop(path).strip()
    if not text:
        return None
    span = strict_answer_span(text)
    if span is not None:
        _, end, stated = span
        if stated != answer:
            return None
        end = _ANSWER_TAIL.match(text, end).end()
        text = text[:end]
        return text if text.endswith(".") else text + "."
    if text[-1] not in ".!?":
        text += "."
    return f"{text} The answer is {answer}."


def keep_paths(
    paths: list[str], answers: list, eligible: list[bool], cap: int, dedupe: bool
) -> tuple[list[bool], list[str], list[str], dict[str, int]]:
    """Which eligible paths become training rationales: in order, at most ``cap`` (0 = all),
    each cleaned by :func:`finalize_path` (unusable ones dropped), duplicates dropped when
    ``dedupe``. Returns ``(kept flags, texts, their answers, counts)``, counts of the
    ``candidates`` (eligible paths), ``unusable`` and ``duplicates`` paths.

    >>> kept, texts, _, counts = keep_paths(
    ...     ["3 + 2 = 5.", "3 + 2 = 5.", "The answer is 4.", "2 + 3 = 5."],
    ...     ["5", "5", "5", "5"], [True, True, True, False], cap=0, dedupe=True)
    >>> kept, texts, counts
    ([True, False, False, False], ['3 + 2 = 5. The answer is 5.'], {'candidates': 3, \
'unusable': 1, 'duplicates': 1})
    """
    kept = [False] * len(paths)
    texts: list[str] = []
    kept_answers: list[str] = []
    counts = {"candidates": 0, "unusable": 0, "duplicates": 0}
    seen: set[str] = set()
    for j, (path, answer) in enumerate(zip(paths, answers, strict=True)):
        if not eligible[j]:
            continue
        counts["candidates"] += 1
        if cap and len(texts) >= cap:
            continue
        text = finalize_path(path, answer)
        if text is None:
            counts["unusable"] += 1
            continue
        if dedupe and text in seen:
            counts["duplicates"] += 1
            continue
        seen.add(text)
        kept[j] = True
        texts.append(text)
        kept_answers.append(answer)
    return kept, texts, kept_answers, counts
