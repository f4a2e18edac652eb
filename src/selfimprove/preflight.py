"""Everything a run will need, checked at once before any heavy work (``selfimprove check``,
``make repro``): the tracking URI, the data files and model folders params.yaml names, the base
model source, and settings that cannot fit in memory.

:func:`preflight` returns one line per problem (empty: all good); it loads no model, imports no
torch and touches no network except the tracking server's one health request.

The memory estimate counts only what really grows with the knobs, measured on the tiny model
(``selfimprove tiny-model``; ``methods.generate.generate`` under tracemalloc, imports warmed up,
4 questions, batch 32, transformers 5 on CPU):

* every sampled path is kept as a record until the stage writes its output: 382 B per path at
  16 new tokens (27 characters), 536 B at 64 (101 characters), i.e. ~330 B + 2 B per character
  (the peak was ~1.45x that). :data:`KEPT_PER_PATH` = 256 B is below the measured floor, so a
  refusal never rests on an overestimate;
* before the first token the sampler lays out its work list, one entry per path of the shard
  (``[None] * num_paths`` per question plus the index lists): 51.6 B per path, measured
  (:data:`BOOKKEEPING_PER_PATH` = 48 B). ``generate.num_paths: 1000000000`` needs ~1.5 TB for
  that alone: the ``MemoryError`` after 7 GB that this check now refuses up front;
* the value suggested as one that fits uses the measured cost instead (every path at
  max_new_tokens, times the peak ratio), so it passes this check and leaves headroom;
* the KV cache of the decoding batch: ``min(batch_size, paths of a shard)`` rows x (prompt +
  max_new_tokens) tokens x 2 (K and V) x layers x kv heads x head dim x dtype bytes, from the
  model's ``config.json`` when its folder exists (``base_model.local_path``, else
  ``data/models/base``), plus the logits (3 fp32 copies of batch x vocab) and the weights (their
  files' size). Without a model folder only the model-independent parts are counted (a lower
  bound). Tokens are counted as characters / 4 of the prompt templates (questions not read).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from pydantic import BaseModel

from selfimprove.config import Params
from selfimprove.config.data import FILE_SOURCES
from selfimprove.core.io import InputError
from selfimprove.sampling.pool import max_processes

KEPT_PER_PATH = 256
BOOKKEEPING_PER_PATH = 48
#: the suggested value that fits uses the measured cost, not the floor: 330 B + 2 B per character
#: (4 per token, every path at max_new_tokens), times the 1.45 peak / kept ratio
MEASURED_PER_PATH, MEASURED_PER_CHAR, PEAK_RATIO = 330, 2, 1.45
CHARS_PER_TOKEN = 4
#: what the process needs besides the estimate (Python, torch, transformers imported): measured
#: ~0.8 GB peak RSS with the tiny model; 0.5 GiB is counted
BASE_BYTES = 512 * 2**20
#: bytes per value of a compute dtype; "auto" counted as 2 (bf16), the lower bound
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "auto": 2}


def preflight(
    params: Params, root: str | Path = ".", params_file: str | Path | None = None
) -> list[str]:
    """Every problem of the run ``params`` describes, one line each (empty list: none).

    Paths are relative to ``root`` (the working directory the stages run in). ``params_file``:
    the file ``params`` was read from, checked for what ``dvc.yaml`` needs of it. Nothing is
    created or written.
    """
    problems: list[str] = []
    root = Path(root)

    def run(check, *args) -> None:
        try:
            check(*args)
        except InputError as e:
            problems.append(str(e))

    if params.tracking.enabled:
        from selfimprove.tracking.health import check_tracking

        run(check_tracking, params.tracking, False)
    problems += data_problems(params, root)
    from selfimprove.training.base_model import check_source

    run(check_source, params.base_model)
    problems += teacher_problems(params, root)
    problems += memory_problems(params, available_bytes(), model_shape(params, root), root)
    problems += model_fit_problems(params, root)
    problems += metric_name_problems(params)
    problems += hub_id_problems(params, root)
    if params_file is not None:
        problems += params_file_problems(Path(params_file), root)
    return problems


# --------------------------------------------------------------------------- files


def _sources(params: Params) -> dict:
    cfg = params.data
    sources = {"data.train": cfg.train, "data.seed_set": cfg.seed_set}
    sources |= {f"data.eval.{name}": sc for name, sc in cfg.eval.items()}
    return {k: v for k, v in sources.items() if v is not None}


def data_problems(params: Params, root: Path) -> list[str]:
    """Local data files (``path`` of a jsonl / drop_jsonl source) that are missing or not files."""
    out = []
    for key, sc in _sources(params).items():
        if sc.source not in FILE_SOURCES or not sc.path:
            continue
        p = root / Path(sc.path).expanduser()
        from selfimprove.core.io import folder_problem

        problem = folder_problem(p)
        if problem not in (None, "not found", "is a file, expected a folder"):
            out.append(f"{key}.path {sc.path!r}: {problem}; point it at the {sc.source} file")
        elif not p.exists():
            out.append(
                f"{key}.path {sc.path!r}: file not found (relative to {root.absolute()}); "
                f"point it at the {sc.source} file or choose another source"
            )
        elif not p.is_file():
            out.append(
                f"{key}.path {sc.path!r}: not a file (is a directory, expected a file); point it "
                f"at the {sc.source} file"
            )
    return out


def _looks_local(name: str) -> bool:
    """A path rather than a hub id (``org/name``).

    >>> [_looks_local(n) for n in ("./m", "/abs/m", "~/m", "../m", "org/model", "m")]
    [True, True, True, True, False, False]
    """
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def teacher_problems(params: Params, root: Path) -> list[str]:
    """A local ``meta_skill.teacher_model`` (teacher lm, self methods) that is no model folder."""
    from selfimprove.recipes import get_recipe

    cfg = params.meta_skill
    name = cfg.teacher_model
    if not get_recipe(params.method).needs_seed_set or cfg.teacher != "lm" or not name:
        return []
    p = root / Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            return [
                f"meta_skill.teacher_model {name!r}: the folder has no config.json; use a "
                "model folder written by save_pretrained, or a hub id"
            ]
        return []
    from selfimprove.core.io import folder_problem

    problem = folder_problem(p)
    if problem not in (None, "not found"):
        return [f"meta_skill.teacher_model {name!r}: {problem}; give a model folder or a hub id"]
    if _looks_local(name) or p.exists():
        return [
            f"meta_skill.teacher_model {name!r}: model folder not found (relative to "
            f"{root.absolute()}); fix the path, or give a hub id (org/name)"
        ]
    return []


# --------------------------------------------------------------------------- memory


def available_bytes() -> int:
    """Memory this process can still get: ``MemAvailable`` of /proc/meminfo (else
    ``os.sysconf``), capped by a cgroup v2 limit."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 2**62  # unknown: refuse nothing
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(avail, 0)


def model_shape(params: Params, root: Path) -> dict | None:
    """KV values per token, weights bytes and vocab of the base model, from its ``config.json``
    (None when its folder does not exist yet)."""
    from selfimprove.core.paths import BASE_MODEL

    cfg = params.base_model
    folder = root / (cfg.local_path if cfg.source == "local" and cfg.local_path else BASE_MODEL)
    try:
        conf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        conf = conf.get("text_config", conf)  # multimodal configs nest the LM's
        layers = int(conf["num_hidden_layers"])
        heads = int(conf["num_attention_heads"])
        kv_heads = int(conf.get("num_key_value_heads") or heads)
        head_dim = int(conf.get("head_dim") or int(conf["hidden_size"]) // heads)
        vocab = int(conf.get("vocab_size") or 0)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError):
        return None
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    kv = 2 * layers * kv_heads * head_dim
    return {"kv_values_per_token": kv, "weights": weights, "vocab": vocab}


def _n_questions(sc, root: Path) -> int:
    """Questions of a source: its ``n``, else the lines of its local file, else 1 (a floor)."""
    if sc is None:
        return 0
    if sc.n is not None:
        return sc.n
    if sc.path and not sc.path.endswith(".gz"):
        try:
            with open(root / sc.path, "rb") as f:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(2**20), b""))
            return max(lines, 1)
        except OSError:
            pass
    return 1


def sampling_bytes(
    n_prompts: int,
    n_paths: int,
    per_shard: int,
    batch_size: int,
    prompt_tokens: tuple[int, int],
    max_new_tokens: int,
    dtype: str,
    shape: dict | None,
) -> tuple[int, int]:
    """(bytes that grow with the number of paths, bytes of the model and its decoding batch) of
    one sampling step; see the module docstring for where the constants come from.

    ``prompt_tokens``: (shared prefix, one question's suffix); the prefix is cached once.

    >>> grow, fixed = sampling_bytes(128, 10**9, 32, 32, (600, 60), 128, "auto", None)
    >>> grow // 10**12, fixed  # 128 questions x 1e9 paths: tens of terabytes
    (34, 0)
    >>> shape = {"kv_values_per_token": 2 * 30 * 3 * 64, "weights": 538_000_000, "vocab": 49152}
    >>> grow, fixed = sampling_bytes(128, 8, 32, 32, (600, 60), 128, "float32", shape)
    >>> grow // 2**10, fixed // 2**20  # SmolLM2-135M, default generate settings
    (268, 821)
    """
    grow = n_prompts * n_paths * KEPT_PER_PATH + per_shard * n_paths * BOOKKEEPING_PER_PATH
    if shape is None:
        return grow, 0
    rows = max(1, min(batch_size, per_shard * n_paths))
    value = DTYPE_BYTES.get(dtype, 2)
    prefix, suffix = prompt_tokens
    kv = (prefix + rows * (suffix + max_new_tokens)) * shape["kv_values_per_token"] * value
    logits = 3 * rows * shape["vocab"] * 4  # fp32 logits, filtered copy, probabilities
    return grow, shape["weights"] + kv + logits


def _prompt_tokens(style: str, n_shots: int) -> tuple[int, int]:
    """(shared prefix, suffix of an empty question) in tokens, as characters / 4."""
    from selfimprove.core.prompts import build_prompt

    prefix, suffix = build_prompt("", style, n_shots)
    return len(prefix) // CHARS_PER_TOKEN, len(suffix) // CHARS_PER_TOKEN


def _gib(n: float) -> str:
    """``n`` bytes for a message.

    >>> _gib(3 * 2**30), _gib(5 * 2**40), _gib(2**20)
    ('3.0 GiB', '5120.0 GiB', '0.001 GiB')
    """
    return f"{n / 2**30:.1f} GiB" if n >= 0.1 * 2**30 else f"{n / 2**30:.3f} GiB"


def _steps(params: Params, root: Path) -> list[tuple]:
    """The sampling steps of the run: (paths key, paths, prompts, prompts per shard, batch key,
    batch size, prompt tokens, max_new_tokens, dtype, backend)."""
    from selfimprove.recipes import get_recipe

    g, e, ms, s = params.generate, params.evaluate, params.meta_skill, params.sampler
    n_train = _n_questions(params.data.train, root)
    if g.limit is not None:
        n_train = min(n_train, g.limit)
    gen_tokens = _prompt_tokens(g.style, g.n_shots)
    steps = [
        ("generate.num_paths", g.num_paths, n_train, min(g.shard_size, n_train),
         "sampler.batch_size", s.batch_size, gen_tokens, g.max_new_tokens, s.dtype, s.backend),
    ]  # fmt: skip
    if e.sc_paths:
        names = e.sets or list(params.data.eval)
        sets = [params.data.eval[s] for s in names if s in params.data.eval]
        caps = [c for c in (e.sc_limit, e.limit) if c is not None]
        n_sc = max((min([_n_questions(sc, root), *caps]) for sc in sets), default=0)
        tokens = _prompt_tokens(e.sc_style, e.n_shots)
        steps.append(("evaluate.sc_paths", e.sc_paths, n_sc, n_sc, "sampler.batch_size",
                      s.batch_size, tokens, e.max_new_tokens, s.dtype, s.backend))  # fmt: skip
    if get_recipe(params.method).needs_seed_set and params.data.seed_set is not None:
        n_seed = _n_questions(params.data.seed_set, root)
        tokens = _prompt_tokens("fewshot_cot", ms.n_shots)
        steps.append(("meta_skill.n_initial", ms.n_initial, n_seed, n_seed,
                      "sampler.batch_size", s.batch_size, tokens, ms.max_new_tokens,
                      s.dtype, s.backend))  # fmt: skip
    return steps


def memory_problems(
    params: Params, avail: int, shape: dict | None, root: str | Path = "."
) -> list[str]:
    """Sampling steps whose estimate exceeds ``avail`` bytes, each naming the key that grows and
    the largest value that would fit."""
    out = []
    # vLLM sizes its own cache on the GPU; with a GPU the transformers model and cache live there
    gpu = Path("/proc/driver/nvidia/gpus").is_dir()
    for key, paths, n_prompts, per_shard, bkey, bs, ptok, mnt, dtype, backend in _steps(
        params, Path(root)
    ):
        model = shape if backend == "transformers" and not gpu else None
        grow, fixed = sampling_bytes(n_prompts, paths, per_shard, bs, ptok, mnt, dtype, model)
        # compute.processes: each worker holds its own model and cache (the most it may start)
        workers = max_processes(params.compute) if model is not None else 1
        budget = avail - BASE_BYTES
        if grow + fixed <= budget // workers:
            continue
        if workers > 1 and grow + fixed <= budget:  # fits in one process
            need = f"{workers} processes x {_gib(grow + fixed)} + {_gib(BASE_BYTES)}"
            out.append(
                f"compute.processes={params.compute.processes}: {key}={paths} in {workers} "
                f"sampling processes cannot fit in memory (needs at least {need}, "
                f"{_gib(avail)} available); use compute.processes: 1"
            )
            continue
        need = f"needs at least {_gib(grow + fixed + BASE_BYTES)}, {_gib(avail)} available"
        if fixed < budget and grow > 0:
            per_path = PEAK_RATIO * n_prompts * (
                MEASURED_PER_PATH + MEASURED_PER_CHAR * CHARS_PER_TOKEN * mnt
            ) + per_shard * (BOOKKEEPING_PER_PATH + 4)
            fit = max(1, math.floor((budget - fixed) / per_path))
            out.append(
                f"{key}={paths} cannot fit in memory ({n_prompts} questions x {paths} paths "
                f"{need}); use {key} <= {fit}, or fewer questions"
            )
            continue
        one = sampling_bytes(n_prompts, paths, per_shard, 1, ptok, mnt, dtype, model)[1]
        rows = max(1, min(bs, per_shard * paths))
        per_row = (fixed - one) / (rows - 1) if rows > 1 else 0
        fit = math.floor((budget - grow - one) / per_row) + 1 if per_row else 0
        fix = f"use {bkey} <= {fit}" if fit >= 1 else "use a machine with more memory"
        out.append(
            f"{bkey}={bs} cannot fit in memory (model + KV cache of {rows} rows x "
            f"{ptok[1] + mnt} tokens {need}); {fix}, or lower max_new_tokens"
        )
    return out


# --------------------------------------------------------------------------- what DVC and the
# stages will need of the params file, the model and the names params gives


def params_file_problems(path: Path, root: Path) -> list[str]:
    """What ``dvc.yaml`` needs of the params file: a non-empty ``rounds`` mapping (its round
    stages are unrolled over it) and every key its stages list under ``params:`` (DVC stops on
    a missing one), read as DVC reads YAML."""
    from selfimprove.config.yaml_file import read_yaml_file

    try:
        raw = read_yaml_file(path)
    except InputError as e:
        return [str(e)]
    raw = raw if isinstance(raw, dict) else {}
    out = []
    rounds = raw.get("rounds")
    if not isinstance(rounds, dict) or not rounds:
        what = "no `rounds`" if rounds is None else "an empty `rounds`"
        out.append(
            f"{path}: {what}; dvc.yaml unrolls its round stages over it, so the pipeline would "
            "have no round (or `dvc` fails); add e.g. rounds: {r1: {prev: r0}, r2: {prev: r1}}"
        )
    missing: list[str] = []
    for key in _dvc_param_keys(root / "dvc.yaml", path.name):
        node: object = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None and key not in missing and key != "rounds":
            missing.append(key)
    if missing:
        out.append(
            f"{path}: dvc.yaml's stages read {', '.join(missing)}, which the file does not set "
            "(DVC stops on a missing param); add them (see the shipped params.yaml)"
        )
    return out


def _dvc_param_keys(dvc_yaml: Path, params_name: str) -> list[str]:
    """The params keys the stages of ``dvc_yaml`` list (of the default params file)."""
    from selfimprove.config.yaml_file import read_yaml_file

    try:
        stages = (read_yaml_file(dvc_yaml) or {}).get("stages") or {}
    except (InputError, AttributeError):
        return []
    keys: list[str] = []
    for stage in stages.values():
        body = stage.get("do", stage) if isinstance(stage, dict) else {}
        for entry in body.get("params") or () if isinstance(body, dict) else ():
            if isinstance(entry, str):
                keys.append(entry)
            elif isinstance(entry, dict):
                for fname, names in entry.items():
                    if Path(str(fname)).name == params_name and isinstance(names, list):
                        keys += [str(n) for n in names]
    return keys


def _model_folder(params: Params, root: Path) -> Path:
    """The base model's folder: ``base_model.local_path``, else ``data/models/base``, else (a
    hub model not fetched yet) its snapshot in the local Hugging Face cache, when there."""
    from selfimprove.core.paths import BASE_MODEL

    cfg = params.base_model
    folder = root / (cfg.local_path if cfg.source == "local" and cfg.local_path else BASE_MODEL)
    if cfg.source == "hub" and not (folder / "config.json").is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(cfg.hub_id, "config.json", revision=cfg.revision)
        except Exception:  # a malformed id (hub_id_problems names it), a broken cache
            hit = None
        if isinstance(hit, str):
            return Path(hit).parent
    return folder


def _model_config(folder: Path) -> dict | None:
    try:
        conf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return conf if isinstance(conf, dict) else None


def weight_module_names(folder: Path) -> set[str] | None:
    """Module names of a model folder's weights (``model.layers.0.self_attn.q_proj``), from
    ``model.safetensors.index.json`` or the safetensors headers: no weight is read. None when
    the folder has neither."""
    names: set[str] = set()
    index = folder / "model.safetensors.index.json"
    try:
        if index.is_file():
            names = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}))
        else:
            files = sorted(folder.glob("*.safetensors"))
            if not files:
                return None
            for f in files:
                with open(f, "rb") as fh:
                    size = int.from_bytes(fh.read(8), "little")
                    if size > 100 * 2**20:
                        return None
                    names |= set(json.loads(fh.read(size)))
    except (OSError, ValueError, AttributeError):
        return None
    return {n.rsplit(".", 1)[0] for n in names if n != "__metadata__" and "." in n}


def model_fit_problems(params: Params, root: Path) -> list[str]:
    """With the model folder at hand (``base_model.local_path``, else ``data/models/base``):
    LoRA ``target_modules`` that name no module of the model, and token budgets that cannot fit
    its context (``max_position_embeddings``), each named with the fix."""
    folder = _model_folder(params, root)
    conf = _model_config(folder)
    if conf is None:
        return []
    out = []
    ft = params.finetune
    modules = weight_module_names(folder) if ft.method == "lora" else None
    if modules:
        leaves = {m.rsplit(".", 1)[-1] for m in modules}
        if conf.get("tie_word_embeddings"):
            leaves.add("lm_head")
        absent = [
            t for t in ft.lora.target_modules
            if not any(m == t or m.endswith("." + t) for m in modules) and t not in leaves
        ]  # fmt: skip
        if absent:
            linear = sorted(x for x in leaves if x.endswith("proj") or x in ("fc1", "fc2"))
            out.append(
                f"finetune.lora.target_modules {absent}: the model in {folder} has no such "
                f"module; use names it has (e.g. {', '.join(linear[:8]) or 'see its weights'})"
            )
    text = conf.get("text_config", conf)
    context = text.get("max_position_embeddings") if isinstance(text, dict) else None
    if isinstance(context, int) and not isinstance(context, bool) and context > 0:
        out += [
            f"{key}={value} exceeds the model's context of {context} tokens "
            f"(max_position_embeddings in {folder}); use {key} <= {context}"
            for key, value in _token_budgets(params)
            if value > context
        ]
        for key, _, _, _, _, _, (prefix, suffix), mnt, *_ in _steps(params, root):
            if mnt > context:
                continue  # named above
            # the prompt at 8 characters a token at most: a floor, so a refusal is sure
            prompt = (prefix + suffix) * CHARS_PER_TOKEN // MAX_CHARS_PER_TOKEN
            section = key.split(".", 1)[0]
            if mnt + prompt > context:
                out.append(
                    f"{section}.max_new_tokens={mnt} plus the prompt (at least {prompt} tokens) "
                    f"exceeds the model's context of {context} tokens (max_position_embeddings "
                    f"in {folder}); use {section}.max_new_tokens <= {max(context - prompt, 1)}"
                )
    return out


def _token_budgets(params: Params) -> list[tuple[str, int]]:
    """Every ``*max_new_tokens`` of every section, and ``finetune.max_length``: tokens that must
    fit the model's context (a new section's budgets are found by their name)."""
    out = []
    for name in type(params).model_fields:
        section = getattr(params, name)
        if not isinstance(section, BaseModel):
            continue
        for field in type(section).model_fields:
            value = getattr(section, field)
            if (
                field.endswith("max_new_tokens") or (name, field) == ("finetune", "max_length")
            ) and (isinstance(value, int) and not isinstance(value, bool)):
                out.append((f"{name}.{field}", value))
    return out


#: most characters one token can stand for, for a floor on a prompt's tokens
MAX_CHARS_PER_TOKEN = 8


def evaluate_metric_names(params: Params) -> tuple[list[str], list[str]]:
    """(the eval sets evaluate scores, the second level of their metric keys)."""
    e = params.evaluate
    sets = list(e.sets or params.data.eval)
    seconds = list(e.styles)
    if e.refine_iterations:
        seconds += [f"{s}_refined" for s in e.styles if s.endswith("_cot")]
    if e.sc_paths:
        seconds.append("sc")
    return sets, seconds


def metric_name_problems(params: Params) -> list[str]:
    """``tracking.best_metric`` that names no metric ``evaluate`` writes (checked when
    tracking registers models and ranks by it)."""
    t = params.tracking
    if not t.enabled or t.best_by != "metric" or t.registered_model is None:
        return []
    from selfimprove.evaluation.report import STEP_FILES

    if t.best_metric.startswith(tuple(prefix for _, prefix in STEP_FILES if prefix)):
        return []  # another step's metrics (filter.mean_agreement, ...): logged too
    sets, seconds = evaluate_metric_names(params)
    parts = t.best_metric.split(".")
    last = {"strict", "flexible", "em", "f1", "no_answer"}
    ok = len(parts) >= 3 and parts[0] in sets and parts[1] in seconds
    if ok and parts[1] == "sc":
        ks = set(params.evaluate.sc_k)
        ok = any(parts[2] in (f"maj@{k}", f"maj@{k}_em", f"maj@{k}_f1") for k in ks) or parts[
            2
        ].startswith(("pass@", "label_free"))
    elif ok:
        ok = len(parts) == 3 and parts[2] in last
    if ok:
        return []
    example = f"{sets[0]}.{seconds[0]}.strict" if sets and seconds else "<set>.<style>.strict"
    return [
        f"tracking.best_metric {t.best_metric!r} names no metric evaluate writes (sets: "
        f"{', '.join(sets)}; then one of {', '.join(seconds)}; then strict/flexible, or em/f1 "
        f"for DROP sets); e.g. {example}"
    ]


def hub_id_problems(params: Params, root: Path) -> list[str]:
    """Hugging Face ids that can never be valid (``org/name``: letters, digits, ``-_.``)."""
    ids = {}
    if params.base_model.source == "hub":
        ids["base_model.hub_id"] = params.base_model.hub_id
    for key, sc in _sources(params).items():
        if getattr(sc, "hub_id", None) and sc.source.endswith("_hub"):
            ids[f"{key}.hub_id"] = sc.hub_id
    teacher = params.meta_skill.teacher_model
    if teacher and not _looks_local(teacher) and not (root / teacher).exists():
        ids["meta_skill.teacher_model"] = teacher
    if not ids:
        return []
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    out = []
    for key, value in ids.items():
        try:
            validate_repo_id(value)
        except HFValidationError as e:
            why = " ".join(str(e).split()).split(". ")[0]
            out.append(f"{key} {value[:80]!r}: not a valid hub id ({why}); use org/name")
    return out
