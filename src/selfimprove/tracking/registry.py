"""The model registry: each round's model as a registered MLflow model, and the alias ``best``.

Unless ``registered_model`` is null, every round's model is logged as an MLflow model and
registered under one name (default ``selfimprove-<pipeline>``) with the tag ``round=<r>``; the
alias ``best`` points at the round whose ``best_metric`` is highest (``best_by: label_free``:
whose self-consistency agreement is, no labels used; :mod:`.selection`). With ``log_model: merged``
the model is an ``mlflow.transformers`` model of the merged folder (self-contained). With
``log_model: adapter`` it is a small pyfunc model (code: :data:`MODEL_CODE`, the file
``tracking/mlflow_model.py``, stored in the model as ``selfimprove_model.py``): the LoRA
adapter plus a reference to the model it was trained on, namely the registered version of the
previous round when there is one (loaded recursively), else a local folder (checked against its
digest) or the hub id. The folder is recorded relative to the project root (``base_path``, e.g.
``data/models/base``), never as an absolute path: loaded elsewhere, it is looked up under the
cwd (or ``model_config={"base_root": <project>}``), checked against ``base_digest``, and
otherwise falls back to ``base_override`` / ``allow_hub_fallback`` (see ``mlflow_model.py``).
Either loads offline with ``mlflow.pyfunc.load_model("models:/<name>@best")``.
"""

from __future__ import annotations

import difflib
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

from selfimprove.config.tracking import TrackingConfig
from selfimprove.tracking.store import fluent_run, get_run, is_current, model_versions
from selfimprove.tracking.tags import (
    BEST_ALIAS,
    TAG_MODEL_DIGEST,
    TAG_PIPELINE,
    TAG_ROUND,
    TAG_ROUND_INDEX,
    TAG_SUPERSEDED,
    clean_key,
    file_digest,
    portable_path,
    safe_name,
)

log = logging.getLogger(__name__)

#: The pyfunc model's code (MLflow "models from code"), copied into every adapter model.
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
#: Its file name inside a logged model (models logged before the file existed use it too).
MODEL_CODE_NAME = "selfimprove_model.py"
ADAPTER_REQUIREMENTS = ["mlflow", "torch", "transformers", "peft", "safetensors"]
MERGED_REQUIREMENTS = ["mlflow", "torch", "transformers", "accelerate", "safetensors"]


def pick_best(candidates: list[dict]) -> dict | None:
    """The candidate with the highest ``value``; ties go to the lower ``round_index``, then to
    the newer ``version``. None when there are none.

    >>> pick_best([{"version": 1, "round_index": 0, "value": 0.3},
    ...            {"version": 2, "round_index": 1, "value": 0.5},
    ...            {"version": 3, "round_index": 2, "value": 0.5}])["version"]
    2
    >>> pick_best([]) is None
    True
    """
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c["value"], -c["round_index"], int(c["version"])))


def pip_requirement(name: str, version: str) -> str:
    """A pinned pip requirement, without a local version label (``+cpu``) pip can't resolve.

    >>> pip_requirement("torch", "2.13.0+cpu"), pip_requirement("peft", "0.21.0")
    ('torch==2.13.0', 'peft==0.21.0')
    """
    return f"{name}=={version.split('+', 1)[0]}"


def _pip_requirements(names: list[str]) -> list[str]:
    """Pinned requirements of the installed packages (MLflow can't infer them offline)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in names:
        try:
            out.append(pip_requirement(name, version(name)))
        except PackageNotFoundError:
            out.append(name)
    return out


def _load_components(model_dir: Path) -> dict:
    """The merged folder as in-memory components for ``mlflow.transformers.log_model``.

    (MLflow 3.x's local-checkpoint path breaks on transformers 5's lazy pipeline registry.)
    The absolute path keeps MLflow from taking the folder name for a hub id (model card lookup).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(model_dir.resolve())
    return {
        "model": AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        "tokenizer": AutoTokenizer.from_pretrained(path),
    }


def _adapter_base(adapter_dir: Path | None, model_dir: Path | None, root: Path) -> Path | None:
    """The folder the adapter was trained on (adapter_config.json; a relative path is relative
    to the project ``root``), or the model folder itself."""
    if adapter_dir is None:
        return model_dir
    conf = adapter_dir / "adapter_config.json"
    try:
        base = json.loads(conf.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None
    if not base:
        return None
    base = Path(base) if Path(base).is_absolute() else root / base
    return base if base.is_dir() else None


def _registered_version_with_digest(client, name: str, digest: str, exclude_run: str):
    """A current (non-superseded, finished) version of ``name`` whose model has ``digest``."""
    found = None
    for mv in model_versions(client, name):
        if mv.tags.get(TAG_MODEL_DIGEST) != digest or not mv.run_id or mv.run_id == exclude_run:
            continue
        run = get_run(client, mv.run_id)
        if run is None or not is_current(run):
            continue
        if found is None or int(mv.version) > int(found.version):
            found = mv
    return found


def _adapter_model_config(
    client, name: str, run_id: str, adapter_dir, model_dir, model_digest, base_model_ref, root
) -> dict:
    """The pyfunc model's model_config: what the adapter was trained on (see mlflow_model.py).

    MLflow also logs it as params of the run, so ``base_path`` is relative to ``root``."""
    # every key present: MLflow only lets load-time model_config override existing keys
    model_config: dict = {
        "base_model_uri": "",
        "base_path": "",
        "base_digest": "",
        "base_hub_id": base_model_ref or "",
        "base_override": "",
        "base_root": "",
        "allow_hub_fallback": False,
        "max_new_tokens": 64,
    }
    base = _adapter_base(adapter_dir, model_dir, root)
    if base is None:
        return model_config
    base_digest = model_digest if base == model_dir else file_digest(base)
    base_version = None
    if adapter_dir is not None:  # trained on an earlier round's registered model?
        base_version = _registered_version_with_digest(client, name, base_digest, run_id)
    if base_version is not None:
        model_config["base_model_uri"] = f"models:/{name}/{base_version.version}"
    else:
        model_config["base_path"] = portable_path(base.absolute(), root)
        model_config["base_digest"] = base_digest
    return model_config


def log_registered_model(
    client,
    cfg: TrackingConfig,
    *,
    run_id: str,
    round_name: str,
    round_index: int,
    model_dir: Path | None,
    adapter_dir: Path | None,
    base_model_ref: str | None,
    root: Path | None = None,
) -> str | None:
    """Log the round's model as an MLflow model and register it; return the version (or None).

    ``root``: the project root (default the cwd) the base folder's path is recorded against."""
    name = cfg.registered_model_name()
    if name is None or cfg.log_model == "none":
        return None
    if cfg.log_model == "merged" and model_dir is None:
        return None
    if cfg.log_model == "adapter" and adapter_dir is None and model_dir is None:
        return None
    import mlflow

    model_digest = file_digest(model_dir) if model_dir is not None else None
    # the LoggedModel's name; not "model", which MLflow would confuse with the run's model/ folder
    logged_name = safe_name(f"{cfg.pipeline}-{round_name}")
    with fluent_run(run_id), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if cfg.log_model == "merged":
            info = mlflow.transformers.log_model(
                _load_components(model_dir),
                name=logged_name,
                task="text-generation",
                model_config={"max_new_tokens": 64, "do_sample": False},  # greedy predict()
                pip_requirements=_pip_requirements(MERGED_REQUIREMENTS),
                step=int(round_index),
            )
        else:
            model_config = _adapter_model_config(
                client,
                name,
                run_id,
                adapter_dir,
                model_dir,
                model_digest,
                base_model_ref,
                Path.cwd() if root is None else Path(root),
            )
            with tempfile.TemporaryDirectory() as tmp:
                code = Path(tmp) / MODEL_CODE_NAME
                shutil.copyfile(MODEL_CODE, code)
                info = mlflow.pyfunc.log_model(
                    name=logged_name,
                    python_model=str(code),
                    artifacts={"adapter": str(adapter_dir)} if adapter_dir is not None else None,
                    model_config=model_config,
                    pip_requirements=_pip_requirements(ADAPTER_REQUIREMENTS),
                    step=int(round_index),
                )
        tags = {
            "round": round_name,
            TAG_PIPELINE: cfg.pipeline,
            TAG_ROUND_INDEX: str(round_index),
            "log_model": cfg.log_model,
        }
        if model_digest:
            tags[TAG_MODEL_DIGEST] = model_digest
        mv = mlflow.register_model(info.model_uri, name, tags=tags)
    log.info("round %s: registered %s version %s", round_name, name, mv.version)
    return str(mv.version)


def update_best_alias(client, cfg: TrackingConfig) -> str | None:
    """Point the alias ``best`` at the current version with the highest ``cfg.best_metric``
    (``cfg.best_by: metric``) or the highest label-free self-consistency agreement
    (``best_by: label_free``, :func:`selfimprove.tracking.selection.label_free_score`).

    Versions whose round run is superseded (or not finished) are skipped and tagged
    ``selfimprove.superseded=true``. Returns the best version, or None (with a warning) when no
    current version's run has the metric.
    """
    from selfimprove.tracking.selection import LABEL_FREE_SUFFIX, round_score

    name = cfg.registered_model_name()
    if name is None:
        return None
    key = clean_key(cfg.best_metric)
    if cfg.best_by == "label_free":
        key = f"label_free(mean of *{LABEL_FREE_SUFFIX})"
    candidates, seen = [], set()
    for mv in model_versions(client, name):
        run = get_run(client, mv.run_id) if mv.run_id else None
        if run is None:
            continue
        if not is_current(run):
            if mv.tags.get(TAG_SUPERSEDED) != "true":
                client.set_model_version_tag(name, mv.version, TAG_SUPERSEDED, "true")
            continue
        seen.update(run.data.metrics)
        value = round_score(run.data.metrics, cfg.best_by, key)
        if value is not None:
            index = int(run.data.tags.get(TAG_ROUND_INDEX, mv.tags.get(TAG_ROUND_INDEX, "0")))
            candidates.append(
                {
                    "version": mv.version,
                    "round_index": index,
                    "round": mv.tags.get("round", run.data.tags.get(TAG_ROUND, "")),
                    "value": value,
                }
            )
    best = pick_best(candidates)
    if best is None and cfg.best_by == "label_free":
        log.warning(
            "tracking.best_by=label_free: no registered round of %s has a "
            "<set>%s metric (evaluate.sc_paths: 0 skips self-consistency; set it >= 2); "
            "alias %r not moved",
            name,
            LABEL_FREE_SUFFIX,
            BEST_ALIAS,
        )
        return None
    if best is None:
        close = difflib.get_close_matches(key, sorted(seen), n=3, cutoff=0.5)
        log.warning(
            "tracking.best_metric=%r: no registered round of %s has this metric%s; alias %r "
            "not moved",
            cfg.best_metric,
            name,
            f" (did you mean {', '.join(close)}?)" if close else "",
            BEST_ALIAS,
        )
        return None
    client.set_registered_model_alias(name, BEST_ALIAS, best["version"])
    for tag, value in (
        ("best_metric", key),
        ("best_by", cfg.best_by),
        ("best_round", best["round"]),
        ("best_value", str(best["value"])),
    ):
        client.set_registered_model_tag(name, tag, value)
    log.info(
        "alias %s@%s -> version %s (%s, %s = %s)",
        name,
        BEST_ALIAS,
        best["version"],
        best["round"],
        key,
        best["value"],
    )
    return str(best["version"])
