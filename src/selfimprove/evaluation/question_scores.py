"""The compact per-question scores of a round: what git keeps of a study instead of the
predictions (``eval/<set>__<style>.jsonl``: outputs, answers, golds), which stay in DVC.

One file per round, ``<round>/question_scores.json`` (:data:`~selfimprove.evaluation.intervals.
QUESTION_SCORES`): the question ids of each set once, then per ``<set>__<style>`` the score of
every question on every accuracy metric of that style (0/1, or F1), enough to recompute every
interval and paired difference (:func:`~selfimprove.evaluation.intervals.read_scores` reads it
where the predictions are absent), and the sha256 of each predictions file it summarizes (so a
rerun's outputs can still be compared byte for byte from git alone)::

    {"format": 1,
     "sources": {"eval/arith__fewshot_cot.jsonl": "sha256:..."},
     "ids": {"arith": ["arith-0", "arith-1", ...]},
     "scores": {"arith__fewshot_cot": {"strict": [0, 1, ...], "flexible": [0, 1, ...]},
                "arith__sc": {"maj@1": [1, 0], "maj@8": [1, 1], "pass@8": [1, 1]}}}

A style's scores belong to the first ``len(scores)`` ids of its set (self-consistency scores
the first ``evaluate.sc_limit`` questions), else the style carries its own ``ids``.
Self-consistency predictions written before the evaluate step stored their ``scores`` are
scored here from their answers by the evaluate step's own functions; every style's means are
checked against metrics.json.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

from selfimprove.core.io import InputError, atomic_path, read_jsonl
from selfimprove.evaluation.intervals import QUESTION_SCORES, mean, question_scores

_SC_KEY = re.compile(r"^maj@(\d+)(?:_(?:em|f1))?$")


def _style_scores(preds: list[dict], values: Mapping) -> tuple[list, dict[str, list[float]]]:
    """``(ids, {metric: scores})`` of one style's predictions, for the metrics ``values``
    (its metrics.json entry) has."""
    ids, scores = question_scores(preds)
    wanted = [m for m, v in values.items() if isinstance(v, (int, float)) and m != "n"]
    if preds and "answers" in preds[0] and "scores" not in preds[0]:  # sc, before `scores`
        from selfimprove.evaluation.evaluate import drop_sc_scores, sc_scores

        ks = sorted({int(k.group(1)) for m in wanted if (k := _SC_KEY.match(m))})
        answers = [p["answers"] for p in preds]
        rows = (
            drop_sc_scores(answers, [p["golds"] for p in preds], ks)
            if "golds" in preds[0]
            else sc_scores(answers, [p["gold"] for p in preds], ks)
        )
        scores = {m: [r[m] for r in rows] for m in rows[0]} if rows else {}
    return ids, {m: scores[m] for m in wanted if m in scores}


def compact_round(round_dir: str | Path, metrics: Mapping) -> dict:
    """The question-scores contents of a round folder with predictions (``eval/``) and its
    nested ``metrics``; each metric's mean must equal metrics.json's value."""
    round_dir = Path(round_dir)
    out: dict = {"format": 1, "sources": {}, "ids": {}, "scores": {}}
    for set_name, styles in sorted(metrics.items()):
        if not isinstance(styles, Mapping):
            continue
        for style, values in sorted(styles.items()):
            path = round_dir / "eval" / f"{set_name}__{style}.jsonl"
            if not isinstance(values, Mapping) or not path.is_file():
                continue
            ids, scores = _style_scores(read_jsonl(path, required=["id"]), values)
            for metric, per in scores.items():
                if abs(mean(per) - float(values[metric])) > 1e-9:
                    raise InputError(
                        f"{path}: {metric} averages {mean(per)}, metrics.json says "
                        f"{values[metric]}; the predictions are not this round's"
                    )
            key = f"{set_name}__{style}"
            rel = path.relative_to(round_dir).as_posix()
            out["sources"][rel] = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
            known = out["ids"].setdefault(set_name, ids)
            if len(ids) > len(known) and ids[: len(known)] == known:
                out["ids"][set_name] = known = ids
            entry = {m: [int(x) if x in (0.0, 1.0) else x for x in v] for m, v in scores.items()}
            if ids != known[: len(ids)]:
                entry = {"ids": ids, **entry}
            out["scores"][key] = entry
    return out


def dumps(content: dict) -> str:
    """The file's text: one line per set's ids and per style's scores (diffs stay readable)."""
    lines = [f'{{"format": {content["format"]},']
    for name in ("sources", "ids", "scores"):
        items = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in content[name].items()]
        lines.append(f'"{name}": {{' + ("\n" + ",\n".join(items) if items else "") + "}"
                     + ("," if name != "scores" else "}"))
    return "\n".join(lines) + "\n"


def write_question_scores(round_dir: str | Path, content: dict) -> Path:
    """Write ``content`` (:func:`compact_round`) as the round's question-scores file."""
    path = Path(round_dir) / QUESTION_SCORES
    with atomic_path(path) as tmp:
        tmp.write_text(dumps(content), encoding="utf-8")
    return path
