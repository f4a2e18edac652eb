"""generate's shards sampled on a Ray cluster (``generate.ray_address`` or ``RAY_ADDRESS``).

Ray is used directly: this process (the driver) calls ``ray.init(address=...)``, starts
``ray_workers`` actors of :class:`ShardWorker` (one GPU each on a cluster with GPUs, else
``ray_cpus_per_worker`` CPUs each) and keeps every actor busy with one shard at a time. An
actor builds one sampler (``sampler_from_params``) and samples whole shards with
:func:`selfimprove.methods.shards.sample_shard`, the function a single-process run uses; the
records come back to the driver, which saves each shard into ``shard_dir`` the moment it
arrives (a killed run resumes from them, with or without Ray) and merges them in shard order.

Before sampling, every actor computes :func:`~selfimprove.methods.shards.run_settings` on its
own node (model folder digest, code and torch/transformers versions) and the driver refuses to
go on if any differs from its own, naming the node: a stale model copy or another library
version on one machine would otherwise change that machine's shards silently. Every node
therefore needs the same environment as the driver (the project installed, the same torch and
transformers builds) and the model folder at the same absolute path (a shared disk, or the
project checked out and ``dvc pull``ed at the same path on each).

Byte-identity: on CPU the merged records equal a single-process run's byte for byte (tested on
a local cluster, one torch thread per actor as in the single-process run); on GPUs see the
module docstring of :mod:`selfimprove.methods.generate`. A lost actor or node fails the run
(``ray.get`` raises); rerunning resumes from the shards already saved.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter, deque
from pathlib import Path

from selfimprove.config.methods import GenerateConfig
from selfimprove.config.runtime import SamplerConfig
from selfimprove.core.io import InputError
from selfimprove.methods.shards import Shard, run_settings, sample_shard
from selfimprove.sampling.factory import sampler_from_params

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'selfimprove[ray]'"


def resolve_address(cfg: GenerateConfig) -> str | None:
    """The Ray address to sample on: ``cfg.ray_address``, else ``$RAY_ADDRESS``, else None.

    >>> resolve_address(GenerateConfig(ray_address="auto"))
    'auto'
    """
    return cfg.ray_address or os.environ.get("RAY_ADDRESS") or None


def import_ray():
    """The ``ray`` module, or a one-line InputError saying how to install it."""
    try:
        import ray  # optional (selfimprove[ray]): imported only when a run uses Ray
    except ImportError as e:
        raise InputError(
            f"generate.ray_address / RAY_ADDRESS is set but Ray is not installed: {INSTALL_HINT}"
        ) from e
    return ray


class ShardWorker:
    """A Ray actor's state: one sampler, made on the first shard, reused for every other."""

    def __init__(
        self,
        model_dir: str,
        cfg: GenerateConfig,
        threads: int | None,
        sampler_cfg: SamplerConfig | None = None,
    ):
        if threads:
            import torch  # heavy: imported in the actor only, where it samples

            torch.set_num_threads(threads)
        self.model_dir = model_dir
        self.cfg = cfg
        self.sampler_cfg = sampler_cfg
        self.sampler = None

    def check(self, seed: int, prefix: str) -> dict:
        """This node's id, host name and run settings (what decides the samples)."""
        import ray  # in the actor: installed there, as on the driver

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "host": socket.gethostname(),
            "settings": run_settings(self.model_dir, self.cfg, seed, prefix, self.sampler_cfg),
        }

    def sample(self, prefix: str, shard: Shard, params, n_shards: int) -> tuple[list, dict]:
        if self.sampler is None:
            self.sampler = sampler_from_params(self.sampler_cfg, self.model_dir)
        return sample_shard(self.sampler, prefix, shard, params, n_shards)


def _actor_options(ray, cfg: GenerateConfig, n_pending: int) -> tuple[int, dict, int | None]:
    """(number of actors, their resource request, torch threads) for the connected cluster."""
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if gpus:
        opts, slots, threads = {"num_gpus": 1}, gpus, None
    else:
        cpus = cfg.ray_cpus_per_worker
        opts, slots, threads = {"num_cpus": cpus}, int(res.get("CPU", 0)) // cpus, cpus
    n = cfg.ray_workers or slots
    if n < 1:
        raise InputError(
            f"the Ray cluster has no GPU and {res.get('CPU', 0):g} CPUs, fewer than "
            f"ray_cpus_per_worker={cfg.ray_cpus_per_worker}; add nodes, or set "
            "generate.ray_workers to wait for an autoscaler"
        )
    if cfg.ray_workers > slots:
        log.warning(
            "ray_workers=%d but the cluster has room for %d now: the rest wait for resources",
            cfg.ray_workers,
            slots,
        )
    return min(n, n_pending), opts, threads


def _mismatch(mine: dict, theirs: dict) -> list[str]:
    keys = sorted(set(mine) | set(theirs))
    return [k for k in keys if mine.get(k) != theirs.get(k)]


def sample_on_ray(
    address: str,
    model_dir: str | Path,
    cfg: GenerateConfig,
    seed: int,
    settings: dict,
    prefix: str,
    params,
    pending: list[Shard],
    n_shards: int,
    finished,
    sampler_cfg: SamplerConfig | None = None,
) -> dict:
    """Sample ``pending`` on Ray; ``finished(shard, records, stats)`` is called per shard, as each
    arrives. Returns what the actors did (for generate.json: workers, nodes, shards per node)."""
    ray = import_ray()
    t0 = time.perf_counter()
    model_dir = Path(model_dir).resolve()  # actors do not run in this process's folder
    own = not ray.is_initialized()
    if own:
        try:
            ray.init(address=address)
        except ConnectionError as e:
            raise InputError(f"Ray cluster {address!r}: {e}") from e
    actors = []
    try:
        n, opts, threads = _actor_options(ray, cfg, len(pending))
        log.info("Ray %s: %d sampler actors (%s) for %d shards", address, n, opts, len(pending))
        remote = ray.remote(ShardWorker).options(**opts)
        actors = [remote.remote(str(model_dir), cfg, threads, sampler_cfg) for _ in range(n)]
        infos = ray.get([a.check.remote(seed, prefix) for a in actors])
        for info in infos:
            differ = _mismatch(settings, info["settings"])
            if differ:
                raise InputError(
                    f"Ray node {info['host']} ({info['node_id'][:12]}) would sample differently "
                    f"from this machine: {', '.join(differ)} differ (model folder "
                    f"{model_dir}, code or library versions); give every node the same "
                    "environment and model files"
                )
        node_of = {a: info["node_id"] for a, info in zip(actors, infos, strict=True)}
        queue = deque(pending)
        running = {}

        def submit(actor) -> None:
            if queue:
                shard = queue.popleft()
                running[actor.sample.remote(prefix, shard, params, n_shards)] = (actor, shard)

        for a in actors:
            submit(a)
        per_node: Counter = Counter()
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            actor, shard = running.pop(ref)
            records, stats = ray.get(ref)
            finished(shard, records, stats)
            per_node[node_of[actor]] += 1
            submit(actor)
    finally:
        for a in actors:
            ray.kill(a)
        if own:
            ray.shutdown()
    return {
        "workers": n,
        "nodes": len(per_node),
        "shards_per_node": sorted([node, k] for node, k in per_node.items()),
        "elapsed_s": round(time.perf_counter() - t0, 2),
    }
