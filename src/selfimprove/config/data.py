"""``data:`` in params.yaml: where the training pool, the held-out sets and the seed set
come from."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from selfimprove.config.base import Section, short

# ---------------------------------------------------------------------- prepare

GENERATED = ("arith", "gsm_symbolic")


REAL = ("jsonl", "gsm8k_hub")


DROP_SOURCES = ("drop_gen", "drop_jsonl", "drop_hub")


# (hub_id, split) used when they are null
_HUB_DEFAULTS = {"gsm8k_hub": ("openai/gsm8k", "test"), "drop_hub": ("ucinlp/drop", "validation")}
#: sources read from a local file (``path``) and from the hub (``hub_id``)
FILE_SOURCES = ("jsonl", "drop_jsonl")
HUB_SOURCES = tuple(_HUB_DEFAULTS)


RESERVED_NAMES = ("train", "seed")


_NAME_RE = re.compile(r"[a-z0-9_]+")


class SourceConfig(Section):
    """Where one set of questions comes from, and how many to take."""

    model_config = ConfigDict(extra="forbid")

    source: Literal[
        "arith", "gsm_symbolic", "gsm8k_hub", "jsonl", "drop_gen", "drop_jsonl", "drop_hub"
    ] = Field(
        description="arith: our offline generator of easy word problems; gsm_symbolic: "
        "GSM-Symbolic templates via reasoning_gym (offline); jsonl: a local file in the GSM8K "
        "format ({question, answer} per line); gsm8k_hub: datasets.load_dataset (needs the hub). "
        "DROP reading comprehension (eval sets only): drop_gen: offline generated football "
        "passages; drop_jsonl: the simple-evals drop_v0_dev.jsonl(.gz) file; drop_hub: "
        "ucinlp/drop (needs the hub)."
    )
    n: int | None = Field(
        None,
        description="How many records to take, at least 1 (a seeded subset for jsonl/hub "
        "sources); null = all (jsonl/hub only; required for the generators arith, gsm_symbolic "
        "and drop_gen).",
    )
    path: str | None = Field(
        None,
        description="source jsonl / drop_jsonl: path of the local file, relative to the "
        "working directory (e.g. ../shared/data/gsm8k/test.jsonl or "
        "../shared/data/drop/drop_v0_dev.jsonl.gz).",
    )
    hub_id: str | None = Field(
        None,
        description="source gsm8k_hub / drop_hub: the dataset id on the hub; null = "
        "openai/gsm8k (gsm8k_hub) or ucinlp/drop (drop_hub).",
    )
    hub_config: str = Field(
        "main", description="source gsm8k_hub: the dataset config name (drop_hub has none)."
    )
    split: str | None = Field(
        None,
        description="source gsm8k_hub / drop_hub: the split to load; null = test (gsm8k_hub) "
        "or validation (drop_hub).",
    )
    steps: list[int] = Field(
        [1],
        description="source arith: the numbers of arithmetic operations per problem to draw "
        "from (uniformly), a non-empty subset of [1, 2, 3].",
    )
    max_operand: int | None = Field(
        None,
        description="source arith: the largest operand, at least 20 (every range scales with "
        "it, products < 10 x max_operand), and no problem repeats the computation (operation, "
        "operands) of an earlier one of the run (held-out sets come first): a bigger unlabeled "
        "pool, e.g. 64 for 2,048 1-step questions beside the default held-out sets "
        "(docs/unlabeled-pool.md). null = operands 1-20, the generator's original problems.",
    )

    @field_validator("n")
    @classmethod
    def _n_positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(
                f"n={v}: an empty set trains or scores nothing; use n >= 1 (or null = all, for "
                "the jsonl/hub sources)"
            )
        return v

    @field_validator("steps")
    @classmethod
    def _steps_known(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if s not in (1, 2, 3)]
        if not v or bad:
            raise ValueError(f"steps={short(v)}: use a non-empty subset of [1, 2, 3]")
        return sorted(set(v))

    @field_validator("max_operand")
    @classmethod
    def _max_operand_range(cls, v: int | None) -> int | None:
        if v is not None and not 20 <= v <= 10_000:
            raise ValueError(
                f"max_operand={v}: use 20 to 10000 (the default problems' operands go to 20), "
                "or null for the default problems"
            )
        return v

    @model_validator(mode="after")
    def _source_needs(self) -> SourceConfig:
        if self.max_operand is not None and self.source != "arith":
            raise ValueError(
                f"max_operand={self.max_operand} applies to source arith only (this set's source "
                f"is {self.source}); remove it"
            )
        if self.source == "jsonl" and not self.path:
            raise ValueError("source jsonl needs path: the local GSM8K-format .jsonl file")
        if self.source == "drop_jsonl" and not self.path:
            raise ValueError(
                "source drop_jsonl needs path: the local simple-evals DROP file "
                "(drop_v0_dev.jsonl or drop_v0_dev.jsonl.gz)"
            )
        if self.source in (*GENERATED, "drop_gen") and self.n is None:
            raise ValueError(f"source {self.source} needs n (how many problems to generate)")
        if self.source in _HUB_DEFAULTS:
            hub_id, split = _HUB_DEFAULTS[self.source]
            self.hub_id = self.hub_id or hub_id
            self.split = self.split or split
        return self

    @property
    def is_drop(self) -> bool:
        """True for the DROP (reading comprehension, eval-only) sources."""
        return self.source in DROP_SOURCES


def _default_train() -> SourceConfig:
    """``data.train`` of params.yaml (tests/unit/test_defaults.py keeps the two equal)."""
    return SourceConfig(source="arith", n=128, steps=[1])


def _default_eval() -> dict[str, SourceConfig]:
    """``data.eval`` of params.yaml (tests/unit/test_defaults.py keeps the two equal)."""
    return {
        "arith_1step": SourceConfig(source="arith", n=240, steps=[1]),
        "arith_2step": SourceConfig(source="arith", n=60, steps=[2]),
        "gsm_symbolic": SourceConfig(source="gsm_symbolic", n=30),
        "drop_gen": SourceConfig(source="drop_gen", n=30),
    }


class DataConfig(Section):
    """The data step: unlabeled training pool, held-out eval sets, optional labeled seed set."""

    model_config = ConfigDict(extra="forbid")

    train: SourceConfig = Field(
        default_factory=_default_train,
        description="The unlabeled training pool (its labels are kept apart, for analysis only).",
    )
    eval: dict[str, SourceConfig] = Field(
        default_factory=_default_eval,
        description="Held-out labeled evaluation sets by name (at least one; names: [a-z0-9_]+, "
        "not 'train' or 'seed'); disjoint from train and seed_set.",
    )
    seed_set: SourceConfig | None = Field(
        None,
        description="A small labeled warm-start set (e.g. few-shot exemplars or an SFT warm "
        "start); null = no warm start.",
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**31 - 1,
        description="Seed of the questions (which problems the generators make, which records "
        "a subset takes); null = the global seed. Fix it to vary the global seed (sampling, "
        "training) over the same questions.",
    )

    @field_validator("train", "seed_set")
    @classmethod
    def _not_drop(cls, v: SourceConfig | None) -> SourceConfig | None:
        if v is not None and v.is_drop:
            raise ValueError(
                f"source {v.source} is a DROP reading-comprehension set, which is eval-only: "
                "put it under data.eval; train and seed_set take a GSM8K-format source "
                "(arith, gsm_symbolic, jsonl, gsm8k_hub)"
            )
        return v

    @field_validator("eval")
    @classmethod
    def _eval_names(cls, v: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        if not v:
            raise ValueError(
                "no eval sets: every round is scored on them; define at least one, e.g. "
                "{arith: {source: arith, n: 100}}"
            )
        for name in v:
            if not _NAME_RE.fullmatch(name):
                raise ValueError(f"eval set name {short(name)}: use only a-z, 0-9 and _")
            if name in RESERVED_NAMES:
                raise ValueError(f"eval set name {short(name)} is reserved; pick another name")
        return v
