"""The generate step: m chain-of-thought paths per unlabeled question, with their answers.

One prompt code (``prompts.build_prompt``) and one sampler serve generation and evaluation. A
visible ``if`` picks the backend; the transformers backend is the offline default.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from selfimprove.answers import extract_answer


class GenerateConfig(BaseModel):
    """How round k samples chain-of-thought paths from round k-1's model."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["transformers"] = Field(
        "transformers", description="Sampling backend (transformers: CPU/GPU, offline)."
    )
    num_paths: int = Field(8, ge=1, description="m: paths sampled per question (paper: 32).")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature (paper: 0.7).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (1 = off).")
    top_k: int = Field(0, ge=0, description="Top-k sampling (0 = off).")
    max_new_tokens: int = Field(128, ge=1, description="Generation budget per path, in tokens.")
    style: Literal["fewshot_cot", "zeroshot_cot"] = Field(
        "fewshot_cot", description="Prompt used for sampling (few-shot CoT as in the paper)."
    )
    n_shots: int = Field(4, ge=0, le=8, description="Few-shot exemplars in the prompt (max 8).")
    batch_size: int = Field(32, ge=1, description="Sequences decoded together.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Compute dtype (auto: bf16 where the hardware is fast at it, else fp32)."
    )
    limit: int | None = Field(
        None, ge=1, description="Use only the first N training questions (quick runs); null = all."
    )


def make_sampler(model_dir: str | Path, backend: str, dtype: str, batch_size: int):
    """The sampler for ``backend`` (an ``if``, not a registry)."""
    if backend == "transformers":
        from selfimprove.sampler import TransformersSampler

        return TransformersSampler(model_dir, dtype=dtype, batch_size=batch_size)
    raise ValueError(f"unknown backend {backend!r}; use 'transformers'")


def paths_to_record(qid: str, question: str, completions: list) -> dict:
    """One samples.jsonl record from a question's completions.

    >>> from types import SimpleNamespace as C
    >>> r = paths_to_record("q1", "1+1?", [C(text=" 1+1=2. The answer is 2.", n_tokens=9,
    ...                                       finish_reason="stop"),
    ...                                     C(text=" I am not sure", n_tokens=4, finish_reason="eos")])
    >>> r["answers"], r["finish"]
    (['2', None], ['stop', 'eos'])
    """
    paths = [c.text.strip() for c in completions]
    return {
        "id": qid,
        "question": question,
        "paths": paths,
        "answers": [extract_answer(p) for p in paths],
        "n_tokens": [c.n_tokens for c in completions],
        "finish": [c.finish_reason for c in completions],
    }


def generate(
    model_dir: str | Path, questions: list[dict], cfg: GenerateConfig, seed: int
) -> tuple[list[dict], dict]:
    """Sample ``cfg.num_paths`` paths per question; return (records, stats)."""
    from selfimprove.prompts import build_prompt
    from selfimprove.sampler import SamplingParams

    if cfg.limit is not None:
        questions = questions[: cfg.limit]
    prefix = build_prompt("", cfg.style, cfg.n_shots)[0]
    suffixes = [build_prompt(q["question"], cfg.style, cfg.n_shots)[1] for q in questions]
    sampler = make_sampler(model_dir, cfg.backend, cfg.dtype, cfg.batch_size)
    params = SamplingParams(
        n=cfg.num_paths,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        max_new_tokens=cfg.max_new_tokens,
        seed=seed,
    )
    t0 = time.perf_counter()
    outputs = sampler.sample(prefix, suffixes, params, desc="generate")
    wall = time.perf_counter() - t0
    records = [
        paths_to_record(q["id"], q["question"], outs)
        for q, outs in zip(questions, outputs, strict=True)
    ]
    n_paths = sum(len(r["paths"]) for r in records)
    n_tokens = sum(sum(r["n_tokens"]) for r in records)
    no_answer = sum(a is None for r in records for a in r["answers"])
    stats = {
        "n_questions": len(records),
        "n_paths": n_paths,
        "no_answer_rate": no_answer / n_paths if n_paths else 0.0,
        "stopped_fraction": (
            sum(f == "stop" for r in records for f in r["finish"]) / n_paths if n_paths else 0.0
        ),
        "tokens": n_tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(n_tokens / wall, 1) if wall > 0 else 0.0,
    }
    return records, stats
