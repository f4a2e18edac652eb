"""The generate step: m chain-of-thought paths per unlabeled question, with their answers.

One prompt code (``prompts.build_prompt``) and one sampler serve generation and evaluation. A
visible ``if`` picks the backend; the transformers backend is the offline default, vLLM the
optional GPU one.

Resumable: the questions are sampled in shards of ``shard_size``. With a ``shard_dir``, every
finished shard is written at once (``shard-00000.jsonl`` + a ``shard-00000.json`` manifest); a
rerun reads back the shards whose manifest matches the current settings and samples only the
rest. A shard's samples depend only on its questions and their global indices (the seeds), so a
resumed run ends with the same records as an uninterrupted one.

Across machines: with ``ray_address`` (params) or ``RAY_ADDRESS`` (environment) set, the shards
still to sample go to sampler actors on a Ray cluster (:mod:`selfimprove.methods.ray_generate`);
this process writes each finished shard into ``shard_dir`` as it comes back and merges them as
above. On one machine, ``compute.processes`` samples the shards side by side in worker
processes (:mod:`selfimprove.sampling.pool`). Every shard is sampled by the same call
(:func:`~selfimprove.methods.shards.shard_call`: one sampler call over that shard's prompts: the
same batches of the same ``batch_size``, the same seeds), whichever process samples it. On CPU
the merged records are byte-identical to a single-process run (tested). On GPUs the batches are
the same too, so the records are as identical as two single-process runs on that GPU type are
(the kernels' own nondeterminism; another GPU model, driver or library version may change float
results); vLLM schedules its own batches anyway.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from selfimprove.config.methods import GenerateConfig
from selfimprove.config.runtime import ComputeConfig, SamplerConfig
from selfimprove.core.digest import file_sha256, text_sha256
from selfimprove.core.io import read_jsonl, write_json, write_jsonl
from selfimprove.core.prompts import build_prompt
from selfimprove.methods.ray_generate import resolve_address, sample_on_ray
from selfimprove.methods.shards import TIMING_KEYS, Shard, run_settings, shard_call, shard_result
from selfimprove.sampling.base import SamplingParams
from selfimprove.sampling.pool import run_calls

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- resume


def shard_paths(shard_dir: Path, k: int) -> tuple[Path, Path]:
    """(records, manifest) paths of shard ``k``.

    >>> [p.name for p in shard_paths(Path("s"), 3)]
    ['shard-00003.jsonl', 'shard-00003.json']
    """
    stem = f"shard-{k:05d}"
    return shard_dir / f"{stem}.jsonl", shard_dir / f"{stem}.json"


def _shard_index(path: Path) -> int | None:
    """``3`` for ``shard-00003.jsonl`` / ``.json``, None for other names.

    >>> _shard_index(Path("shard-00003.json")), _shard_index(Path("notes.txt"))
    (3, None)
    """
    stem = path.name.split(".", 1)[0]
    if not stem.startswith("shard-") or not stem[6:].isdigit():
        return None
    return int(stem[6:])


def _discard(paths: tuple[Path, Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def load_shard(shard_dir: Path, k: int, expected: dict) -> list[dict] | None:
    """Shard ``k``'s records if its manifest equals ``expected`` (else discard it, None)."""
    rec_path, man_path = shard_paths(shard_dir, k)
    if not man_path.exists():
        if rec_path.exists():
            log.warning("%s: no manifest (killed while writing?); sampling it again", rec_path)
            _discard((rec_path, man_path))
        return None
    try:
        manifest = json.loads(man_path.read_text(encoding="utf-8"))
        found = {key: manifest.get(key) for key in expected}
    except (OSError, ValueError, AttributeError):
        found = None
    if found is None:
        reason = "unreadable manifest"
    elif found != expected:
        differ = [key for key in expected if found[key] != expected[key]]
        if "settings" in differ and isinstance(found["settings"], dict):
            sub = [
                key
                for key in expected["settings"]
                if found["settings"].get(key) != expected["settings"][key]
            ]
            differ[differ.index("settings")] = f"settings ({', '.join(sub)})"
        reason = "differs in " + ", ".join(differ)
    elif not rec_path.exists() or file_sha256(rec_path) != manifest.get("records_sha256"):
        reason = "records file missing or changed since it was written"
    else:
        return read_jsonl(rec_path)
    log.warning("%s: discarded (%s); sampling it again", man_path, reason)
    _discard((rec_path, man_path))
    return None


def _clean_shard_dir(shard_dir: Path, n_shards: int) -> None:
    """Remove temporaries of killed writes and shards beyond the current question list."""
    for p in shard_dir.iterdir():
        k = _shard_index(p)
        if p.name.startswith(".shard-") and p.name.endswith(".tmp") and p.is_file():
            p.unlink(missing_ok=True)
        elif k is not None and k >= n_shards and p.is_file():
            log.info("%s: beyond the %d shards of this run; removed", p, n_shards)
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- the step


def save_shard(shard_dir: Path, shard: Shard, records: list[dict], wall_s: float) -> None:
    """Write a finished shard: records first, then the manifest that vouches for them."""
    rec_path, man_path = shard_paths(shard_dir, shard.k)
    write_jsonl(rec_path, records)
    write_json(
        man_path,
        {
            **shard.expected,
            "records_sha256": file_sha256(rec_path),
            "n_records": len(records),
            "wall_s": round(wall_s, 2),
        },
    )


def generate(
    model_dir: str | Path,
    questions: list[dict],
    cfg: GenerateConfig,
    seed: int,
    shard_dir: str | Path | None = None,
    sampler_cfg: SamplerConfig | None = None,
    compute: ComputeConfig | None = None,
) -> tuple[list[dict], dict]:
    """Sample ``cfg.num_paths`` paths per question; return (records, stats).

    ``sampler_cfg``: the ``sampler`` params section (``None`` = its defaults); ``compute``: the
    ``compute`` section, whose ``processes`` may sample the shards side by side (same samples).

    Questions are sampled in shards of ``cfg.shard_size``; question ``i`` (after ``limit``)
    always uses the seeds of index ``i``. With ``shard_dir``, finished shards are saved there
    and reused by a rerun with the same settings (see the module docstring). The shards left to
    sample are sampled here, or on Ray when ``cfg.ray_address`` or ``RAY_ADDRESS`` is set (no
    Ray is contacted when every shard is already in ``shard_dir``).
    """
    if cfg.limit is not None:
        questions = questions[: cfg.limit]
    prefix = build_prompt("", cfg.style, cfg.n_shots)[0]
    suffixes = [build_prompt(q["question"], cfg.style, cfg.n_shots)[1] for q in questions]
    params = SamplingParams(
        n=cfg.num_paths,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        max_new_tokens=cfg.max_new_tokens,
        seed=seed,
    )
    size = cfg.shard_size
    starts = list(range(0, len(questions), size))
    settings = None
    if shard_dir is not None:
        shard_dir = Path(shard_dir)
        shard_dir.mkdir(parents=True, exist_ok=True)
        _clean_shard_dir(shard_dir, len(starts))
        settings = run_settings(model_dir, cfg, seed, prefix, sampler_cfg)

    done: dict[int, list[dict]] = {}
    pending: list[Shard] = []
    for k, start in enumerate(starts):
        shard_q = questions[start : start + size]
        shard_s = suffixes[start : start + size]
        expected = None
        if shard_dir is not None:
            expected = {
                "settings": settings,
                "start": start,
                "ids": [q["id"] for q in shard_q],
                "prompts_sha256": text_sha256(shard_s),
            }
            loaded = load_shard(shard_dir, k, expected)
            if loaded is not None:
                done[k] = loaded
                continue
        pending.append(Shard(k, start, shard_q, shard_s, expected))
    reused = len(done)

    wall = 0.0
    new_tokens = 0
    timing = dict.fromkeys(TIMING_KEYS, 0.0)

    def finished(shard: Shard, shard_records: list[dict], shard_stats: dict) -> None:
        nonlocal wall, new_tokens
        wall += shard_stats["wall_s"]
        for key in TIMING_KEYS:
            timing[key] += shard_stats[key]
        new_tokens += sum(sum(r["n_tokens"]) for r in shard_records)
        done[shard.k] = shard_records
        if shard_dir is not None:
            save_shard(shard_dir, shard, shard_records, shard_stats["wall_s"])

    address = resolve_address(cfg)
    ray_stats = None
    if pending and address is None:  # here: one process, or one per core (compute.processes)
        calls = [shard_call(prefix, shard, params, len(starts)) for shard in pending]

        def one_done(i: int, outputs: list, sampler_stats: dict) -> None:
            shard = pending[i]
            finished(shard, *shard_result(shard, outputs, sampler_stats))

        run_calls(calls, model_dir, sampler_cfg, compute, on_done=one_done)
    elif pending:
        if settings is None:
            settings = run_settings(model_dir, cfg, seed, prefix, sampler_cfg)
        ray_stats = sample_on_ray(
            address,
            model_dir,
            cfg,
            seed,
            settings,
            prefix,
            params,
            pending,
            len(starts),
            finished,
            sampler_cfg,
        )
    if reused:
        log.info("reused %d of %d shards from %s", reused, len(starts), shard_dir)
    records = [r for k in sorted(done) for r in done[k]]

    n_paths = sum(len(r["paths"]) for r in records)
    n_tokens = sum(sum(r["n_tokens"]) for r in records)
    no_answer = sum(a is None for r in records for a in r["answers"])
    stats = {
        "backend": (sampler_cfg or SamplerConfig()).backend,
        "n_questions": len(records),
        "n_paths": n_paths,
        "no_answer_rate": no_answer / n_paths if n_paths else 0.0,
        "stopped_fraction": (
            sum(f == "stop" for r in records for f in r["finish"]) / n_paths if n_paths else 0.0
        ),
        "tokens": n_tokens,
        "shards": len(starts),
        "shards_reused": reused,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(new_tokens / wall, 1) if wall > 0 else 0.0,
        **{key: round(v, 2) for key, v in timing.items()},
    }
    if ray_stats is not None:
        stats["ray"] = ray_stats
    return records, stats
