"""A round's evaluation in two files: the headline DVC compares, and every figure.

- ``data/rounds/<r>/metrics.json`` (the DVC metric: ``dvc metrics show``/``diff``, ``dvc exp
  show``): per eval set the headline accuracy of each style -- ``strict`` (GSM8K format) or
  ``f1`` (DROP) of a greedy style, ``maj@k``/``maj@k_f1`` (the largest k) of self-consistency.
- ``data/rounds/<r>/scores.json`` (a plain output): everything the evaluate step computed, as
  one nested mapping (the headline again, ``flexible``/``em``/``no_answer``, ``maj@1``,
  ``pass@m``, the counts ``n``, the intervals ``ci``, ``label_free``). MLflow, the report,
  ``benchmarks/compare_default.py`` and ``benchmarks/multi_seed.py`` read this one.

Runs made before the split (the committed references in ``benchmarks/results/``) have one
``metrics.json`` holding everything: :func:`read_round_scores` reads either layout.
"""

from __future__ import annotations

import re
from pathlib import Path

#: the DVC metric (headline) and the full scores, per round folder
METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.json"

_MAJ = re.compile(r"maj@(\d+)(_f1)?$")


def _headline_key(style: dict) -> str | None:
    """The one figure of a style worth a column.

    >>> _headline_key({"n": 4, "strict": 0.5, "flexible": 0.6, "ci": {}})
    'strict'
    >>> _headline_key({"n": 4, "em": 0.1, "f1": 0.2})
    'f1'
    >>> _headline_key({"maj@1": 0.4, "maj@8": 0.5, "pass@8": 0.9})
    'maj@8'
    >>> _headline_key({"maj@1_em": 0.1, "maj@1_f1": 0.2, "maj@8_em": 0.1, "maj@8_f1": 0.3})
    'maj@8_f1'
    """
    for key in ("strict", "f1"):
        if key in style:
            return key
    drop = any(k.endswith("_f1") for k in style)
    maj = [(int(m[1]), k) for k in style if (m := _MAJ.match(k)) and bool(m[2]) == drop]
    return max(maj)[1] if maj else None


def headline(scores: dict) -> dict:
    """The DVC metric of a round: ``{set: {style: {key: value}}}`` with one key per style
    (same nesting and key names as in ``scores``, so ``arith.fewshot_cot.strict`` names the
    same figure in both files).

    >>> headline({"arith": {"fewshot_cot": {"n": 4, "strict": 0.5, "ci": {"level": 0.95}},
    ...                     "sc": {"n": 2, "maj@1": 0.5, "maj@4": 1.0, "pass@4": 1.0}}})
    {'arith': {'fewshot_cot': {'strict': 0.5}, 'sc': {'maj@4': 1.0}}}
    """
    out: dict = {}
    for name, styles in scores.items():
        if not isinstance(styles, dict):
            continue
        for style, figures in styles.items():
            key = _headline_key(figures) if isinstance(figures, dict) else None
            if key is not None:
                out.setdefault(name, {})[style] = {key: figures[key]}
    return out


def scores_path(folder: str | Path) -> Path:
    """The file holding every score of the round in ``folder``: ``scores.json``, or for a run
    made before the split its ``metrics.json``."""
    folder = Path(folder)
    full = folder / SCORES_FILE
    return full if full.exists() or not (folder / METRICS_FILE).exists() else folder / METRICS_FILE


def read_round_scores(folder: str | Path) -> dict:
    """Every score of the round in ``folder`` (:func:`scores_path`), nested set -> style; bad
    JSON or another type is an InputError naming the file."""
    import json

    from selfimprove.core.io import InputError

    path = scores_path(folder)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e.msg}); rerun the evaluate stage") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object; rerun the evaluate stage")
    return data
