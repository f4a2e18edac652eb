"""Loading one GSM8K-format set: a local jsonl file, the Hugging Face hub, GSM-Symbolic.

Every loader returns ``{"question", "answer"}`` records whose answer ends with a clean
``#### N`` line (:func:`final_answer` reads it). Failures are :class:`InputError` messages that
name the params key, the file and line, or the hub dataset, and say how to fix them.
:func:`load_hub_dataset` is the one way this package loads a hub dataset (the DROP hub loader,
:func:`selfimprove.data.drop.load_drop_hub`, uses it too).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from selfimprove.config.data import SourceConfig
from selfimprove.core.io import InputError, nonblank_line_numbers, read_jsonl, shorten

_FINAL_RE = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)\s*")
_GSM_SYMBOLIC_SUFFIX = " Give the result as your final answer. Do not include units."


# ----------------------------------------------------------------------------------------------
# the GSM8K answer format


def format_number(x: float | int | str) -> str:
    """A final answer as GSM8K writes it: no commas, integers without a decimal point.

    >>> format_number(12.0), format_number("1,080"), format_number(2.50), format_number(-3)
    ('12', '1080', '2.5', '-3')
    >>> format_number("9" * 400)
    Traceback (most recent call last):
    ...
    ValueError: not a finite number: inf
    """
    if isinstance(x, str):
        x = float(x.replace(",", ""))
    if not math.isfinite(float(x)):
        raise ValueError(f"not a finite number: {str(x)[:40]}")
    if float(x).is_integer():
        return str(int(x))
    return repr(float(x))


def final_answer(solution: str) -> str | None:
    """The ``N`` of a solution's last line ``#### N`` (commas removed), else None.

    >>> final_answer("5 + 3 = <<5+3=8>>8\\n#### 8")
    '8'
    >>> final_answer("#### 1,080"), final_answer("no marker"), final_answer("#### " + "9" * 400)
    ('1080', None, None)
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
    """Replace (or add) the ``#### N`` last line with a clean ``#### value``.

    >>> _with_final_line("2 + 2 = 4\\n####  4.0", "4")
    '2 + 2 = 4\\n#### 4'
    """
    lines = solution.rstrip().splitlines()
    if lines and lines[-1].strip().startswith("####"):
        lines = lines[:-1]
    return "\n".join([*lines, f"#### {value}"])


def _clean_real(rows: list[dict], where: Callable[[int], str]) -> list[dict]:
    """Check GSM8K-format rows and normalize the last line to ``#### N``."""
    out = []
    for i, row in enumerate(rows):
        q, a = row.get("question"), row.get("answer")
        if not isinstance(q, str) or not q.strip():
            raise InputError(
                f"{where(i)}: 'question' must be a non-empty string, got {shorten(q)}; fix the "
                "record or remove it"
            )
        if not isinstance(a, str):
            raise InputError(
                f"{where(i)}: 'answer' must be a GSM8K solution string ending '#### N', got "
                f"{type(a).__name__} {shorten(a, 40)}; fix the record or remove it"
            )
        value = final_answer(a)
        if value is None:
            last = (a.rstrip().splitlines() or [""])[-1]
            raise InputError(
                f"{where(i)}: 'answer' must end with a line '#### N' (N a number), "
                f"the last line is {last[:80]!r}; fix the record or remove it"
            )
        out.append({"question": q.strip(), "answer": _with_final_line(a, value)})
    return out


# ----------------------------------------------------------------------------------------------
# gsm_symbolic (reasoning_gym)


def gsm_symbolic_stream(seed: int, size: int) -> Iterator[dict]:
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
# a local jsonl file


def load_gsm8k_jsonl(path: str) -> list[dict]:
    """The records of a GSM8K-format ``.jsonl`` file; a bad record names its file and line."""
    p = Path(path)
    rows = read_jsonl(p, required=["question", "answer"])
    return _clean_real(rows, lambda i: f"{p} line {nonblank_line_numbers(p)[i]}")


# ----------------------------------------------------------------------------------------------
# the Hugging Face hub


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
            f"is set or there is no network) and the dataset is not cached; run once with "
            f"network access to cache it, or use {local} instead"
        )
    return InputError(
        f"{where}: could not load the dataset ({type(e).__name__}: {e}); check {check}, "
        f"or use {local}"
    )


def load_hub_dataset(
    where: str,
    args: tuple,
    kwargs: dict[str, Any],
    columns: tuple[str, ...],
    *,
    kind: str,
    local: str,
    check: str,
) -> Any:
    """``datasets.load_dataset(*args, **kwargs)``, checked to have ``columns``.

    Any failure (offline and not cached, unknown id or split, missing columns) is one
    :class:`InputError` starting with ``where`` that names the fix: ``check`` (what to check
    in the config), ``local`` (the offline alternative), ``kind`` (the dataset format needed).
    """
    try:
        import datasets

        ds = datasets.load_dataset(*args, **kwargs)
    except Exception as e:  # every failure becomes one clear message
        raise _hub_error(where, e, local, check) from None
    missing = [c for c in columns if c not in (ds.column_names or [])]
    if missing:
        raise InputError(
            f"{where}: the dataset has no column(s) {missing} (has {ds.column_names}); use {kind}"
        )
    return ds


def load_gsm8k_hub(cfg: SourceConfig, key: str) -> list[dict]:
    """The records of the GSM8K-format hub dataset of ``cfg`` (``key``: its params key)."""
    where = f"{key} ({cfg.hub_id!r}, config {cfg.hub_config!r}, split {cfg.split!r})"
    ds = load_hub_dataset(
        where,
        (cfg.hub_id, cfg.hub_config),
        {"split": cfg.split},
        ("question", "answer"),
        kind="a GSM8K-format dataset",
        local="`source: jsonl` with `path:` a local file in the GSM8K format",
        check="hub_id, hub_config and split",
    )
    rows = [{"question": r["question"], "answer": r["answer"]} for r in ds]
    return _clean_real(rows, lambda i: f"{where} row {i}")
