"""ttrl (Zuo et al. 2025, TTRL, arXiv 2504.16084): online RL (GRPO, TRL's ``GRPOTrainer``) on
the round's unlabeled questions, rewarding a sampled completion 1 when its answer equals the
majority answer of its group (the question's ``ttrl.num_generations`` completions), else 0.

A group without a majority is masked (every reward ``None``: zero advantage, no gradient;
arXiv 2511.04902): no completion has a parseable answer, the top answers tie, or the top share
is below ``ttrl.min_share``. The labels never reach the reward (the recipe reads no gold; label
accuracy of the majority is computed afterwards by the track stage, for analysis only).

Its filter step is lmsi's vote over the generate stage's samples (the round's vote monitors
and rationales, analysis only); its train step (``objective: grpo``, the finetune stage) reads
the questions of the round's records and samples its own completions online
(:mod:`selfimprove.training.ttrl`). Pure and light (core only).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from selfimprove.core.answers import extract_answer
from selfimprove.recipes.base import PATH_STATS, Knobs, Recipe
from selfimprove.recipes.lmsi import choose as lmsi_choose


class TtrlParams(Knobs):
    """``ttrl:`` in params.yaml (the model settings -- lora/full, LoRA shape, dtype, attention,
    scheduler, weight decay, ``init`` -- are ``finetune``'s)."""

    num_generations: int = Field(
        8, ge=2, description="Completions sampled per question per step (the voting group)."
    )
    questions_per_step: int = Field(
        4, ge=1, description="Questions per optimizer step (each a group of num_generations)."
    )
    micro_batch_size: int = Field(
        2,
        ge=1,
        description="Completions per forward/backward pass (gradients accumulate over the "
        "step's questions_per_step x num_generations completions, which it must divide); "
        "memory grows with it (a group of 8 four-shot completions of SmolLM2-135M at once "
        "took over 11 GB on CPU).",
    )
    epochs: float = Field(1, gt=0.0, description="Passes over the round's questions.")
    learning_rate: float = Field(1e-5, gt=0.0, description="Peak learning rate (AdamW).")
    min_share: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Mask a group (no reward, no gradient) whose majority answer has a share "
        "below this (of num_generations; unparseable answers count in the denominator). Groups "
        "with no parseable answer or a tie at the top are always masked.",
    )
    temperature: float = Field(0.7, gt=0.0, description="Sampling temperature of the rollouts.")
    max_new_tokens: int = Field(128, ge=1, description="Token budget per rollout completion.")
    n_shots: int = Field(4, ge=0, le=8, description="Exemplars in the few-shot CoT prompt.")
    beta: float = Field(
        0.0, ge=0.0, description="KL coefficient to the round's start model (0: no reference)."
    )
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = Field(
        "dapo", description="TRL's GRPO loss normalisation (GRPOConfig.loss_type)."
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Advantage scaling (GRPOConfig.scale_rewards; none = Dr. GRPO)."
    )
    rollout: Literal["sampler", "trl"] = Field(
        "sampler",
        description="Who samples the rollouts: sampler = the project's transformers sampler "
        "through TRL's rollout_func (shared few-shot prefix computed once, stops at the next "
        "'Q:'; the training weights are copied in before each step); trl = TRL's own "
        "model.generate (no stop strings: every completion runs to max_new_tokens).",
    )

    skip_zero_advantage: bool = Field(
        True,
        description="Skip the forward and backward pass of a micro-batch whose advantages are "
        "all 0 (masked groups, groups whose completions all agree): with beta 0 its gradient is "
        "exactly 0, so the weights are the same and the step is cheaper; TRL's entropy and "
        "clip ratios then cover the trained micro-batches only (train_log: skipped_fraction). "
        "Only with beta 0.",
    )

    @model_validator(mode="after")
    def _micro_batch_divides_the_step(self) -> TtrlParams:
        per_step = self.questions_per_step * self.num_generations
        if per_step % self.micro_batch_size:
            raise ValueError(
                f"ttrl.micro_batch_size={self.micro_batch_size} must divide questions_per_step x "
                f"num_generations = {per_step} (the completions of one optimizer step)"
            )
        return self


def group_rewards(answers: list[str | None], min_share: float) -> tuple[list, str | None, float]:
    """The rewards of one group's answers: ``(rewards, majority, share)``; ``rewards`` is 1.0
    where the answer equals the majority, 0.0 elsewhere, or all ``None`` (masked) when there is
    no majority (no parseable answer, a tie at the top, share < ``min_share``); ``majority`` is
    then None. ``share`` is the top answer's count / group size.

    >>> group_rewards(["3", "3", "4", None], 0.5)
    ([1.0, 1.0, 0.0, 0.0], '3', 0.5)
    >>> group_rewards(["3", "3", "4", "4"], 0.0)  # tie at the top
    ([None, None, None, None], None, 0.5)
    >>> group_rewards(["3", "4", "5", "3"], 0.6)  # share 0.5 < 0.6
    ([None, None, None, None], None, 0.5)
    >>> group_rewards([None, None], 0.0)
    ([None, None], None, 0.0)
    """
    counts = Counter(a for a in answers if a is not None).most_common(2)
    share = counts[0][1] / len(answers) if counts else 0.0
    tie = len(counts) == 2 and counts[0][1] == counts[1][1]
    if not counts or tie or share < min_share:
        return [None] * len(answers), None, share
    majority = counts[0][0]
    return [1.0 if a == majority else 0.0 for a in answers], majority, share


def majority_rewards(
    completions: list[str], group_ids: list, min_share: float
) -> tuple[list, list[dict]]:
    """Rewards of a batch of completions whose groups are runs of equal ``group_ids`` (TRL
    passes a question's completions next to each other), answers by
    :func:`~selfimprove.core.answers.extract_answer`. Returns ``(rewards, groups)``, one record
    per group: ``id``, ``majority`` (None: masked), ``share``, ``n``, ``n_parsed``.

    >>> r, g = majority_rewards(["The answer is 3.", "3", "so 4", "x", "x"], ["a"] * 3 + ["b"] * 2,
    ...                         0.5)
    >>> r, [(x["id"], x["majority"]) for x in g]
    ([1.0, 1.0, 0.0, None, None], [('a', '3'), ('b', None)])
    """
    if len(completions) != len(group_ids):
        raise ValueError(f"{len(completions)} completions but {len(group_ids)} group ids")
    rewards: list = []
    groups: list[dict] = []
    start = 0
    for end in range(1, len(group_ids) + 1):
        if end < len(group_ids) and group_ids[end] == group_ids[start]:
            continue
        answers = [extract_answer(c) for c in completions[start:end]]
        r, majority, share = group_rewards(answers, min_share)
        rewards += r
        n_parsed = sum(a is not None for a in answers)
        groups.append(
            {"id": group_ids[start], "majority": majority, "share": share, "n": end - start,
             "n_parsed": n_parsed}
        )  # fmt: skip
        start = end
    return rewards, groups


def train_questions(round_dir: Path) -> list[dict]:
    """The round's questions (``id``, ``question``) from its records (refined.jsonl = the
    generate stage's samples for ttrl): no labels."""
    from selfimprove.core.io import read_jsonl

    records = read_jsonl(Path(round_dir) / "refined.jsonl", required=["id", "question"])
    return [{"id": r["id"], "question": r["question"]} for r in records]


RECIPE = Recipe(
    name="ttrl",
    summary="TTRL: online GRPO, reward = agreeing with the group's majority answer (Zuo et al. "
    "2025)",
    choose=lmsi_choose,
    path_stats=PATH_STATS | {"candidates": "n_agreeing_paths"},
    rationale_keys=(),
    objective="grpo",
    train_inputs=train_questions,
    params=TtrlParams,
)
