"""What every params section shares: strict scalar types, finite numbers, short quoted values.

:class:`Section` is the base of every section model. On top of pydantic's checks it refuses

* a boolean where a number is expected (``num_paths: true``: pydantic would read ``True`` as
  1) and a number or a string where a boolean is expected (``dedupe: 1``, ``dedupe: "no"``);
* a string or a float where an integer is expected (``"8"``, ``8.0``), a string where a number
  is (``"1e-4"``; params are read as DVC reads them, YAML 1.2, where ``1e-4`` is a float), a
  YAML set where a list is: nothing is coerced, as with the booleans;
* ``nan`` and ``inf`` in any number (``allow_inf_nan=False``).

:func:`short` shortens a value quoted in an error message (a huge value must not flood the
terminal). :func:`scheduler_names` lists the LR schedulers of the installed transformers without
importing it (importing ``transformers.trainer_utils`` imports torch: seconds).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

#: longest quoted value in an error message (characters)
MAX_SHOWN = 80

#: SchedulerType values of transformers 5 (used only when its source cannot be read)
_KNOWN_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
    "warmup_stable_decay", "greedy",
)  # fmt: skip

#: schedulers transformers knows but ``finetune`` cannot run, and why (it trains without an eval
#: strategy and passes no ``lr_scheduler_kwargs``)
UNSUPPORTED_SCHEDULERS = {
    "reduce_lr_on_plateau": "needs an eval strategy, and fine-tuning runs none",
    "greedy": "needs an eval strategy, and fine-tuning runs none",
    "cosine_with_min_lr": "needs min_lr in lr_scheduler_kwargs, which params cannot set",
    "cosine_warmup_with_min_lr": "needs min_lr in lr_scheduler_kwargs, which params cannot set",
    "warmup_stable_decay": "needs num_decay_steps in lr_scheduler_kwargs, which params cannot set",
}


def short(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr(value)``, cut to ``limit`` characters with a count of what was left out.

    >>> short("abc")
    "'abc'"
    >>> short("x" * 200, 20)
    "'xxxxxxxxxxxxxxxxxx… (202 chars)"
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(text)} chars)"


def clip(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis marks the cut), newlines as ``\\n``.

    >>> clip("a\\nb"), clip("x" * 10, 5)
    ('a\\\\nb', 'xxxx…')
    """
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _scalar_kinds(annotation: Any) -> tuple[set[type], bool]:
    """The types (bool/int/float/str; ``object`` for anything else: a model, a dict, a
    Literal) an annotation accepts, and whether as list items.

    >>> _scalar_kinds(int | None), _scalar_kinds(list[int]), _scalar_kinds(bool)
    (({<class 'int'>}, False), ({<class 'int'>}, True), ({<class 'bool'>}, False))
    """
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _scalar_kinds(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        kinds: set[type] = set()
        items = False
        for arg in typing.get_args(annotation):
            if arg is type(None):
                continue
            k, i = _scalar_kinds(arg)
            kinds |= k
            items = items or i
        return kinds, items
    if origin is list:
        args = typing.get_args(annotation)
        return (_scalar_kinds(args[0])[0] if args else {object}), True
    if annotation in (bool, int, float, str):
        return {annotation}, False
    return {object}, False


def _type_problem(value: Any, kinds: set[type]) -> str | None:
    """What is wrong with a scalar ``value`` for a field of ``kinds``, or None. Nothing is
    coerced: not "8" or 8.0 to 8, not 1 to true (pydantic's lax mode would).

    >>> _type_problem(True, {int}), _type_problem(1, {bool}), _type_problem(2, {int})
    ('a boolean is not a number; write a number', 'must be true or false, not 1', None)
    >>> _type_problem("8", {int})
    "must be a number, not the string '8'; write it without quotes"
    >>> _type_problem(8.0, {int}), _type_problem(8, {float})
    ('must be an integer, not 8.0', None)
    """
    if value is None:
        return None
    if kinds & {int, float} and bool not in kinds and isinstance(value, bool):
        return "a boolean is not a number; write a number"
    if kinds == {bool} and not isinstance(value, bool):
        return f"must be true or false, not {short(value)}"
    if object in kinds or not kinds & {int, float}:
        return None
    if isinstance(value, str) and str not in kinds:
        if value.strip().lower().lstrip("+-.") in ("nan", "inf", "infinity"):
            return "must be a finite number (nan and inf are not allowed)"
        return f"must be a number, not the string {short(value)}; write it without quotes"
    if isinstance(value, float) and float not in kinds:
        return f"must be an integer, not {short(value)}"
    return None


class Section(BaseModel):
    """Base of every params section: unknown keys, type mix-ups (a boolean, a string or a
    float where an integer belongs, a YAML set for a list) and nan/inf refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return value
        kinds, items = _scalar_kinds(field.annotation)
        if items and isinstance(value, (set, frozenset)):
            raise ValueError(
                "a YAML set (!!set or {a, b} without values) is not a list; write [a, b]"
            )
        values = value if items and isinstance(value, list) else [value]
        for v in values:
            problem = _type_problem(v, kinds)
            if problem:
                raise ValueError(problem)
        return value


@functools.cache
def scheduler_names() -> tuple[str, ...]:
    """The values of ``transformers.SchedulerType``, read from the installed transformers'
    source without importing it (falls back to the transformers 5 list).

    >>> "linear" in scheduler_names() and "cosine" in scheduler_names()
    True
    """
    try:
        spec = importlib.util.find_spec("transformers")
        roots = list(spec.submodule_search_locations or []) if spec else []
        tree = ast.parse(Path(roots[0], "trainer_utils.py").read_text(encoding="utf-8"))
    except (ImportError, IndexError, OSError, SyntaxError, ValueError):
        return _KNOWN_SCHEDULERS
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "SchedulerType":
            names = tuple(
                stmt.value.value
                for stmt in node.body
                if isinstance(stmt, ast.Assign)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            )
            return names or _KNOWN_SCHEDULERS
    return _KNOWN_SCHEDULERS


def scheduler_problem(name: str) -> str | None:
    """Why ``finetune.lr_scheduler: name`` cannot run, with the fix; None when it can.

    >>> scheduler_problem("linear") is None
    True
    >>> scheduler_problem("bogus")  # doctest: +ELLIPSIS
    "'bogus' is not a transformers LR scheduler; use one of: linear, cosine, ..."
    """
    usable = [s for s in scheduler_names() if s not in UNSUPPORTED_SCHEDULERS]
    if name in usable:
        return None
    if name in UNSUPPORTED_SCHEDULERS:
        return f"{short(name)} {UNSUPPORTED_SCHEDULERS[name]}; use one of: {', '.join(usable)}"
    return f"{short(name)} is not a transformers LR scheduler; use one of: {', '.join(usable)}"
