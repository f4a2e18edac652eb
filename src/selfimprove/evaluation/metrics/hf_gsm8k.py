"""GSM8K accuracy as a Hugging Face ``evaluate`` metric module (loads offline, by path).

Usage (``load_metric`` calls ``evaluate.load`` with this file's path)::

    from selfimprove.evaluation.metrics import load_metric
    load_metric("gsm8k").compute(predictions=["The answer is 7."], references=["#### 7"])
    # {'n': 1, 'strict': 1.0, 'flexible': 1.0}
"""

from __future__ import annotations

import datasets
import evaluate

from selfimprove.evaluation.metrics.gsm8k import score_gsm8k

_DESCRIPTION = (
    "GSM8K accuracy of raw generations. strict: the number after the last 'The answer is' or "
    "'####'; flexible: the last number in the text. The text is first cut at a new 'Q:' "
    "exemplar; numbers are compared after normalization ('$1,600.00' == '1600')."
)
_INPUTS = """
Args:
    predictions: list of generated texts (str).
    references: list of gold answers: a bare number or a GSM8K solution ending in '#### N'.
Returns:
    n: number of examples; strict, flexible: accuracies in [0, 1] (None when n == 0).
"""
_CITATION = """@article{cobbe2021gsm8k,
  title={Training Verifiers to Solve Math Word Problems},
  author={Cobbe, Karl and others}, journal={arXiv preprint arXiv:2110.14168}, year={2021}}"""


def _as_text(reference: object) -> object:
    if isinstance(reference, (int, float)) and not isinstance(reference, bool):
        return str(reference)
    return reference


class Gsm8kAccuracy(evaluate.Metric):
    """Strict and flexible GSM8K accuracy (see
    :func:`selfimprove.evaluation.metrics.gsm8k.score_gsm8k`)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of predictions and references (see ``evaluate.Metric.add_batch``)."""
        if references is not None:  # allow bare numbers as gold answers
            references = [_as_text(r) for r in references]
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one prediction and reference (see ``evaluate.Metric.add``)."""
        if reference is not None:
            reference = _as_text(reference)
        return super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions: list[str], references: list[str]) -> dict:
        records = [
            {"prediction": p, "answer": r} for p, r in zip(predictions, references, strict=True)
        ]
        return score_gsm8k(records)
