"""``evaluate:`` and ``report:`` in params.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from selfimprove.config.base import Section, short

# ---------------------------------------------------------------------- evaluate

Style = Literal["fewshot_cot", "fewshot_direct", "zeroshot_cot", "zeroshot_direct"]


class EvaluateConfig(Section):
    """Held-out evaluation of every round (round 0 = the starting model)."""

    model_config = ConfigDict(extra="forbid")

    sets: list[str] | None = Field(
        None, description="Names of data.eval sets to evaluate (at least one); null = all of them."
    )
    styles: list[Style] = Field(
        ["fewshot_cot", "zeroshot_cot"], description="Prompt styles scored greedily."
    )
    n_shots: int = Field(
        4,
        ge=0,
        le=8,
        description="Exemplars in few-shot styles (max 8); GSM8K-format sets only (DROP "
        "prompts always use their 3 exemplars).",
    )
    max_new_tokens: int = Field(128, ge=1, description="Generation budget per answer.")
    limit: int | None = Field(None, ge=1, description="Score only the first N of each set.")
    sc_paths: int = Field(
        8, ge=0, description="Self-consistency: paths sampled per question (0 = skip)."
    )
    sc_k: list[int] = Field([1, 8], description="Report maj@k for these k (each <= sc_paths).")
    sc_style: Literal["fewshot_cot", "zeroshot_cot"] = Field(
        "fewshot_cot", description="Prompt style for self-consistency sampling."
    )
    sc_limit: int | None = Field(
        40, ge=1, description="Self-consistency on the first N questions of each set (cost)."
    )
    temperature: float = Field(0.7, gt=0, description="Sampling temperature for maj@k.")
    refine_iterations: int = Field(
        0,
        ge=0,
        description="Inference-time self-refinement: also score each CoT style after up to N "
        "self-feedback/refine rewrites, as '<style>_refined' (0 = off), with the refine "
        "section's prompts (n_shots, token budgets). It can also hurt (Huang et al. 2024): "
        "both are logged.",
    )

    @field_validator("sets")
    @classmethod
    def _some_sets(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("an empty list evaluates nothing; name data.eval sets, or null = all")
        return v

    @model_validator(mode="after")
    def _check_k(self) -> EvaluateConfig:
        bad = [k for k in self.sc_k if k < 1 or k > max(self.sc_paths, 1)]
        if self.sc_paths and bad:
            raise ValueError(f"sc_k {short(bad)} must be between 1 and sc_paths={self.sc_paths}")
        if self.sc_paths and not self.sc_k:
            raise ValueError(
                f"sc_k is empty but sc_paths={self.sc_paths}: list the k of maj@k to report "
                f"(e.g. [1, {self.sc_paths}]) or set sc_paths: 0"
            )
        if not self.styles and not self.sc_paths:
            raise ValueError(
                "styles is empty and sc_paths is 0: nothing would be scored; list a style "
                "(e.g. [fewshot_cot]) or set sc_paths >= 1"
            )
        return self


# ---------------------------------------------------------------------- report


class ReportConfig(Section):
    """The ``report`` stage (``report:`` in params.yaml)."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(
        "strict",
        description="Per-style accuracy metric to plot: strict | flexible (DROP-format sets: "
        "em | f1); a set without it falls back to strict, then em.",
    )
    agreement_bins: int = Field(
        10, ge=1, le=100, description="Bins of the vote-agreement histogram over [0, 1]."
    )
    log_mlflow: bool = Field(
        True,
        description="Also log the report files to the pipeline's MLflow parent run "
        "(artifact folder report/) when tracking.enabled.",
    )


# ---------------------------------------------------------------------- stats


class StatsConfig(Section):
    """Confidence intervals (``stats:`` in params.yaml): the evaluate stage's per-metric
    intervals in scores.json and the report's paired differences between rounds."""

    model_config = ConfigDict(extra="forbid")

    level: float = Field(
        0.95,
        gt=0.0,
        lt=1.0,
        description="Confidence level of every interval (0.95 = 95%; percentile bootstrap).",
    )
    n_resamples: int = Field(
        1000,
        ge=100,
        le=1_000_000,
        description="Bootstrap resamples per interval (over questions; over runs too when "
        "several seeds are compared). More = steadier interval ends, linear in time.",
    )
    seed: int = Field(
        0,
        ge=0,
        le=2**31 - 1,
        description="Seed of the bootstrap resampling (separate from the global seed, so "
        "runs with different seeds are resampled alike); same inputs + seed = same bytes.",
    )
