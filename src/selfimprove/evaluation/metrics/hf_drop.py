"""DROP EM/F1 as a Hugging Face ``evaluate`` metric module (loads offline, by path).

Predictions are raw model texts (reduced by ``extract_drop_answer``) or lists of spans;
references are lists of gold alternatives, each a string (one span) or a list of spans.

Usage (``load_metric`` calls ``evaluate.load`` with this file's path)::

    from selfimprove.evaluation.metrics import load_metric
    load_metric("drop").compute(predictions=["So the answer is 7."], references=[["7"]])
    # {'n': 1, 'em': 1.0, 'f1': 1.0}
"""

from __future__ import annotations

import datasets
import evaluate

from selfimprove.evaluation.metrics.drop import extract_drop_answer, score_drop

_DESCRIPTION = (
    "DROP exact match and F1 by the official AllenNLP drop_eval algorithm (per-span "
    "normalization, numbers must match, optimal one-to-one span alignment, max over gold "
    "alternatives)."
)
_INPUTS = """
Args:
    predictions: list of raw model texts (str; the answer after the last 'answer is' is scored)
        or list of span lists (list[str]).
    references: list of gold alternatives per example: list[str] (each alternative one span)
        or list[list[str]] (each alternative a list of spans).
Returns:
    n: number of examples; em, f1: means in [0, 1] (None when n == 0).
"""
_CITATION = """@inproceedings{dua2019drop,
  title={{DROP}: A Reading Comprehension Benchmark Requiring Discrete Reasoning Over Paragraphs},
  author={Dua, Dheeru and others}, booktitle={NAACL}, year={2019}}"""

_SPANS = datasets.Sequence(datasets.Value("string"))


def _spans(value: object, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(s, str) for s in value):
        return list(value)
    raise TypeError(f"{what} must be a string or a non-empty list of strings, got {value!r}")


def _canonical_prediction(prediction: object) -> list[str]:
    """Raw text -> [extracted answer]; a list of spans is kept (as in ``score_drop_one``)."""
    if isinstance(prediction, str):
        return [extract_drop_answer(prediction)]
    return _spans(prediction, "a prediction")


def _canonical_reference(reference: object) -> list[list[str]]:
    if isinstance(reference, str) or not isinstance(reference, (list, tuple)) or not reference:
        raise TypeError(
            f"a reference must be a non-empty list of gold alternatives, got {reference!r}"
        )
    return [_spans(alt, "a gold alternative") for alt in reference]


class DropEmF1(evaluate.Metric):
    """DROP EM and F1 (see :func:`selfimprove.evaluation.metrics.drop.score_drop`).

    Inputs are brought to one shape before ``evaluate`` stores them (its feature check does
    not look inside nested lists, so mixed shapes would otherwise be silently stringified):
    predictions become span lists (raw text reduced by ``extract_drop_answer``), references
    lists of span-list alternatives.
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": _SPANS, "references": datasets.Sequence(_SPANS)}
            ),
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of predictions and references (see ``evaluate.Metric.add_batch``)."""
        if predictions is not None:
            predictions = [_canonical_prediction(p) for p in predictions]
        if references is not None:
            references = [_canonical_reference(r) for r in references]
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one prediction and reference (see ``evaluate.Metric.add``)."""
        if prediction is not None:
            prediction = _canonical_prediction(prediction)
        if reference is not None:
            reference = _canonical_reference(reference)
        return super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions: list, references: list) -> dict:
        records = [
            {"prediction": list(p), "answers": [list(a) for a in r]}
            for p, r in zip(predictions, references, strict=True)
        ]
        return score_drop(records)
