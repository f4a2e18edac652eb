"""Label-free model selection (tracking.best_by: label_free) beside the labeled best_metric,
what the label-free choice loses against the truly best round, and the new params keys
(validated like every other key)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from selfimprove.config import ConfigError, parse_params
from selfimprove.config.tracking import TrackingConfig
from selfimprove.tracking import registry
from selfimprove.tracking.selection import (
    choose_round,
    label_free_score,
    round_score,
    selection_loss,
)

LF = "sc.label_free.agreement"


def _flat(acc: float, agreements: dict[str, float]) -> dict[str, float]:
    return {"arith.fewshot_cot.strict": acc} | {f"{s}.{LF}": a for s, a in agreements.items()}


#: r1 agrees most but r2 is more accurate; r3 collapsed (agrees fully, accuracy fell)
ROUNDS = {
    "r0": _flat(0.40, {"arith": 0.50, "drop": 0.30}),
    "r1": _flat(0.55, {"arith": 0.80, "drop": 0.60}),
    "r2": _flat(0.60, {"arith": 0.75, "drop": 0.55}),
}


def test_scores_and_choice():
    assert label_free_score(ROUNDS["r1"]) == pytest.approx(0.7)
    assert label_free_score({"arith.fewshot_cot.strict": 1.0}) is None
    # a deeper key that merely ends the same way is not a set's score
    assert label_free_score({f"a.b.{LF}": 0.9, f"c.{LF}": 0.1}) == 0.1
    assert round_score(ROUNDS["r2"], "metric", "arith.fewshot_cot.strict") == 0.6
    assert round_score(ROUNDS["r2"], "metric", "missing") is None
    with pytest.raises(ValueError, match="by='best'"):
        round_score(ROUNDS["r2"], "best", "x")
    assert choose_round(ROUNDS, "label_free") == "r1"
    assert choose_round(ROUNDS, "metric", "arith.fewshot_cot.strict") == "r2"
    # ties go to the earlier round; rounds without a score are skipped
    tie = {"r3": _flat(0.1, {"a": 0.5}), "r2": _flat(0.2, {"a": 0.5}), "r9": {}}
    assert choose_round(tie, "label_free") == "r2"
    assert choose_round({"r1": {}}, "label_free") is None


def test_selection_loss():
    out = selection_loss(ROUNDS, "arith.fewshot_cot.strict")
    assert out["chosen_round"] == "r1" and out["best_round"] == "r2"
    assert out["loss"] == pytest.approx(0.05) and out["n_rounds"] == 3
    assert out["chosen_score"] == pytest.approx(0.7)
    agreeing = ROUNDS | {"r2": _flat(0.60, {"arith": 0.9, "drop": 0.9})}
    assert selection_loss(agreeing, "arith.fewshot_cot.strict")["loss"] == 0.0
    assert selection_loss(ROUNDS, "missing.metric") is None
    assert selection_loss({"r0": {"acc": 1.0}}, "acc") is None  # no label-free score


class _FakeClient:
    """The few MlflowClient calls update_best_alias makes, over crafted runs."""

    def __init__(self, metrics_by_round: dict[str, dict[str, float]]):
        self.versions = [
            SimpleNamespace(
                version=str(i + 1),
                run_id=f"run-{r}",
                tags={"round": r, "selfimprove.round_index": r[1:]},
            )
            for i, r in enumerate(metrics_by_round)
        ]
        self.runs = {
            f"run-{r}": SimpleNamespace(
                info=SimpleNamespace(status="FINISHED"),
                data=SimpleNamespace(
                    metrics=m, tags={"selfimprove.round_index": r[1:], "selfimprove.round": r}
                ),
            )
            for r, m in metrics_by_round.items()
        }
        self.alias: str | None = None
        self.model_tags: dict[str, str] = {}

    def get_run(self, run_id):
        return self.runs[run_id]

    def set_registered_model_alias(self, name, alias, version):
        self.alias = version

    def set_registered_model_tag(self, name, key, value):
        self.model_tags[key] = value

    def set_model_version_tag(self, *a):  # pragma: no cover - no superseded runs here
        raise AssertionError("no version is superseded")


@pytest.fixture
def fake_versions(monkeypatch):
    def install(metrics_by_round):
        client = _FakeClient(metrics_by_round)
        monkeypatch.setattr(registry, "model_versions", lambda c, name: c.versions)
        monkeypatch.setattr(registry, "get_run", lambda c, run_id: c.get_run(run_id))
        return client

    return install


def test_best_alias_by_metric_is_unchanged_and_label_free_is_beside_it(fake_versions, caplog):
    client = fake_versions(ROUNDS)
    assert registry.update_best_alias(client, TrackingConfig()) is None  # default key absent
    cfg = TrackingConfig(best_metric="arith.fewshot_cot.strict")
    assert cfg.best_by == "metric"
    assert registry.update_best_alias(client, cfg) == "3"  # r2: the labeled best
    assert client.model_tags["best_round"] == "r2" and client.model_tags["best_by"] == "metric"
    assert client.model_tags["best_metric"] == "arith.fewshot_cot.strict"

    lf = TrackingConfig(best_metric="arith.fewshot_cot.strict", best_by="label_free")
    assert registry.update_best_alias(client, lf) == "2"  # r1: the most self-consistent
    assert client.model_tags["best_round"] == "r1" and client.model_tags["best_by"] == "label_free"
    assert float(client.model_tags["best_value"]) == pytest.approx(0.7)

    no_sc = fake_versions(
        {r: {"arith.fewshot_cot.strict": m["arith.fewshot_cot.strict"]} for r, m in ROUNDS.items()}
    )
    with caplog.at_level(logging.WARNING, logger="selfimprove.tracking.registry"):
        assert registry.update_best_alias(no_sc, lf) is None
    assert "best_by=label_free" in caplog.text and "sc_paths" in caplog.text
    assert no_sc.alias is None


@pytest.mark.parametrize(
    "raw, where",
    [
        ({"tracking": {"best_by": "labels"}}, "tracking.best_by"),
        ({"tracking": {"best_by": True}}, "tracking.best_by"),
        ({"data": {"seed": "zero"}}, "data.seed"),
        ({"data": {"seed": True}}, "data.seed: a boolean is not a number"),
        ({"data": {"seed": -1}}, "data.seed"),
        ({"stats": {"level": 1.5}}, "stats.level"),
        ({"stats": {"level": 95}}, "stats.level"),
        ({"stats": {"n_resamples": 10}}, "stats.n_resamples"),
        ({"stats": {"n_resamples": True}}, "stats.n_resamples: a boolean is not a number"),
        ({"stats": {"seeds": 1}}, "stats.seeds: unknown key (value 1); did you mean 'seed'?"),
        ({"method": "format"}, "method"),
        (
            {"tracking": {"best_by": "label_free"}, "evaluate": {"sc_paths": 0, "sc_k": []}},
            "tracking.best_by: label_free ranks rounds by the agreement of evaluate.sc_paths "
            "sampled answers, but sc_paths is 0; set evaluate.sc_paths >= 2",
        ),
    ],
)
def test_new_keys_are_validated(raw, where):
    with pytest.raises(ConfigError) as e:
        parse_params(raw)
    assert where in str(e.value)


def test_new_keys_defaults_and_the_data_seed():
    p = parse_params({})
    assert (p.stats.level, p.stats.n_resamples, p.stats.seed) == (0.95, 1000, 0)
    assert p.tracking.best_by == "metric" and p.data.seed is None and p.data_seed == p.seed == 0
    assert parse_params({"seed": 4}).data_seed == 4  # null: the global seed, as before
    assert parse_params({"seed": 4, "data": {"seed": 0}}).data_seed == 0
    assert parse_params({"method": "format_only"}).method == "format_only"
