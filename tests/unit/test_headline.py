"""The metric split (evaluation/headline.py): metrics.json (the DVC metric) holds one accuracy per
set and style, scores.json everything; readers take either layout."""

import json
from pathlib import Path

import pytest

from selfimprove.core.io import InputError
from selfimprove.evaluation.analysis import flatten_metrics
from selfimprove.evaluation.headline import headline, read_round_scores, scores_path

LOCKED = Path(__file__).parents[2] / "benchmarks/results/lmsi_default_locked"


def test_headline_of_the_locked_reference():
    """On the default's 4 sets x 3 styles: 12 figures (was 133), each the same value under the
    same key as in the full scores; no interval, count or level."""
    scores = json.loads((LOCKED / "r1" / "metrics.json").read_text())  # made before the split
    full, head = flatten_metrics(scores), flatten_metrics(headline(scores))
    assert len(full) == 133
    assert sorted(head) == sorted(
        f"{s}.{style}.{key}"
        for s, key, sc in [
            ("arith_1step", "strict", "maj@8"),
            ("arith_2step", "strict", "maj@8"),
            ("gsm_symbolic", "strict", "maj@8"),
            ("drop_gen", "f1", "maj@8_f1"),
        ]
        for style, key in [("fewshot_cot", key), ("zeroshot_cot", key), ("sc", sc)]
    )
    assert all(full[k] == v for k, v in head.items())
    vote = json.loads((LOCKED / "r1" / "vote.json").read_text())
    assert len(head) + len(vote) <= 20  # the columns of `dvc metrics show`


def test_readers_take_either_layout(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    scores = {"a": {"cot": {"n": 3, "strict": 0.5, "ci": {"level": 0.95}}}}
    old.mkdir()
    (old / "metrics.json").write_text(json.dumps(scores))
    new.mkdir()
    (new / "scores.json").write_text(json.dumps(scores))
    (new / "metrics.json").write_text(json.dumps(headline(scores)))
    assert read_round_scores(old) == read_round_scores(new) == scores
    assert scores_path(new).name == "scores.json"
    (new / "scores.json").write_text("[1]")
    with pytest.raises(InputError, match="scores.json: expected a JSON object"):
        read_round_scores(new)
