"""The evaluate step: held-out accuracy of a round's model, greedy per prompt style and
self-consistency maj@k, with per-example predictions.

Metrics come back as one nested dict; the stage writes it as the DVC metrics file and the track
stage logs the very same dict (flattened with ".") to MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from selfimprove.answers import answers_match, extract_answer, extract_flexible, extract_strict
from selfimprove.answers import gold_answer as _gold
from selfimprove.voting import maj_at_k

Style = Literal["fewshot_cot", "fewshot_direct", "zeroshot_cot", "zeroshot_direct"]


class EvaluateConfig(BaseModel):
    """Held-out evaluation of every round (round 0 = the starting model)."""

    model_config = ConfigDict(extra="forbid")

    sets: list[str] | None = Field(
        None, description="Names of data.eval sets to evaluate; null = all of them."
    )
    styles: list[Style] = Field(
        ["fewshot_cot", "zeroshot_cot"], description="Prompt styles scored greedily."
    )
    n_shots: int = Field(4, ge=0, le=8, description="Exemplars in few-shot styles (max 8).")
    max_new_tokens: int = Field(160, ge=1, description="Generation budget per answer.")
    limit: int | None = Field(None, ge=1, description="Score only the first N of each set.")
    sc_paths: int = Field(
        8, ge=0, description="Self-consistency: paths sampled per question (0 = skip)."
    )
    sc_k: list[int] = Field([1, 8], description="Report maj@k for these k (each <= sc_paths).")
    sc_style: Literal["fewshot_cot", "zeroshot_cot"] = Field(
        "fewshot_cot", description="Prompt style for self-consistency sampling."
    )
    sc_limit: int | None = Field(
        50, ge=1, description="Self-consistency on the first N questions of each set (cost)."
    )
    temperature: float = Field(0.7, gt=0, description="Sampling temperature for maj@k.")
    batch_size: int = Field(32, ge=1, description="Sequences decoded together.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Compute dtype (auto: bf16 where fast, else fp32)."
    )

    @model_validator(mode="after")
    def _check_k(self) -> EvaluateConfig:
        bad = [k for k in self.sc_k if k < 1 or k > max(self.sc_paths, 1)]
        if self.sc_paths and bad:
            raise ValueError(f"sc_k {bad} must be between 1 and sc_paths={self.sc_paths}")
        return self


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


def summarize(preds: list[dict]) -> dict:
    """Accuracy (strict, flexible) and the no-answer rate of scored predictions.

    >>> summarize([{"correct_strict": True, "correct_flexible": True, "strict": "1"},
    ...            {"correct_strict": False, "correct_flexible": True, "strict": None}])
    {'n': 2, 'strict': 0.5, 'flexible': 1.0, 'no_answer': 0.5}
    """
    n = len(preds)
    if not n:
        return {"n": 0, "strict": 0.0, "flexible": 0.0, "no_answer": 0.0}
    return {
        "n": n,
        "strict": sum(p["correct_strict"] for p in preds) / n,
        "flexible": sum(p["correct_flexible"] for p in preds) / n,
        "no_answer": sum(p["strict"] is None for p in preds) / n,
    }


def self_consistency(answers_per_q: list[list[str | None]], golds: list[str], ks: list[int]) -> dict:
    """maj@k for each k and pass@m (any path right: an upper bound) over questions.

    >>> self_consistency([["2", "3", "2"], ["5", None, "4"]], ["2", "4"], [1, 3])
    {'maj@1': 0.5, 'maj@3': 0.5, 'pass@3': 1.0}
    """
    n = len(golds)
    out = {}
    for k in ks:
        out[f"maj@{k}"] = (
            sum(answers_match(maj_at_k(a, k), g) for a, g in zip(answers_per_q, golds)) / n
            if n
            else 0.0
        )
    m = max((len(a) for a in answers_per_q), default=0)
    out[f"pass@{m}"] = (
        sum(any(answers_match(x, g) for x in a) for a, g in zip(answers_per_q, golds)) / n
        if n
        else 0.0
    )
    return out


def evaluate(
    model_dir: str | Path, eval_sets: dict[str, list[dict]], cfg: EvaluateConfig, seed: int
) -> tuple[dict, dict[str, list[dict]]]:
    """Evaluate one model on every set; return (metrics, predictions by "<set>__<style>")."""
    from selfimprove.generate import make_sampler
    from selfimprove.prompts import build_prompt
    from selfimprove.sampler import SamplingParams

    sampler = make_sampler(model_dir, "transformers", cfg.dtype, cfg.batch_size)
    metrics: dict = {}
    predictions: dict[str, list[dict]] = {}
    for name, records in eval_sets.items():
        records = records[: cfg.limit] if cfg.limit else records
        metrics[name] = {}
        for style in cfg.styles:
            prefix = build_prompt("", style, cfg.n_shots)[0]
            suffixes = [build_prompt(r["question"], style, cfg.n_shots)[1] for r in records]
            outs = sampler.sample(
                prefix,
                suffixes,
                SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens, seed=seed),
                desc=f"eval {name}/{style}",
            )
            preds = [
                {"id": r["id"], "question": r["question"], "output": o[0].text}
                | score_prediction(o[0].text, r["answer"])
                for r, o in zip(records, outs, strict=True)
            ]
            predictions[f"{name}__{style}"] = preds
            metrics[name][style] = summarize(preds)
        if cfg.sc_paths:
            sc_records = records[: cfg.sc_limit] if cfg.sc_limit else records
            prefix = build_prompt("", cfg.sc_style, cfg.n_shots)[0]
            suffixes = [build_prompt(r["question"], cfg.sc_style, cfg.n_shots)[1] for r in sc_records]
            outs = sampler.sample(
                prefix,
                suffixes,
                SamplingParams(
                    n=cfg.sc_paths,
                    temperature=cfg.temperature,
                    max_new_tokens=cfg.max_new_tokens,
                    seed=seed,
                ),
                desc=f"eval {name}/maj@{cfg.sc_paths}",
            )
            answers = [[extract_answer(c.text) for c in o] for o in outs]
            golds = [_gold(r["answer"]) for r in sc_records]
            metrics[name]["sc"] = {"n": len(sc_records)} | self_consistency(
                answers, golds, cfg.sc_k
            )
            predictions[f"{name}__sc"] = [
                {"id": r["id"], "gold": g, "answers": a, "majority": maj_at_k(a, cfg.sc_paths)}
                for r, g, a in zip(sc_records, golds, answers)
            ]
    return metrics, predictions
