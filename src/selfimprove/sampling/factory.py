"""The one place a sampling backend is chosen (the ``sampler`` section of params.yaml)."""

from __future__ import annotations

from pathlib import Path

from selfimprove.core.io import InputError


def make_sampler(
    model_dir: str | Path,
    backend: str,
    dtype: str,
    batch_size: int,
    lora_path: str | Path | None = None,
    vllm_engine: dict | None = None,
    question_level: bool = False,
    decode_kernel: bool | str = "auto",
    prefix_kernel: bool | str = "auto",
):
    """The sampler for ``backend`` (an ``if``, not a registry).

    ``lora_path`` (vllm only) applies a LoRA adapter on top of ``model_dir``; the transformers
    backend samples from merged round models. ``vllm_engine`` (``sampler.vllm_engine``): extra
    ``vllm.LLM`` arguments; the transformers backend ignores them.
    """
    if backend == "transformers":
        from selfimprove.sampling.transformers_sampler import TransformersSampler

        if lora_path is not None:
            raise InputError(
                f"lora_path={str(lora_path)!r}: the transformers backend samples from a merged "
                "model folder; give that folder as the model, or use backend: vllm"
            )
        return TransformersSampler(
            model_dir,
            dtype=dtype,
            batch_size=batch_size,
            question_level=question_level,
            decode_kernel=decode_kernel,
            prefix_kernel=prefix_kernel,
        )
    if backend == "vllm":
        from selfimprove.config.runtime import TRANSFORMERS_ONLY

        chosen = {"question_level": question_level, "decode_kernel": decode_kernel,
                  "prefix_kernel": prefix_kernel}  # fmt: skip
        for key in TRANSFORMERS_ONLY:
            if chosen[key] is True:  # auto: not vLLM's concern
                raise InputError(
                    f"{key}=True is a setting of the transformers backend; vLLM has its own "
                    f"KV cache and kernels: set sampler.{key}: false"
                )
        from selfimprove.sampling.vllm_sampler import VLLMSampler

        return VLLMSampler(model_dir, dtype=dtype, lora_path=lora_path, **(vllm_engine or {}))
    raise InputError(f"unknown backend {backend!r}; use 'transformers' or 'vllm'")


def sampler_from_params(cfg, model_dir: str | Path, lora_path: str | Path | None = None):
    """The sampler every sampling stage uses: ``cfg`` is the ``sampler`` params section
    (:class:`selfimprove.config.runtime.SamplerConfig`; ``None`` = its defaults)."""
    if cfg is None:
        from selfimprove.config.runtime import SamplerConfig

        cfg = SamplerConfig()
    return make_sampler(
        model_dir,
        cfg.backend,
        cfg.dtype,
        cfg.batch_size,
        lora_path=lora_path,
        vllm_engine=cfg.vllm_engine,
        question_level=cfg.question_level,
        decode_kernel=cfg.decode_kernel,
        prefix_kernel=cfg.prefix_kernel,
    )
