"""The generate step: m chain-of-thought paths per unlabeled question, with their answers.

One prompt code (``prompts.build_prompt``) and one sampler serve generation and evaluation. A
visible ``if`` picks the backend; the transformers backend is the offline default, vLLM the
optional GPU one.

Resumable: the questions are sampled in shards of ``shard_size``. With a ``shard_dir``, every
finished shard is written at once (``shard-00000.jsonl`` + a ``shard-00000.json`` manifest); a
rerun reads back the shards whose manifest matches the current settings and samples only the
rest. A shard's samples depend only on its questions and their global indices (the seeds), so a
resumed run ends with the same records as an uninterrupted one.

Split across processes or machines: ``worker=i, num_workers=n`` samples only the shards
``k`` with ``k % n == i`` into the shared ``shard_dir`` (the same files a single run writes) and
leaves the others alone. A later plain run (or ``merge_only=True``, which refuses to sample)
reads them all back, so the merged samples equal a single-process run's.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from selfimprove.config.methods import GenerateConfig
from selfimprove.core.answers import extract_answer
from selfimprove.core.digest import digest, file_sha256, text_sha256
from selfimprove.core.io import InputError
from selfimprove.sampling.factory import make_sampler

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
_TIMING_KEYS = ("prefix_prefill_s", "suffix_prefill_s", "decode_s", "other_s")


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


# ---------------------------------------------------------------------------- resume


def run_settings(model_dir: str | Path, cfg: GenerateConfig, seed: int, prefix: str) -> dict:
    """Everything besides the questions that decides a shard's samples (stored in manifests).

    ``limit`` is left out on purpose: a bigger limit keeps the earlier shards valid.
    """
    import importlib.metadata as md

    from selfimprove.core import answers
    from selfimprove.sampling import transformers_sampler as sampler

    code = [Path(__file__), Path(sampler.__file__), Path(answers.__file__)]
    libs = ["torch", "transformers"] + (["vllm"] if cfg.backend == "vllm" else [])
    versions = {}
    for lib in libs:
        try:
            versions[lib] = md.version(lib)
        except md.PackageNotFoundError:
            versions[lib] = None
    return {
        "manifest_version": MANIFEST_VERSION,
        "model": digest(model_dir),
        "seed": seed,
        "prefix_sha256": text_sha256([prefix]),
        "code_sha256": text_sha256([p.read_text(encoding="utf-8") for p in code]),
        "versions": versions,
        **cfg.model_dump(exclude={"limit"}),
    }


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
    from selfimprove.core.io import read_jsonl

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


def _clean_shard_dir(shard_dir: Path, n_shards: int, remove_tmp: bool = True) -> None:
    """Remove temporaries of killed writes and shards beyond the current question list.

    Workers sharing the folder pass ``remove_tmp=False``: a ``.tmp`` may be another worker's
    write in progress.
    """
    for p in shard_dir.iterdir():
        k = _shard_index(p)
        if p.name.startswith(".shard-") and p.name.endswith(".tmp") and p.is_file():
            if not remove_tmp:
                continue
            p.unlink(missing_ok=True)
        elif k is not None and k >= n_shards and p.is_file():
            log.info("%s: beyond the %d shards of this run; removed", p, n_shards)
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- the step


def generate(
    model_dir: str | Path,
    questions: list[dict],
    cfg: GenerateConfig,
    seed: int,
    shard_dir: str | Path | None = None,
    worker: int = 0,
    num_workers: int = 1,
    merge_only: bool = False,
) -> tuple[list[dict], dict]:
    """Sample ``cfg.num_paths`` paths per question; return (records, stats).

    Questions are sampled in shards of ``cfg.shard_size``; question ``i`` (after ``limit``)
    always uses the seeds of index ``i``. With ``shard_dir``, finished shards are saved there
    and reused by a rerun with the same settings (see the module docstring).

    ``worker``/``num_workers``: sample (or reuse) only shards ``k % num_workers == worker``;
    the records returned are those shards'. ``merge_only``: sample nothing; every shard must be
    in ``shard_dir`` already (else an error lists the missing ones).
    """
    from selfimprove.core.io import write_json, write_jsonl
    from selfimprove.core.prompts import build_prompt
    from selfimprove.sampling.base import SamplingParams

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
    if not 0 <= worker < num_workers:
        raise InputError(
            f"worker={worker}, num_workers={num_workers}: need 0 <= worker < num_workers"
        )
    if (num_workers > 1 or merge_only) and shard_dir is None:
        raise InputError("num_workers > 1 and merge_only need a shard_dir shared by the workers")
    settings = None
    if shard_dir is not None:
        shard_dir = Path(shard_dir)
        shard_dir.mkdir(parents=True, exist_ok=True)
        _clean_shard_dir(shard_dir, len(starts), remove_tmp=num_workers == 1)
        settings = run_settings(model_dir, cfg, seed, prefix)

    sampler = None
    records: list[dict] = []
    reused = 0
    wall = 0.0
    new_tokens = 0
    timing = dict.fromkeys(_TIMING_KEYS, 0.0)
    missing: list[str] = []
    for k, start in enumerate(starts):
        if k % num_workers != worker:
            continue  # another worker's shard: not read, not touched
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
            done = load_shard(shard_dir, k, expected)
            if done is not None:
                records.extend(done)
                reused += 1
                continue
        if merge_only:
            missing.append(f"{k} (questions {start}-{start + len(shard_q) - 1})")
            continue
        if sampler is None:
            sampler = make_sampler(model_dir, cfg.backend, cfg.dtype, cfg.batch_size)
        t0 = time.perf_counter()
        outputs = sampler.sample(
            prefix, shard_s, params, desc=f"generate {k + 1}/{len(starts)}", index_offset=start
        )
        shard_wall = time.perf_counter() - t0
        wall += shard_wall
        for key in _TIMING_KEYS:
            timing[key] += getattr(sampler, "last_stats", {}).get(key, 0.0)
        shard_records = [
            paths_to_record(q["id"], q["question"], outs)
            for q, outs in zip(shard_q, outputs, strict=True)
        ]
        new_tokens += sum(sum(r["n_tokens"]) for r in shard_records)
        records.extend(shard_records)
        if shard_dir is not None:
            rec_path, man_path = shard_paths(shard_dir, k)
            write_jsonl(rec_path, shard_records)
            write_json(
                man_path,
                {
                    **expected,
                    "records_sha256": file_sha256(rec_path),
                    "n_records": len(shard_records),
                    "wall_s": round(shard_wall, 2),
                },
            )
    if missing:
        raise InputError(
            f"{shard_dir}: merge needs all {len(starts)} shards; missing or not matching the "
            f"current settings: shard {', '.join(missing)}. Run the worker(s) for them "
            "(--worker-index k % --num-workers) or rerun without --merge-only to sample them here"
        )
    if reused:
        log.info("reused %d of %d shards from %s", reused, len(starts), shard_dir)

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
        "shards": len(starts),
        "shards_reused": reused,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(new_tokens / wall, 1) if wall > 0 else 0.0,
        **{key: round(v, 2) for key, v in timing.items()},
    }
    return records, stats
