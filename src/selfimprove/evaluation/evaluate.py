"""The evaluate step: held-out accuracy of a round's model, greedy per prompt style and
self-consistency maj@k, with per-example predictions.

Two set formats, told apart by their records (:func:`set_format`):

* GSM8K (``{"id", "question", "answer"}``): the number after "The answer is" (``strict``) and
  the last number (``flexible``) against the gold ``#### N``; prompts from
  :func:`selfimprove.core.prompts.build_prompt`, generation stops at
  :data:`selfimprove.core.answers.STOP_SEQUENCES`.
* DROP (``{"id", "passage", "question", "answers"}``): DROP EM and F1
  (:func:`selfimprove.evaluation.metrics.drop.drop_em_f1`) of the answer read from the output by
  :func:`selfimprove.evaluation.metrics.drop.extract_drop_answer`; prompts from
  :func:`selfimprove.core.prompts.drop.drop_prompt` (same style names, its own 3 exemplars, so
  ``n_shots`` does not apply), generation stops at
  :data:`selfimprove.core.prompts.drop.DROP_STOP_SEQUENCES` (never at "."). Self-consistency
  votes over the extracted answers keyed by
  :func:`selfimprove.evaluation.metrics.drop.normalize_span` and reports EM/F1 of the majority
  answer.

Cost: the greedy pass of a style is one sampler call over every set of the same format (same
prefix, stops and parameters), so the decoding batch stays full across sets; maj@k runs one call
per set, so a path's seed stays a function of (seed, its question's index in the set, path).

Each question is scored once, here: a greedy prediction record carries its scores
(``correct_strict`` / ``correct_flexible``, or DROP ``em`` / ``f1``), a self-consistency record
its ``scores`` (maj@k and pass@m, from :func:`sc_scores` / :func:`drop_sc_scores`); every
accuracy in the metrics is the mean of those scores, and the intervals
(:mod:`selfimprove.evaluation.intervals`) bootstrap the same scores read back from the records.

Metrics come back as one nested dict; the stage writes it as the DVC metrics file and the track
stage logs the very same dict (flattened with ".") to MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from selfimprove.config.evaluation import EvaluateConfig
from selfimprove.core.answers import (
    STOP_SEQUENCES,
    answers_match,
    extract_answer,
    extract_flexible,
    extract_strict,
)
from selfimprove.core.answers import gold_answer as _gold
from selfimprove.core.io import InputError
from selfimprove.core.prompts import build_prompt
from selfimprove.core.prompts.drop import DROP_STOP_SEQUENCES, drop_prompt
from selfimprove.core.voting import maj_at_k
from selfimprove.evaluation.intervals import mean, scores_by_metric
from selfimprove.evaluation.metrics.drop import drop_em_f1, extract_drop_answer, normalize_span
from selfimprove.sampling.base import SamplingParams
from selfimprove.sampling.pool import Call, run_calls

if TYPE_CHECKING:
    from selfimprove.config.runtime import ComputeConfig, SamplerConfig


def score_prediction(output: str, gold: str) -> dict:
    """Strict and flexible scoring of one raw model output.

    >>> score_prediction(" 3 + 4 = 7. The answer is 7.\\n\\nQ: next", "#### 7")
    {'gold': '7', 'strict': '7', 'flexible': '7', 'correct_strict': True, 'correct_flexible': True}
    """
    g = _gold(gold)
    strict, flexible = extract_strict(output), extract_flexible(output)
    return {
        "gold": g,
        "strict": strict,
        "flexible": flexible,
        "correct_strict": answers_match(strict, g),
        "correct_flexible": answers_match(flexible, g),
    }


def set_format(records: list[dict], name: str = "?") -> Literal["gsm", "drop"]:
    """``"drop"`` when the records have ``passage`` and ``answers``, else ``"gsm"``.

    Every record must have the keys of its set's format (``id``, ``question`` and ``answer``;
    or ``id``, ``passage``, ``question`` and ``answers``), else :class:`InputError`.

    >>> set_format([{"id": "a", "question": "1+1?", "answer": "#### 2"}])
    'gsm'
    >>> set_format([{"id": "d", "passage": "P", "question": "Q?", "answers": [["7"]]}])
    'drop'
    """
    if not records:
        return "gsm"
    fmt: Literal["gsm", "drop"] = (
        "drop" if "passage" in records[0] and "answers" in records[0] else "gsm"
    )
    need = (
        ("id", "passage", "question", "answers") if fmt == "drop" else ("id", "question", "answer")
    )
    for i, r in enumerate(records):
        missing = [k for k in need if k not in r]
        if missing:
            raise InputError(
                f"eval set {name!r} record {i} (id {r.get('id', '?')!r}): missing key(s) "
                f"{missing}; every record of a {fmt.upper()}-format set needs {list(need)} "
                "(rerun the data stage)"
            )
    return fmt


def score_drop_prediction(output: str, answers: list) -> dict:
    """DROP EM/F1 of one raw model output against the gold alternatives.

    >>> score_drop_prediction(" 42 - 25 = 17. So the answer is 17.\\n\\nPassage: x", [["17"]])
    {'golds': [['17']], 'extracted': '17', 'em': 1.0, 'f1': 1.0}
    """
    extracted = extract_drop_answer(output)
    em, f1 = drop_em_f1(extracted, answers)
    return {"golds": answers, "extracted": extracted, "em": em, "f1": f1}


def summarize_drop(preds: list[dict]) -> dict:
    """Mean DROP EM and F1 and the no-answer rate (nothing extracted) of scored predictions.

    >>> summarize_drop([{"em": 1.0, "f1": 1.0, "extracted": "7"},
    ...                 {"em": 0.0, "f1": 0.5, "extracted": ""}])
    {'n': 2, 'em': 0.5, 'f1': 0.75, 'no_answer': 0.5}
    """
    n = len(preds)
    if not n:
        return {"n": 0, "em": 0.0, "f1": 0.0, "no_answer": 0.0}
    scores = scores_by_metric(preds)
    return {
        "n": n,
        "em": mean(scores["em"]),
        "f1": mean(scores["f1"]),
        "no_answer": sum(not p["extracted"] for p in preds) / n,
    }


def drop_majority(answers: list[str], k: int) -> str | None:
    """maj@k over extracted DROP answers: votes are keyed by the normalized span; the winner is
    returned as first written. Empty answers never win (None when all are empty).

    >>> drop_majority(["the Bears", "Chicago", "Bears.", "Chicago"], 4)  # tie: first wins
    'the Bears'
    >>> drop_majority(["7", "7.0", "", "8"], 4), drop_majority(["", ""], 2)
    ('7', None)
    """
    keys = [normalize_span(a) or None for a in answers]
    key = maj_at_k(keys, k)
    return None if key is None else answers[keys.index(key)]


def drop_sc_scores(answers_per_q: list[list[str]], golds: list[list], ks: list[int]) -> list[dict]:
    """Per question: DROP maj@k EM/F1 for each k and pass@m (best EM / F1 of any path), the
    scores :func:`drop_self_consistency` averages.

    >>> drop_sc_scores([["7", "8", "7"]], [[["7"]]], [1])
    [{'maj@1_em': 1.0, 'maj@1_f1': 1.0, 'pass@3_em': 1.0, 'pass@3_f1': 1.0}]
    """
    m = max((len(a) for a in answers_per_q), default=0)
    out = []
    for a, g in zip(answers_per_q, golds, strict=True):
        row: dict[str, float] = {}
        for k in ks:
            maj = drop_majority(a, k)
            row[f"maj@{k}_em"], row[f"maj@{k}_f1"] = (
                drop_em_f1(maj, g) if maj is not None else (0.0, 0.0)
            )
        row[f"pass@{m}_em"], row[f"pass@{m}_f1"] = (
            max((drop_em_f1(x, g)[j] for x in a if x), default=0.0) for j in (0, 1)
        )
        out.append(row)
    return out


def drop_self_consistency(answers_per_q: list[list[str]], golds: list[list], ks: list[int]) -> dict:
    """DROP maj@k EM/F1 for each k, and pass@m (best EM / F1 of any path: an upper bound): the
    means of :func:`drop_sc_scores`.

    >>> drop_self_consistency([["7", "8", "7"], ["Bears", "", "Lions"]],
    ...                       [[["7"]], [["Lions"]]], [1, 3])  # doctest: +NORMALIZE_WHITESPACE
    {'maj@1_em': 0.5, 'maj@1_f1': 0.5, 'maj@3_em': 0.5, 'maj@3_f1': 0.5,
     'pass@3_em': 1.0, 'pass@3_f1': 1.0}
    """
    return _means(drop_sc_scores(answers_per_q, golds, ks), ks, answers_per_q, drop=True)


def _sc_names(ks: list[int], answers_per_q: list, drop: bool) -> list[str]:
    """The self-consistency metrics, in metrics.json's order (maj@k..., pass@m; DROP: each as
    ``_em`` and ``_f1``)."""
    m = max((len(a) for a in answers_per_q), default=0)
    names = [f"maj@{k}" for k in ks] + [f"pass@{m}"]
    return [f"{n}_{sub}" for n in names for sub in ("em", "f1")] if drop else names


def _means(rows: list[dict], ks: list[int], answers_per_q: list, drop: bool) -> dict:
    """Each metric's mean over the questions' score rows."""
    return {name: mean([r[name] for r in rows]) for name in _sc_names(ks, answers_per_q, drop)}


def summarize(preds: list[dict]) -> dict:
    """Accuracy (strict, flexible) and the no-answer rate of scored predictions.

    >>> summarize([{"correct_strict": True, "correct_flexible": True, "strict": "1"},
    ...            {"correct_strict": False, "correct_flexible": True, "strict": None}])
    {'n': 2, 'strict': 0.5, 'flexible': 1.0, 'no_answer': 0.5}
    """
    n = len(preds)
    if not n:
        return {"n": 0, "strict": 0.0, "flexible": 0.0, "no_answer": 0.0}
    scores = scores_by_metric(preds)
    return {
        "n": n,
        "strict": mean(scores["strict"]),
        "flexible": mean(scores["flexible"]),
        "no_answer": sum(p["strict"] is None for p in preds) / n,
    }


def sc_scores(answers_per_q: list[list[str | None]], golds: list[str], ks: list[int]) -> list[dict]:
    """Per question: maj@k for each k and pass@m (any path right), 1.0 or 0.0; the scores
    :func:`self_consistency` averages.

    >>> sc_scores([["2", "3", "2"]], ["2"], [1, 3])
    [{'maj@1': 1.0, 'maj@3': 1.0, 'pass@3': 1.0}]
    """
    m = max((len(a) for a in answers_per_q), default=0)
    return [
        {f"maj@{k}": float(answers_match(maj_at_k(a, k), g)) for k in ks}
        | {f"pass@{m}": float(any(answers_match(x, g) for x in a))}
        for a, g in zip(answers_per_q, golds, strict=True)
    ]


def self_consistency(
    answers_per_q: list[list[str | None]], golds: list[str], ks: list[int]
) -> dict:
    """maj@k for each k and pass@m (any path right: an upper bound) over questions: the means
    of :func:`sc_scores`.

    >>> self_consistency([["2", "3", "2"], ["5", None, "4"]], ["2", "4"], [1, 3])
    {'maj@1': 0.5, 'maj@3': 0.5, 'pass@3': 1.0}
    """
    return _means(sc_scores(answers_per_q, golds, ks), ks, answers_per_q, drop=False)


def evaluate(
    model_dir: str | Path,
    eval_sets: dict[str, list[dict]],
    cfg: EvaluateConfig,
    seed: int,
    refined: Mapping[str, dict] | None = None,
    sampler_cfg: SamplerConfig | None = None,
    compute: ComputeConfig | None = None,
) -> tuple[dict, dict[str, list[dict]]]:
    """Evaluate one model on every set; return (metrics, predictions by "<set>__<style>").

    ``refined``: with ``cfg.refine_iterations`` > 0, the refined outputs of every GSM8K-format
    set and CoT style (:func:`selfimprove.evaluation.refine_at_eval.refine_for_evaluation`, the
    ``evaluate_refine`` stage), scored here as ``<style>_refined``.
    ``sampler_cfg``: the ``sampler`` params section (``None`` = its defaults); ``compute``:
    the ``compute`` section, whose ``processes`` may run the passes side by side (``None``: one
    process).

    ``metrics[set][style]`` is ``{n, strict, flexible, no_answer}`` for a GSM8K-format set and
    ``{n, em, f1, no_answer}`` for a DROP-format one; ``metrics[set]["sc"]`` holds maj@k
    (accuracy, or ``maj@k_em``/``maj@k_f1`` for DROP) on the first ``sc_limit`` questions.
    No set, or a set without records, is :class:`InputError` (not metrics of 0.0 or ``{}``).
    """
    if not eval_sets:
        raise InputError(
            "evaluate: no eval sets given; define data.eval sets and rerun `dvc repro data`"
        )
    empty = [name for name, records in eval_sets.items() if not records]
    if empty:
        raise InputError(
            f"evaluate: eval set(s) {empty} have no records; an empty set cannot be scored "
            "(rerun `dvc repro data`, data.eval.<name>.n >= 1)"
        )
    formats = {name: set_format(records, name) for name, records in eval_sets.items()}
    limited = {n: (r[: cfg.limit] if cfg.limit else r) for n, r in eval_sets.items()}
    # greedy passes: one sampler call per (format, style) over all the sets of that format (same
    # prefix, stops and params), so the decoding batch stays full across sets; self-consistency
    # samples likewise, one call per format over every set's first sc_limit questions (each
    # question keeps the seeds of its index in its own set). The calls are independent: with
    # compute.processes > 1 they run side by side, with the same outputs.
    passes: list[_Pass] = []
    for fmt in ("gsm", "drop"):
        names = [n for n in limited if formats[n] == fmt]
        if names:
            stop = tuple(DROP_STOP_SEQUENCES) if fmt == "drop" else STOP_SEQUENCES
            for style in cfg.styles:
                sets = {n: limited[n] for n in names}
                passes.append(_Pass(fmt, sets, style, _greedy(cfg, seed, stop), style, False))
    for fmt in ("gsm", "drop") if cfg.sc_paths else ():
        names = [n for n in limited if formats[n] == fmt]
        if names:
            stop = tuple(DROP_STOP_SEQUENCES) if fmt == "drop" else STOP_SEQUENCES
            sets = {n: _sc_records(limited[n], cfg) for n in names}
            params = _sampled(cfg, seed, stop)
            passes.append(_Pass(fmt, sets, cfg.sc_style, params, f"maj@{cfg.sc_paths}", True))
    calls = [_pooled_call(p.fmt, p.sets, p.style, cfg, p.params, p.label) for p in passes]
    results = run_calls(calls, model_dir, sampler_cfg, compute)
    greedy: dict[str, dict[str, list]] = {n: {} for n in limited}
    sampled: dict[str, list] = {}
    for p, (outs, _stats) in zip(passes, results, strict=True):
        for name, got in _by_set(p.sets, outs).items():
            if p.self_consistency:
                sampled[name] = got
            else:
                greedy[name][p.style] = got
    metrics: dict = {}
    predictions: dict[str, list[dict]] = {}
    for name, records in limited.items():
        if formats[name] == "gsm":
            metrics[name] = _evaluate_gsm(
                name,
                records,
                cfg,
                predictions,
                greedy[name],
                sampled.get(name),
                refined,
            )
        else:
            metrics[name] = _evaluate_drop(
                name, records, cfg, predictions, greedy[name], sampled.get(name)
            )
    return metrics, predictions


def refined_styles(cfg: EvaluateConfig) -> list[str]:
    """The styles whose greedy outputs are also scored after inference-time refinement: the
    chain-of-thought ones, with ``refine_iterations`` > 0 (GSM8K-format sets only).

    >>> cfg = EvaluateConfig(styles=["zeroshot_cot", "fewshot_direct"], refine_iterations=1)
    >>> refined_styles(cfg)
    ['zeroshot_cot']
    """
    return [s for s in cfg.styles if s.endswith("_cot")] if cfg.refine_iterations else []


def _sc_records(records: list[dict], cfg: EvaluateConfig) -> list[dict]:
    return records[: cfg.sc_limit] if cfg.sc_limit else records


class _Pass(NamedTuple):
    """One sampler call of :func:`evaluate`: every set of a format, in one style."""

    fmt: str
    sets: dict[str, list[dict]]
    style: str
    params: SamplingParams
    label: str
    self_consistency: bool


def _pooled_call(fmt, sets: dict[str, list[dict]], style, cfg, params, label) -> Call:
    """The one sampler call for every set in ``sets`` (all of format ``fmt``) in ``style``
    (the same prefix and stops: the decoding batch stays full across sets); its outputs are
    cut back per set with :func:`split_by_sizes`.

    Question ``i`` of a set samples with the seeds of index ``i`` (``index_offset`` per prompt),
    so a set's samples do not depend on the other sets; greedy rows draw no random numbers at
    all. Pooling changes only the float rounding of the logits through the batch mix (at most a
    rare near-tie flip, as with another ``batch_size``)."""
    prefixes, suffixes, where = set(), [], []
    for records in sets.values():
        prefix, s = _prompts(fmt, records, style, cfg.n_shots)
        prefixes.add(prefix)
        suffixes += s
        where += range(len(records))
    if len(prefixes) != 1:
        raise AssertionError(f"internal error: the {fmt} sets' {style!r} prefixes differ")
    return Call(prefixes.pop(), suffixes, params, f"eval {'+'.join(sets)}/{label}", where)


def _pooled_pass(sampler, fmt, sets: dict[str, list[dict]], style, cfg, params, label):
    """:func:`_pooled_call` run on ``sampler``: its outputs by set name."""
    call = _pooled_call(fmt, sets, style, cfg, params, label)
    outs = sampler.sample(call.prefix, call.prompts, params, call.desc, call.index_offset)
    return _by_set(sets, outs)


def _by_set(sets: dict[str, list[dict]], outs: list) -> dict[str, list]:
    """A pooled call's outputs cut back into ``sets``' runs, by set name."""
    return dict(zip(sets, split_by_sizes(outs, [len(r) for r in sets.values()]), strict=True))


def _prompts(fmt: str, records: list[dict], style: str, n_shots: int) -> tuple[str, list[str]]:
    """The shared prefix and per-record suffixes of ``records`` in ``style``."""
    if fmt == "drop":
        return _drop_prompts(records, style)
    return (
        build_prompt("", style, n_shots)[0],
        [build_prompt(r["question"], style, n_shots)[1] for r in records],
    )


def split_by_sizes(items: list, sizes: list[int]) -> list[list]:
    """``items`` cut into consecutive runs of the given sizes (their sum must be ``len(items)``).

    >>> split_by_sizes([1, 2, 3, 4, 5], [2, 0, 3])
    [[1, 2], [], [3, 4, 5]]
    """
    if sum(sizes) != len(items):
        raise AssertionError(f"internal error: {len(items)} items, sizes {sizes}")
    out, start = [], 0
    for n in sizes:
        out.append(items[start : start + n])
        start += n
    return out


def _predictions(records: list[dict], outs: list, score) -> list[dict]:
    """Per-example prediction records of a greedy pass: id, question, output, finish reason and
    ``score(output, record)``."""
    return [
        {
            "id": r["id"],
            "question": r["question"],
            "output": o[0].text,
            "finish": o[0].finish_reason,
        }
        | score(o[0].text, r)
        for r, o in zip(records, outs, strict=True)
    ]


def _greedy(cfg: EvaluateConfig, seed: int, stop: tuple[str, ...]):
    return SamplingParams(
        n=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens, stop=stop, seed=seed
    )


def _sampled(cfg: EvaluateConfig, seed: int, stop: tuple[str, ...]):
    return SamplingParams(
        n=cfg.sc_paths,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        stop=stop,
        seed=seed,
    )


def _evaluate_gsm(
    name: str,
    records: list[dict],
    cfg: EvaluateConfig,
    predictions: dict,
    greedy: dict[str, list],
    sampled: list | None,
    refined: Mapping[str, dict] | None = None,
) -> dict:
    """Metrics of one GSM8K-format set from its greedy outputs per style (``greedy``), plus
    the refined outputs (``refined``, see :func:`evaluate`) and self-consistency (from
    ``sampled``: the maj@k samples of its first ``sc_limit`` questions, see ``_pooled_call``)."""
    metrics: dict = {}
    for style in cfg.styles:
        preds = _predictions(
            records, greedy[style], lambda text, r: score_prediction(text, r["answer"])
        )
        predictions[f"{name}__{style}"] = preds
        metrics[style] = summarize(preds)
        if style in refined_styles(cfg):
            got = (refined or {}).get(f"{name}__{style}")
            if got is None or got["ids"] != [r["id"] for r in records]:
                raise InputError(
                    f"evaluate.refine_iterations={cfg.refine_iterations}: no refined outputs of "
                    f"set {name!r} style {style!r} for these questions; the evaluate_refine "
                    "stage makes them (`dvc repro`)"
                )
            rpreds = [
                {"id": r["id"], "question": r["question"], "output": o}
                | score_prediction(o, r["answer"])
                for r, o in zip(records, got["outputs"], strict=True)
            ]
            predictions[f"{name}__{style}_refined"] = rpreds
            metrics[f"{style}_refined"] = summarize(rpreds) | {"refine": got["refine"]}
    if sampled is not None:
        sc_records = _sc_records(records, cfg)
        answers = [[extract_answer(c.text) for c in o] for o in sampled]
        golds = [_gold(r["answer"]) for r in sc_records]
        rows = sc_scores(answers, golds, cfg.sc_k)
        predictions[f"{name}__sc"] = [
            {
                "id": r["id"],
                "gold": g,
                "answers": a,
                "majority": maj_at_k(a, cfg.sc_paths),
                "scores": row,
            }
            for r, g, a, row in zip(sc_records, golds, answers, rows, strict=True)
        ]
        metrics["sc"] = {"n": len(sc_records)} | _means(rows, cfg.sc_k, answers, drop=False)
    return metrics


def _drop_prompts(records: list[dict], style: str) -> tuple[str, list[str]]:
    """The shared prefix and the per-record suffixes of a DROP style (the prefix must not
    depend on the record, so the sampler runs it once)."""
    pairs = [drop_prompt(r, style) for r in records]
    prefixes = {p for p, _ in pairs}
    if len(prefixes) > 1:
        raise AssertionError(f"internal error: drop_prompt({style!r}) prefix depends on the record")
    return (prefixes.pop() if prefixes else ""), [s for _, s in pairs]


def _evaluate_drop(
    name: str,
    records: list[dict],
    cfg: EvaluateConfig,
    predictions: dict,
    greedy: dict[str, list],
    sampled: list | None,
) -> dict:
    """Metrics of one DROP-format set from its greedy outputs per style, plus maj@k from
    ``sampled`` (see ``_pooled_call``)."""
    metrics: dict = {}
    for style in cfg.styles:
        preds = _predictions(
            records, greedy[style], lambda text, r: score_drop_prediction(text, r["answers"])
        )
        predictions[f"{name}__{style}"] = preds
        metrics[style] = summarize_drop(preds)
    if sampled is not None:
        sc_records = _sc_records(records, cfg)
        answers = [[extract_drop_answer(c.text) for c in o] for o in sampled]
        golds = [r["answers"] for r in sc_records]
        rows = drop_sc_scores(answers, golds, cfg.sc_k)
        predictions[f"{name}__sc"] = [
            {
                "id": r["id"],
                "golds": g,
                "answers": a,
                "majority": drop_majority(a, cfg.sc_paths),
                "scores": row,
            }
            for r, g, a, row in zip(sc_records, golds, answers, rows, strict=True)
        ]
        metrics["sc"] = {"n": len(sc_records)} | _means(rows, cfg.sc_k, answers, drop=True)
    return metrics
