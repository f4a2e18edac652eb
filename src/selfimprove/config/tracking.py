"""``tracking:`` in params.yaml (MLflow)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from selfimprove.config.base import Section, short

# ---------------------------------------------------------------------- runs

_FORBIDDEN_NAME_CHARS = "'\"`\\"


class TrackingConfig(Section):
    """Where and what to log to MLflow (``tracking:`` in params.yaml)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Log each round to MLflow; false skips tracking.")
    experiment: str = Field(
        "selfimprove", description="MLflow experiment name (created if missing)."
    )
    pipeline: str = Field(
        "default",
        description="Pipeline name: the parent run's name and its selfimprove.pipeline tag; "
        "one parent run per name collects every round of this pipeline.",
    )
    study: str | None = Field(
        None,
        description="Study name (several methods/seeds, e.g. benchmarks/multi_seed.py): the "
        "pipeline's parent run becomes a child of one study run of that name, so a study shows "
        "as study -> one run per pipeline (method, seed) -> its rounds; null = no study.",
    )
    log_model: Literal["adapter", "merged", "none"] = Field(
        "adapter",
        description="Model files to log per round: 'adapter' = the LoRA adapter folder plus a "
        "base-model reference tag, 'merged' = the merged weights folder, 'none' = nothing.",
    )
    registered_model: str | None = Field(
        "selfimprove-{pipeline}",
        description="MLflow registered model that every round's logged model becomes a version "
        "of (tag round=<r>); '{pipeline}' is replaced by the pipeline name; null = don't "
        "register (and log_model's files are plain artifacts only).",
    )
    best_metric: str = Field(
        "arith_1step.fewshot_cot.strict",
        description="Flattened metrics key (as in `dvc metrics show`, e.g. "
        "<eval set>.<style>.strict) whose highest value gets the registered model's alias "
        "'best' (ties: the earlier round). Used when best_by is metric.",
    )
    best_by: Literal["metric", "label_free"] = Field(
        "metric",
        description="How the alias 'best' is chosen: metric = the highest best_metric (a "
        "labeled held-out score); label_free = the highest self-consistency agreement on the "
        "eval sets' sampled paths (the mean over sets of <set>.sc.label_free.agreement, the "
        "majority share of evaluate.sc_paths answers: no labels used; needs sc_paths >= 2).",
    )

    @field_validator("experiment", "pipeline", "study")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip():
            raise ValueError("must not be empty")
        if any(c in v for c in _FORBIDDEN_NAME_CHARS):
            raise ValueError(f"{short(v)} must not contain quotes, backticks or backslashes")
        return v

    @field_validator("registered_model")
    @classmethod
    def _model_name(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip():
            raise ValueError("must not be empty; use null to disable registration")
        bad = [c for c in "/:" + _FORBIDDEN_NAME_CHARS if c in v.replace("{pipeline}", "")]
        if bad:
            raise ValueError(f"{short(v)} must not contain {''.join(bad)!r} (MLflow model names)")
        return v

    @model_validator(mode="after")
    def _resolved_model_name(self) -> TrackingConfig:
        name = self.registered_model_name()
        if name is not None and any(c in name for c in "/:"):
            raise ValueError(
                f"registered_model: {short(name)} (with pipeline {short(self.pipeline)}) must not "
                "contain '/' or ':'; rename the pipeline or set registered_model explicitly"
            )
        return self

    def registered_model_name(self) -> str | None:
        """The registered model's name with ``{pipeline}`` filled in (None: registry off).

        >>> TrackingConfig(pipeline="exp1").registered_model_name()
        'selfimprove-exp1'
        >>> TrackingConfig(registered_model=None).registered_model_name() is None
        True
        """
        if self.registered_model is None:
            return None
        return self.registered_model.replace("{pipeline}", self.pipeline)
