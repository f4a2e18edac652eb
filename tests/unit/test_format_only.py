"""The format-only control (method format_only): as many questions as LMSI keeps with the same
filter settings, drawn at random from the whole pool, one random own path each, the same
training formats, and nothing that depends on which questions won the vote."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml
from tinyproject import import_stage

from selfimprove.config import parse_params
from selfimprove.config.methods import FilterConfig
from selfimprove.core.io import read_jsonl, write_jsonl
from selfimprove.core.prompts import STYLES
from selfimprove.methods.filter import filter_format_only, filter_refined, filter_samples
from selfimprove.recipes import get_recipe


def _pool(n: int, unanimous: set[int], m: int = 4) -> list[dict]:
    """n questions with m paths each; those in ``unanimous`` agree on one answer (the vote keeps
    them at min_agreement 1), the others give m different answers. Paths never state their
    answer, so every path is usable whatever its answer."""
    recs = []
    for i in range(n):
        answers = [str(i)] * m if i in unanimous else [str(i * 10 + j) for j in range(m)]
        recs.append(
            {
                "id": f"q{i}",
                "question": f"Tom has {i} apples. How many?",
                "paths": [f"Path {j} of q{i}: I count them" for j in range(m)],
                "answers": answers,
                "n_tokens": [5 + j for j in range(m)],
            }
        )
    return recs


CFG = FilterConfig(min_agreement=1.0)


def _chosen(rationales: list[dict]) -> list[tuple[str, int]]:
    return [(r["id"], r["kept"].index(True)) for r in rationales if r["selected"]]


def test_as_many_questions_as_lmsi_one_path_each_all_formats():
    recs = _pool(30, unanimous={0, 1, 2, 3, 4, 5})
    lmsi, lmsi_train, _ = filter_samples(recs, CFG)
    n_lmsi = sum(any(r["kept"]) for r in lmsi)
    assert n_lmsi == 6
    rats, train, stats = filter_format_only(recs, CFG, seed=0)
    chosen = _chosen(rats)
    assert len(chosen) == n_lmsi == stats["n_selected"] == stats["n_kept_paths"]
    assert all(sum(r["kept"]) == (1 if r["selected"] else 0) for r in rats)
    assert stats["n_lmsi_questions"] == 6 and stats["n_short"] == 0
    # the same four formats, one example per chosen question in each
    assert Counter(t["format"] for t in train) == dict.fromkeys(STYLES, n_lmsi)
    assert {t["format"] for t in lmsi_train} == {t["format"] for t in train}
    for r in rats:
        if not r["selected"]:
            continue
        j = r["kept"].index(True)
        own = [t for t in train if t["id"] == r["id"]]
        answer = r["answers"][j]
        assert {t["completion"] for t in own if t["format"].endswith("_direct")} == {
            f" The answer is {answer}."
        }  # the path's own answer, not a majority
        assert {t["completion"] for t in own if t["format"].endswith("_cot")} == {
            f" {r['paths'][j]}. The answer is {answer}."
        }
    # drawn from the whole pool: not (only) the questions the vote kept
    assert {q for q, _ in chosen} != {r["id"] for r in lmsi if r["selected"]}
    # analysis fields and the collapse monitors are there as for lmsi
    assert [r["majority"] for r in rats] == [r["majority"] for r in lmsi]
    assert stats["mean_agreement"] == filter_samples(recs, CFG)[2]["mean_agreement"]
    assert {"answer_entropy", "distinct_answers", "mean_path_tokens"} <= set(stats)


def test_random_but_deterministic():
    recs = _pool(40, unanimous=set(range(8)))
    first = filter_format_only(recs, CFG, seed=3)
    assert filter_format_only(recs, CFG, seed=3) == first
    draws = {tuple(_chosen(filter_format_only(recs, CFG, seed=s)[0])) for s in range(6)}
    assert len(draws) == 6  # other seeds, other questions/paths
    # paths are picked at random too, not always the first
    picks = Counter(j for s in range(6) for _, j in _chosen(filter_format_only(recs, CFG, s)[0]))
    assert len(picks) == 4


def test_no_dependence_on_the_vote():
    """Two pools with the same paths whose votes keep different questions (same count): the
    control picks the same questions and the same paths in both."""
    a = _pool(30, unanimous={0, 1, 2, 3, 4})
    b = _pool(30, unanimous={20, 21, 22, 23, 24})
    kept_a = {r["id"] for r in filter_samples(a, CFG)[0] if r["selected"]}
    kept_b = {r["id"] for r in filter_samples(b, CFG)[0] if r["selected"]}
    assert kept_a != kept_b and len(kept_a) == len(kept_b) == 5
    for seed in range(4):
        assert _chosen(filter_format_only(a, CFG, seed)[0]) == _chosen(
            filter_format_only(b, CFG, seed)[0]
        )


def test_same_filter_settings_set_the_count():
    recs = _pool(30, unanimous={0, 1, 2})
    recs[3]["answers"] = ["3", "3", "3", "x"]  # 0.75 agreement: kept at min_agreement 0.5
    for cfg, want in ((FilterConfig(min_agreement=1.0), 3), (FilterConfig(min_agreement=0.5), 4)):
        _, _, stats = filter_format_only(recs, cfg, seed=0)
        assert stats["n_selected"] == stats["n_lmsi_questions"] == want


def test_unusable_questions_are_passed_over():
    recs = _pool(6, unanimous={0, 1, 2, 3})
    for r in recs[2:]:
        r["answers"] = [None] * 4  # no answer: nothing usable (and not kept by the vote)
    _, _, stats = filter_samples(recs, CFG)
    assert stats["n_selected"] == 2
    rats, _, stats = filter_format_only(recs, CFG, seed=0)
    assert {q for q, _ in _chosen(rats)} == {"q0", "q1"} and stats["n_short"] == 0
    none_left = _pool(4, unanimous={0, 1})
    for r in none_left[1:]:
        r["answers"] = [None] * 4
    none_left[0]["answers"] = ["0", "0", "0", "0"]
    none_left[1]["answers"] = ["1", "1", "1", "1"]
    none_left[1]["paths"] = ["The answer is 5."] * 4  # states another answer: unusable
    rats, train, stats = filter_format_only(none_left, CFG, seed=0)
    assert stats["n_lmsi_questions"] == 1 and stats["n_selected"] == 1 and stats["n_short"] == 0
    assert _chosen(rats)[0][0] == "q0"


def test_method_table_and_dispatch():
    m = get_recipe("format_only")
    assert not m.uses_labels and not m.needs_seed_set and m.refine == "none"
    assert parse_params({"method": "format_only"}).method == "format_only"
    recs = _pool(12, unanimous={0, 1})
    assert filter_refined(recs, CFG, "format_only", seed=5) == filter_format_only(recs, CFG, 5)


def test_filter_stage_runs_format_only_with_the_round_seed(tmp_path, monkeypatch):
    """The filter stage passes the round's seed (seed + k): r1 and r2 of the same samples draw
    differently; everything else is the lmsi stage's output format."""
    filter_stage = import_stage("filter")

    monkeypatch.chdir(tmp_path)
    params = {"seed": 7, "method": "format_only", "filter": {"min_agreement": 1.0}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    recs = _pool(30, unanimous={0, 1, 2, 3})
    for rnd in ("r1", "r2"):
        write_jsonl(tmp_path / f"data/rounds/{rnd}/refined.jsonl", recs)
        filter_stage.main(["--round", rnd])
    got = {}
    for rnd, k in (("r1", 1), ("r2", 2)):
        d = tmp_path / "data/rounds" / rnd
        rats = read_jsonl(d / "rationales.jsonl")
        assert _chosen(rats) == _chosen(filter_format_only(recs, CFG, seed=7 + k)[0])
        vote = json.loads((d / "vote.json").read_text())
        assert vote["kept_fraction"] == pytest.approx(4 / 30, abs=1e-4)
        assert {"answer_entropy", "distinct_answers", "mean_path_tokens"} <= set(vote)
        got[rnd] = _chosen(rats)
    assert got["r1"] != got["r2"]
