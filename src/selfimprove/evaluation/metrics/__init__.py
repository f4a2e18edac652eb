"""Scoring: GSM8K strict/flexible accuracy and DROP EM/F1 (official algorithm).

The same numbers are available as Hugging Face ``evaluate`` modules that load offline from
files in this package: ``load_metric("gsm8k")`` / ``load_metric("drop")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from selfimprove.evaluation.metrics.drop import (
    DROP_STOP_SEQUENCES,
    drop_em_f1,
    drop_record_problem,
    extract_drop_answer,
    normalize_span,
    score_drop,
    score_drop_one,
    split_spans,
)
from selfimprove.evaluation.metrics.gsm8k import gsm8k_record_problem, score_gsm8k, score_gsm8k_one

if TYPE_CHECKING:
    import evaluate

__all__ = [
    "DROP_STOP_SEQUENCES",
    "METRIC_MODULES",
    "drop_em_f1",
    "drop_record_problem",
    "extract_drop_answer",
    "gsm8k_record_problem",
    "load_metric",
    "metric_module_path",
    "normalize_span",
    "score_drop",
    "score_drop_one",
    "score_gsm8k",
    "score_gsm8k_one",
    "split_spans",
]

METRIC_MODULES: dict[str, str] = {"gsm8k": "hf_gsm8k.py", "drop": "hf_drop.py"}


def metric_module_path(name: str) -> Path:
    """Path of the ``evaluate`` module file for ``name`` ("gsm8k" or "drop").

    >>> metric_module_path("drop").name
    'hf_drop.py'
    >>> metric_module_path("squad")
    Traceback (most recent call last):
    ...
    ValueError: unknown metric 'squad'; choose one of: gsm8k, drop
    """
    if name not in METRIC_MODULES:
        raise ValueError(f"unknown metric {name!r}; choose one of: {', '.join(METRIC_MODULES)}")
    return Path(__file__).resolve().parent / METRIC_MODULES[name]


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """``evaluate.load`` of our ``gsm8k`` or ``drop`` module by local path (no Hub access).

    Keyword arguments go to ``evaluate.load``; ``keep_in_memory`` defaults to True so nothing
    is written under ``~/.cache/huggingface/evaluate``.
    """
    import evaluate

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(metric_module_path(name)), **kwargs)
