"""A stage's independent sampler calls, run in this process or spread over worker processes.

A sampler call's outputs depend only on its prompts, params and seeds, the model, the dtype and
the float settings (``compute``): not on the process it runs in. So on CPU the calls of a stage
(evaluate's passes, generate's shards) can run side by side, one process per core with
``compute.threads`` threads each, and give the same bytes as one after the other
(tests/unit/test_pool.py). A decode step at one thread uses one core; this is how a stage uses
the others without changing a float (``compute.threads: 2`` would: other reduction orders).

The pool is the standard library's :class:`~concurrent.futures.ProcessPoolExecutor` (spawned
workers, each loading the model once); the longest calls are handed out first.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from selfimprove.sampling import factory  # factory.sampler_from_params: tests replace it
from selfimprove.sampling.base import SamplingParams

log = logging.getLogger(__name__)

#: compute.processes auto: a stage with fewer rows to sample than this runs in its own process
AUTO_MIN_ROWS = 256


@dataclass
class Call:
    """One ``sampler.sample(prefix, prompts, params, desc, index_offset)`` call."""

    prefix: str
    prompts: list[str]
    params: SamplingParams
    desc: str = "sampling"
    index_offset: int | list[int] = field(default=0)

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.params.n


def max_processes(compute) -> int:
    """The most processes ``compute.processes`` starts: its number, or for auto one per usable
    core / ``compute.threads`` (at least 1)."""
    if compute.processes != "auto":
        return compute.processes
    return max(1, len(os.sched_getaffinity(0)) // compute.threads)


def processes_for(calls: list[Call], sampler_cfg, compute) -> int:
    """How many processes sample ``calls``: ``compute.processes`` (auto: one per usable core /
    ``compute.threads`` when there are >= 2 calls and >= :data:`AUTO_MIN_ROWS` rows), at most
    one per call; 1 for the vLLM backend (its own engine) and on a GPU.

    >>> from types import SimpleNamespace as S
    >>> c = Call("", ["q"] * 200, SamplingParams(n=1))
    >>> cpu = S(backend="transformers")
    >>> processes_for([c, c], cpu, S(processes=4, threads=1))
    2
    >>> processes_for([c, c], S(backend="vllm"), S(processes=4, threads=1))
    1
    >>> processes_for([c], cpu, S(processes="auto", threads=1))
    1
    """
    if compute is None or len(calls) < 2:
        return 1
    if sampler_cfg is not None and sampler_cfg.backend != "transformers":
        return 1
    n = compute.processes
    if n == "auto":
        if sum(c.rows for c in calls) < AUTO_MIN_ROWS:
            return 1
        n = max_processes(compute)
    if n > 1:
        import torch

        if torch.cuda.is_available():  # one GPU: the sampler's own batch uses it
            return 1
    return max(1, min(n, len(calls)))


def run_calls(
    calls: list[Call],
    model_dir: str | Path,
    sampler_cfg=None,
    compute=None,
    on_done: Callable[[int, list, dict], None] | None = None,
) -> list[tuple[list, dict]]:
    """``(outputs, stats)`` of every call, in ``calls`` order (``stats``: the sampler's
    ``last_stats``, with its ``wall_s``). ``on_done(i, outputs, stats)`` runs here as each call
    finishes (e.g. to save a shard at once). ``sampler_cfg``/``compute``: the params sections
    (None = defaults, one process)."""
    n = processes_for(calls, sampler_cfg, compute)
    results: list = [None] * len(calls)

    def done(i: int, got: tuple[list, dict]) -> None:
        results[i] = got
        if on_done is not None:
            on_done(i, *got)

    if n == 1:
        sampler = factory.sampler_from_params(sampler_cfg, model_dir)
        for i, call in enumerate(calls):
            done(i, _sample_with(sampler, call))
        return results
    log.info("%d sampler calls over %d processes", len(calls), n)
    order = sorted(range(len(calls)), key=lambda i: -calls[i].rows)  # longest first
    with ProcessPoolExecutor(
        n,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(str(model_dir), sampler_cfg, compute),
    ) as pool:
        futures = {pool.submit(_sample, calls[i]): i for i in order}
        for future in as_completed(futures):
            done(futures[future], future.result())
    return results


def _sample_with(sampler, call: Call) -> tuple[list, dict]:
    t0 = time.perf_counter()
    outputs = sampler.sample(
        call.prefix, call.prompts, call.params, desc=call.desc, index_offset=call.index_offset
    )
    stats = {"wall_s": time.perf_counter() - t0} | dict(getattr(sampler, "last_stats", {}))
    return outputs, stats


_WORKER_SAMPLER = None


def _init_worker(model_dir: str, sampler_cfg, compute) -> None:
    """A worker's start: the stage's float settings, then its sampler (the model, loaded once)."""
    global _WORKER_SAMPLER
    from selfimprove.pipeline import apply_compute

    apply_compute(compute)
    _WORKER_SAMPLER = factory.sampler_from_params(sampler_cfg, model_dir)


def _sample(call: Call) -> tuple[list, dict]:
    return _sample_with(_WORKER_SAMPLER, call)
