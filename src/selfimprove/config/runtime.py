"""``sampler:`` and ``compute:`` in params.yaml: how every sampling stage samples, and the
float-moving settings every stage applies (``pipeline.stage_main``) and records."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from selfimprove.config.base import Section

#: vllm.LLM arguments the sampler sets itself (sampler.vllm_engine must not), and where instead
VLLM_OWNED_KEYS = {
    "model": "each stage passes its round's model folder",
    "dtype": "set sampler.dtype",
    "seed": "set the top-level seed",
    "enable_prefix_caching": "always on (every prompt shares the few-shot prefix)",
    "enable_lora": "on when a LoRA adapter is served",
    "max_lora_rank": "taken from the adapter",
}

#: keys that moved to another section: (section, key) -> the new dotted key (an old key is an
#: error naming it; config.format_errors)
SAMPLER_MOVED_KEYS = {
    ("generate", "backend"): "sampler.backend",
    ("generate", "vllm_engine"): "sampler.vllm_engine",
    ("generate", "dtype"): "sampler.dtype",
    ("generate", "batch_size"): "sampler.batch_size",
    ("evaluate", "dtype"): "sampler.dtype",
    ("evaluate", "batch_size"): "sampler.batch_size",
    ("meta_skill", "dtype"): "sampler.dtype",
    ("meta_skill", "batch_size"): "sampler.batch_size",
}


#: sampler keys that are settings of the transformers backend only (vllm refuses them)
TRANSFORMERS_ONLY = ("question_level", "decode_kernel", "prefix_kernel")


class SamplerConfig(Section):
    """The sampler of every sampling stage (generate, meta_skill, refine, evaluate, Ray actors)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="Sampling backend of every sampling stage (generate, evaluate, refine, "
        "meta_skill): transformers (CPU/GPU, offline) or vllm (GPU: pip install "
        "'selfimprove[vllm]'; CPU: make setup-vllm).",
    )
    vllm_engine: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra vllm.LLM (EngineArgs) arguments for every vLLM sampling stage, e.g. "
        "{enforce_eager: true} (no torch.compile: the engine starts ~2x faster, decodes slower; "
        "the tests use it), {tensor_parallel_size: 4} or {gpu_memory_utilization: 0.8}. "
        "Ignored by the transformers backend.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Compute dtype (auto: bf16 where the hardware is fast at it, else fp32).",
    )
    batch_size: int = Field(
        128,
        ge=1,
        description="Sequences decoded together (transformers backend; vLLM schedules its own). "
        "On CPU a decode step of 128 rows costs about 2.5x one of 32 (benchmarks/sampler.py); "
        "another value can flip a rare near-tie token (other float reductions), so it is one "
        "key for every stage.",
    )
    question_level: bool = Field(
        False,
        description="Transformers backend on CPU: keep each question's prompt keys/values once "
        "for its m rows (a third cascade level) instead of in every row's tail: faster (docs/"
        "sampler-speed.md), but other bf16 samples than false (the rounding of the attention "
        "changes; greedy fp32 outputs stay those of generate). The locked reference uses false.",
    )
    decode_kernel: bool | Literal["auto"] = Field(
        "auto",
        description="Transformers backend on CPU, bf16: a decode step's attention over the "
        "rows' tails through selfimprove's AVX-512 kernel (compiled at first use: a C++ "
        "compiler and ninja, ~25 s once) instead of torch's flash kernel: ~3x faster there, "
        "1.3x on sampling (docs/sampler-speed.md), equal up to rounding, so other bf16 samples "
        "than false. auto: on where the model fits it (bf16 on CPU, head_dim 64) and it builds "
        "(AVX-512), else flash; true: refused where it cannot run; false: flash everywhere (the "
        "AMX reference lmsi_default_locked was made so).",
    )
    prefix_kernel: bool | Literal["auto"] = Field(
        "auto",
        description="Transformers backend on CPU, bf16: the shared few-shot prefix's part of "
        "every step's attention through selfimprove's AVX512-BF16 kernel (built with the decode "
        "kernel) instead of torch's flash kernel: ~2.4x faster there, 1.15x on sampling "
        "(docs/sampler-speed.md), equal up to rounding, so other bf16 samples than false. "
        "auto: on where the model fits it and the CPU has AVX512-BF16; true: refused where it "
        "cannot run; false: flash for the prefix (the references before 2026-12-08 were made so).",
    )

    @model_validator(mode="after")
    def _transformers_only(self) -> SamplerConfig:
        on = [k for k in TRANSFORMERS_ONLY if getattr(self, k) is True]  # auto: n/a there
        if on and self.backend != "transformers":
            raise ValueError(
                "; ".join(
                    f"{k}: true is a setting of the transformers backend (CPU), not of "
                    f"backend: {self.backend}; set {k}: false"
                    for k in on
                )
            )
        return self

    @field_validator("vllm_engine")
    @classmethod
    def _engine_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        owned = {k: VLLM_OWNED_KEYS[k] for k in value if k in VLLM_OWNED_KEYS}
        if owned:
            raise ValueError(
                "; ".join(f"{k!r} is set by selfimprove: {fix}" for k, fix in owned.items())
            )
        return value


class ComputeConfig(Section):
    """Settings that move floats, applied by every stage before any torch work and recorded
    (params -> dvc.lock, MLflow); and how many processes sample, which moves none."""

    model_config = ConfigDict(extra="forbid")

    threads: int = Field(
        1,
        ge=1,
        description="torch intra-op threads of every stage (also OMP_NUM_THREADS/MKL_NUM_THREADS "
        "for its subprocesses; overrides those variables). Another count sums floats in another "
        "order: outputs differ. 1 reproduces the locked reference and does not collapse when "
        "another process shares a core; with N free cores, set N (faster, other numbers).",
    )
    processes: int | Literal["auto"] = Field(
        "auto",
        description="worker processes for a sampling stage's independent sampler calls "
        "(evaluate's passes, generate's shards; transformers on CPU), each with `threads` "
        "threads. Every call's outputs are the same bytes in any process (tested), so this "
        "moves no float. auto: one per usable core / threads when the stage has at least 2 "
        "calls and 256 rows to sample, else 1 (tiny runs do not pay a process start).",
    )
    matmul_precision: Literal["highest", "high", "medium"] = Field(
        "highest",
        description="torch.set_float32_matmul_precision: highest = full fp32 matmuls; high/medium "
        "allow TF32/bf16 internally where the hardware has them (faster, other numbers).",
    )

    @field_validator("processes")
    @classmethod
    def _processes(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be >= 1 or 'auto' (1 = sample in the stage's own process)")
        return value
