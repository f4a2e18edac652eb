"""``method:``, ``generate:``, ``refine:``, ``filter:`` and ``meta_skill:`` in params.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from selfimprove.config.base import Section
from selfimprove.config.training import nested_finetune
from selfimprove.core.prompts import STYLES
from selfimprove.core.prompts.feedback import MAX_FEEDBACK_SHOTS  # bounds refine/meta_skill n_shots

# ---------------------------------------------------------------------- generate


class GenerateConfig(Section):
    """How round k samples chain-of-thought paths from round k-1's model."""

    model_config = ConfigDict(extra="forbid")

    num_paths: int = Field(8, ge=1, description="m: paths sampled per question (paper: 32).")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature (paper: 0.7).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (1 = off).")
    top_k: int = Field(0, ge=0, description="Top-k sampling (0 = off).")
    max_new_tokens: int = Field(128, ge=1, description="Generation budget per path, in tokens.")
    style: Literal["fewshot_cot", "zeroshot_cot"] = Field(
        "fewshot_cot", description="Prompt used for sampling (few-shot CoT as in the paper)."
    )
    n_shots: int = Field(4, ge=0, le=8, description="Few-shot exemplars in the prompt (max 8).")
    limit: int | None = Field(
        None, ge=1, description="Use only the first N training questions (quick runs); null = all."
    )
    shard_size: int = Field(
        64,
        ge=1,
        description="Questions per shard; each finished shard is saved, so a killed run resumes "
        "after the last finished shard (smaller = less work lost, but each shard's last rows "
        "decode in an emptying batch: 64 x 8 paths keep a batch of 128 full longer than 32).",
    )
    ray_address: str | None = Field(
        None,
        min_length=1,
        description="Ray cluster to sample the shards on (pip install 'selfimprove[ray]'), as "
        "ray.init(address=...) takes it: 'auto' (the cluster `ray start` joined this machine "
        "to), 'HOST:6379' (a head node's address), 'ray://HOST:10001' (Ray Client) or 'local' "
        "(a new Ray instance on this machine only, e.g. one sampler per GPU). null: the "
        "RAY_ADDRESS environment variable if it is set, else no Ray (sample in this process). "
        "The samples are the same either way; the shard manifests leave it out.",
    )
    ray_workers: int = Field(
        0,
        ge=0,
        description="With Ray: sampler actors (each loads the model once and samples whole "
        "shards). 0 = one per GPU of the cluster, or on a cluster without GPUs one per "
        "ray_cpus_per_worker CPUs; never more than the shards left to sample.",
    )
    ray_cpus_per_worker: int = Field(
        1,
        ge=1,
        description="With Ray on a cluster without GPUs: CPUs each actor reserves (= its torch "
        "threads). On a cluster with GPUs every actor takes one GPU instead.",
    )


# ---------------------------------------------------------------------- refine


class RefineConfig(Section):
    """The per-round refine step (self-feedback + self-refinement, or STaR's rationalization)."""

    model_config = ConfigDict(extra="forbid")

    max_iterations: int = Field(
        1,
        ge=0,
        le=10,
        description="Self-refinement rewrites per answer at most (method self/lmsi_self); the "
        "loop stops earlier when the model's verdict is 'correct' or unparsable. 0 = feedback "
        "only (judge, never rewrite).",
    )
    n_shots: int = Field(
        0,
        ge=0,
        le=MAX_FEEDBACK_SHOTS,
        description=f"Exemplars in the feedback/refinement prompts (0..{MAX_FEEDBACK_SHOTS}); the "
        "meta-skill corpus is written in the same format. 0 (the default): the meta-skill stage "
        "teaches the format, so prompts stay short (~60 vs ~540 tokens with 3 exemplars, which "
        "made meta-skill training ~4x slower).",
    )
    feedback_max_new_tokens: int = Field(
        64, ge=1, description="Token budget of one feedback (it ends with the verdict line)."
    )
    refine_max_new_tokens: int = Field(
        128, ge=1, description="Token budget of one refined answer (and of a STaR rationalization)."
    )
    temperature: float = Field(
        0.0, ge=0.0, description="Sampling temperature of feedback and refinement (0 = greedy)."
    )
    max_paths: int = Field(
        0,
        ge=0,
        description="Give feedback on only the first N sampled paths of each question (cost); the "
        "others get no verdict and are never kept by self/lmsi_self. 0 = all paths.",
    )


# ---------------------------------------------------------------------- filter


class FormatsConfig(Section):
    """Which prompt formats the training set holds (LMSI uses all four)."""

    model_config = ConfigDict(extra="forbid")

    fewshot_cot: bool = Field(
        True, description="Few-shot exemplars + question -> kept rationale (one per kept path)."
    )
    fewshot_direct: bool = Field(
        True,
        description="Few-shot direct-answer exemplars + question -> 'The answer is N.' "
        "(one per selected question).",
    )
    zeroshot_cot: bool = Field(
        True,
        description='Question + "Let\'s think step by step." -> kept rationale '
        "(one per kept path).",
    )
    zeroshot_direct: bool = Field(
        True, description="Question alone -> 'The answer is N.' (one per selected question)."
    )

    @model_validator(mode="after")
    def _at_least_one(self) -> FormatsConfig:
        if not any(getattr(self, s) for s in STYLES):
            raise ValueError(
                f"all training formats are disabled; set at least one of {', '.join(STYLES)} "
                "to true"
            )
        return self

    def enabled(self) -> list[str]:
        """Enabled formats, in the fixed order of :data:`selfimprove.core.prompts.STYLES`."""
        return [s for s in STYLES if getattr(self, s)]


class FilterConfig(Section):
    """How sampled paths become training data (the LMSI filter)."""

    model_config = ConfigDict(extra="forbid")

    min_agreement: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Train on a question only if at least this fraction of its paths give the "
        "majority answer (0 = every question with a majority, as in the paper).",
    )
    max_paths_per_question: int = Field(
        2, ge=0, description="Keep at most this many agreeing paths per question (0 = all)."
    )
    dedupe: bool = Field(
        True, description="Drop a kept path identical to an earlier one of the same question."
    )
    n_shots: int = Field(
        2,
        ge=0,
        le=8,
        description="Exemplars in the few-shot training formats (0..8; fewer = faster training).",
    )
    formats: FormatsConfig = Field(
        default_factory=FormatsConfig, description="Prompt formats of the training examples."
    )
    weighting: Literal["none", "share", "exp"] = Field(
        "none",
        description="Weight of a selected question's training examples from its vote share s "
        "(RoiRL-style reward-weighted SFT): none (1, the default), share (s), exp "
        "(exp(s / weight_beta)). Fine-tuning scales the weights to mean 1 over the training set.",
    )
    weight_beta: float = Field(
        1.0, gt=0.0, description="weighting: exp -- the temperature beta of exp(s / beta)."
    )
    drop_band: list[float] = Field(
        [],
        description="Drop the questions whose vote share s is in the band [low, high) (medium "
        "agreement, where the majority is most often wrong), e.g. [0.4, 0.7]; [] = off.",
    )
    order: Literal["input", "easy_to_hard"] = Field(
        "input",
        description="Order of train.jsonl: input (the questions' order) or easy_to_hard (by vote "
        "share, highest first; ties keep the input order). A curriculum also needs "
        "finetune.order: as_written.",
    )

    @model_validator(mode="after")
    def _band(self) -> FilterConfig:
        band = self.drop_band
        if band and (len(band) != 2 or not 0.0 <= band[0] < band[1] <= 1.0):
            raise ValueError(
                f"drop_band: {band} must be [] or [low, high] with 0 <= low < high <= 1, "
                "e.g. [0.4, 0.7]"
            )
        return self


# ---------------------------------------------------------------------- meta_skill

MetaSkillFinetune = nested_finetune(
    2, "Fine-tuning on the meta-skill corpus (same keys as `finetune`; epochs default 2)."
)


class MetaSkillConfig(Section):
    """Meta-skill learning on the labeled seed set (methods self and lmsi_self)."""

    model_config = ConfigDict(extra="forbid")

    teacher: Literal["rule", "lm", "openai"] = Field(
        "rule",
        description="Who writes the feedback: rule (offline arithmetic + final-answer checker), "
        "lm (a causal LM, teacher_model), openai (an OpenAI-compatible server: base_url + model).",
    )
    teacher_model: str | None = Field(
        None, description="teacher: lm -- a local model folder or a hub id."
    )
    base_url: str | None = Field(
        None,
        description="teacher: openai -- the server's API root, e.g. http://localhost:8000/v1 "
        "(vLLM, llama.cpp server, ...); /v1 is added when missing.",
    )
    model: str | None = Field(None, description="teacher: openai -- the model name to request.")
    api_key_env: str | None = Field(
        None,
        description="teacher: openai -- name of the environment variable holding the API key "
        "(null = no key, e.g. a local server). The key itself never goes in params.yaml.",
    )
    request_timeout_s: float = Field(
        60.0, gt=0, description="teacher: openai -- timeout of one request, in seconds."
    )
    max_retries: int = Field(
        5,
        ge=0,
        description="teacher: openai -- retries of a request that fails (connection error, "
        "timeout, 408/409/429, 5xx), with exponential backoff and the server's Retry-After; a "
        "request still failing after them stops the stage.",
    )
    teacher_n_shots: int = Field(
        3,
        ge=0,
        le=MAX_FEEDBACK_SHOTS,
        description="teacher: lm/openai -- worked feedback exemplars (with reference answers) in "
        "the teacher's prompt. Separate from refine.n_shots, the student's prompt format: an "
        "untrained teacher needs exemplars, the meta-skill-trained student does not.",
    )
    n_initial: int = Field(
        4, ge=1, description="Initial answers sampled per seed question (each gets feedback)."
    )
    temperature: float = Field(
        0.7, gt=0, description="Sampling temperature of the initial answers."
    )
    max_new_tokens: int = Field(128, ge=1, description="Token budget of one initial answer.")
    n_shots: int = Field(
        4,
        ge=0,
        le=8,
        description="Exemplars in the few-shot CoT prompt of the initial answers and of the "
        "fewshot_cot seed QA pairs.",
    )
    qa_formats: list[Literal["fewshot_cot", "zeroshot_cot"]] = Field(
        ["fewshot_cot", "zeroshot_cot"],
        description="Prompt formats of the seed QA pairs added to the corpus ([] = none).",
    )
    judge_gold_solution: bool = Field(
        True,
        description="Also ask the teacher for feedback on each seed question's gold solution, so "
        "the corpus holds approvals. A small model's sampled answers are mostly wrong (12.5% right "
        "on the default); without approvals SmolLM2 learned to call every answer wrong "
        "(docs/findings.md).",
    )
    balance_verdicts: bool = Field(
        True,
        description="Subsample the feedback examples whose verdict is 'incorrect' to the number "
        "judged 'correct' (seeded), so the judge is not trained toward one verdict. Refinement "
        "examples are all kept.",
    )
    drop_false_approvals: bool = Field(
        True,
        description="Drop teacher feedback that judges an answer correct although its final "
        "answer differs from the gold (counted; matters for lm/openai teachers).",
    )
    finetune: MetaSkillFinetune

    @model_validator(mode="after")
    def _teacher_needs(self) -> MetaSkillConfig:
        if self.teacher == "lm" and not self.teacher_model:
            raise ValueError(
                "teacher: lm needs teacher_model (a model folder or hub id); or use teacher: rule"
            )
        if self.teacher == "openai" and not (self.base_url and self.model):
            raise ValueError(
                "teacher: openai needs base_url (e.g. http://localhost:8000/v1) and model; "
                "or use teacher: rule"
            )
        return self
