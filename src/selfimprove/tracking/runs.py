"""MLflow tracking: one parent run per pipeline, one child run per round (the only MLflow user).

A per-round DVC ``track`` stage calls :func:`log_round` once that round's outputs exist. Layout in
the experiment (``TrackingConfig.experiment``):

* a *parent* run named after the pipeline (tags ``selfimprove.pipeline=<name>``,
  ``selfimprove.role=parent``), found by tag search and created the first time; it receives
  every round's metrics with ``step = round_index``, so its charts are histories across rounds;
* a *round* run per call, named ``<pipeline>/<round>``, nested under the parent through the
  ``mlflow.parentRunId`` tag, with the round's params (flattened, dotted keys), metrics, dataset
  inputs (digest = the file's sha256), artifacts, tables and model files. Rerunning a round makes a
  new run; older runs of the same pipeline and round are tagged ``selfimprove.superseded=true``.

Model registry: unless ``registered_model`` is null, every round's model is also logged as an
MLflow model and registered under one name (default ``selfimprove-<pipeline>``) with the tag
``round=<r>``; the alias ``best`` points at the round whose ``best_metric`` is highest. With
``log_model: merged`` the model is an ``mlflow.transformers`` model of the merged folder
(self-contained). With ``log_model: adapter`` it is a small pyfunc model (code in
:data:`ADAPTER_MODEL_CODE`): the LoRA adapter plus a reference to the model it was trained on,
namely the registered version of the previous round when there is one (loaded recursively),
else a local folder (checked against its digest) or the hub id. Either loads offline with
``mlflow.pyfunc.load_model("models:/<name>@best")``.

The tracking URI is ``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` (relative to the working
directory); an ``http(s)://`` server works unchanged. MLflow is imported lazily.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import math
import os
import posixpath
import re
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

from selfimprove.config.tracking import _FORBIDDEN_NAME_CHARS, TrackingConfig
from selfimprove.core.io import InputError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: MLflow limits (mlflow.utils.validation); kept here so pure helpers need no mlflow import.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_INPUT_TAG_VALUE = 500
#: MLflow stores at most 36 characters of a dataset digest: the sha256 prefix we log.
DIGEST_CHARS = 36
CHECK_TIMEOUT_S = 5.0

TAG_PIPELINE = "selfimprove.pipeline"
TAG_ROLE = "selfimprove.role"
TAG_ROUND = "selfimprove.round"
TAG_ROUND_INDEX = "selfimprove.round_index"
TAG_SUPERSEDED = "selfimprove.superseded"
TAG_BASE_MODEL = "selfimprove.base_model"
TAG_MODEL_DIR = "selfimprove.model_dir"
TAG_SKIPPED_METRICS = "selfimprove.skipped_metrics"
TAG_LAST_ROUND = "selfimprove.last_round"
TAG_MODEL_DIGEST = "selfimprove.model_digest"
PARENT_TAG = "mlflow.parentRunId"
BEST_ALIAS = "best"


@dataclass
class DatasetSpec:
    """A jsonl file logged as an MLflow dataset input of a round run.

    ``context`` is the MLflow input context, e.g. "training", "rationales", "evaluation".
    """

    path: Path
    name: str
    context: str


# --------------------------------------------------------------------------- pure helpers


def tracking_uri() -> str:
    """The MLflow tracking URI: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI", "").strip() or DEFAULT_TRACKING_URI


def _stringify(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return str(value)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def flatten(d: Mapping, prefix: str = "", max_len: int = MAX_PARAM_VALUE) -> dict[str, str]:
    """Flatten nested dicts into dotted keys with string values (truncated to ``max_len``).

    Lists and tuples become compact JSON; ``None`` becomes ``"None"``; empty dicts ``"{}"``.

    >>> flatten({"lr": 1e-4, "lora": {"r": 8, "targets": ["q", "v"]}, "seed": None})
    {'lr': '0.0001', 'lora.r': '8', 'lora.targets': '["q", "v"]', 'seed': 'None'}
    >>> flatten({"a": {"b": {}}, "long": "x" * 10}, max_len=6)
    {'a.b': '{}', 'long': 'xxx...'}
    """
    out: dict[str, str] = {}
    for key, value in d.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, prefix=f"{full}.", max_len=max_len))
        else:
            out[full] = _truncate(_stringify(value), max_len)
    return out


def _clean_key(key: str) -> str:
    """Make ``key`` a valid MLflow param/metric/tag name.

    >>> _clean_key("eval/acc@1 (greedy)")
    'eval/acc_1 _greedy_'
    >>> _clean_key("/a//b/")
    '_a__b_'
    """
    key = re.sub(r"[^\w.\- :/]", "_", str(key))[:MAX_KEY]
    if key.startswith("/") or posixpath.normpath(key) != key:
        key = key.replace("/", "_")
    return key or "_"


def _numeric_metrics(metrics: Mapping, prefix: str = "") -> tuple[dict[str, float], int]:
    """Finite numeric metrics with dotted keys, and how many values were skipped.

    >>> _numeric_metrics({"acc": 0.5, "n": 3, "bad": float("nan"), "s": "x", "sub": {"f1": 1}})
    ({'acc': 0.5, 'n': 3.0, 'sub.f1': 1.0}, 2)
    """
    good: dict[str, float] = {}
    skipped = 0
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            sub, n = _numeric_metrics(value, prefix=f"{prefix}{key}.")
            good.update(sub)
            skipped += n
        elif isinstance(value, Real) and math.isfinite(float(value)):
            good[f"{prefix}{key}"] = float(value)
        else:
            skipped += 1
    return good, skipped


def _skip_tmp(rel: Path) -> bool:
    return any(part.endswith(".tmp") for part in rel.parts)


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


def file_digest(path: str | os.PathLike, length: int = DIGEST_CHARS) -> str:
    """The digest MLflow stores for a dataset or model: :func:`core.digest.digest`, 36 chars."""
    from selfimprove.core.digest import digest

    return digest(path, length)


def git_info(repo_dir: str | os.PathLike) -> dict[str, str]:
    """``{"commit": <HEAD sha>, "dirty": "true"|"false"}`` for a git work tree, else ``{}``.

    "dirty" ignores untracked files (DVC outputs are git-ignored anyway).

    >>> import tempfile
    >>> git_info(tempfile.mkdtemp())
    {}
    """

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args],
            cwd=repo_dir,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": "true" if dirty else "false"}


# --------------------------------------------------------------------------- checks


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for in-memory).

    >>> _sqlite_path("sqlite:///mlflow.db"), _sqlite_path("sqlite:////tmp/x/m.db?timeout=5")
    (PosixPath('mlflow.db'), PosixPath('/tmp/x/m.db'))
    >>> _sqlite_path("sqlite://") is None
    True
    """
    from urllib.parse import unquote

    rest = uri[len("sqlite://") :].split("?", 1)[0]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    return Path(unquote(rest[1:]))


def check_tracking(cfg: TrackingConfig) -> None:
    """Fail fast (:class:`InputError`) if the tracking URI cannot work; no-op when disabled.

    http(s): the server must answer ``GET <uri>/health`` within a few seconds (any HTTP answer
    below 500 counts). sqlite: the database's folder is created. A file store (plain path or
    ``file:``) is refused unless ``MLFLOW_ALLOW_FILE_STORE=true``.
    """
    if not cfg.enabled:
        return
    uri = tracking_uri()
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("http", "https"):
        _check_http(uri)
    elif scheme == "sqlite":
        db = _sqlite_path(uri)
        if db is not None:
            try:
                db.resolve().parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InputError(
                    f"MLFLOW_TRACKING_URI={uri}: cannot create the folder for {db} ({e}); "
                    "point it at a writable path or unset MLFLOW_TRACKING_URI"
                ) from None
    elif scheme in ("", "file") or len(scheme) == 1:  # a plain path (or a Windows drive)
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
            raise InputError(
                f"MLFLOW_TRACKING_URI={uri}: MLflow 3 refuses the file store; use "
                f"{DEFAULT_TRACKING_URI} (unset MLFLOW_TRACKING_URI) or an http://host:port "
                "server, or set MLFLOW_ALLOW_FILE_STORE=true"
            )


def _check_http(uri: str, timeout: float = CHECK_TIMEOUT_S) -> None:
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    fix = (
        "start it (e.g. `mlflow server --host 127.0.0.1 --port 5000 "
        "--backend-store-uri sqlite:///mlflow.db`), fix the address, or unset "
        f"MLFLOW_TRACKING_URI to log to {DEFAULT_TRACKING_URI}"
    )
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise InputError(
            f"MLFLOW_TRACKING_URI={uri}: the MLflow server does not answer ({reason}); {fix}"
        ) from None
    if status >= 500:
        raise InputError(
            f"MLFLOW_TRACKING_URI={uri}: the MLflow server answered {url} with HTTP {status}; "
            f"check the server's log, or {fix}"
        )


def _validate_inputs(
    round_name: str,
    datasets: list[DatasetSpec],
    artifacts: list[Path],
    model_dir: Path | None,
    adapter_dir: Path | None,
) -> None:
    if not round_name or any(c in round_name for c in _FORBIDDEN_NAME_CHARS):
        raise InputError(
            f"round_name={round_name!r}: must be non-empty, without quotes, backticks or "
            "backslashes (e.g. 'r1')"
        )
    for spec in datasets:
        if not Path(spec.path).is_file():
            raise InputError(
                f"dataset {spec.name!r} ({spec.context}): {spec.path} is not a file; run the "
                "stage that makes it or fix the path"
            )
    for p in artifacts:
        if not Path(p).exists():
            raise InputError(f"artifact {p}: not found; run the stage that makes it or fix it")
    for label, d in (("model_dir", model_dir), ("adapter_dir", adapter_dir)):
        if d is not None and not Path(d).is_dir():
            raise InputError(f"{label}={d}: not a folder; run the training stage or fix the path")


# --------------------------------------------------------------------------- MLflow side


def _client():
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


def _experiment_id(client, cfg: TrackingConfig) -> str:
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        if exp.lifecycle_stage != "active":
            raise InputError(
                f"tracking.experiment={cfg.experiment!r} is deleted in {tracking_uri()}; "
                f"restore it (`mlflow experiments restore --experiment-id {exp.experiment_id}`) "
                "or choose another experiment name"
            )
        return exp.experiment_id
    location = None
    uri = tracking_uri()
    if uri.startswith("sqlite:"):
        db = _sqlite_path(uri)
        # MLflow's default is ./mlruns/<experiment id> under the cwd; when the database lives
        # elsewhere keep the artifacts next to it instead (mlruns/<experiment name>)
        if db is not None and db.resolve().parent != Path.cwd().resolve():
            safe = re.sub(r"[^\w.\-]", "_", cfg.experiment)
            location = (db.resolve().parent / "mlruns" / safe).as_uri()
    try:
        return client.create_experiment(cfg.experiment, artifact_location=location)
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def _search(client, experiment_id: str, tags: dict[str, str]) -> list:
    filt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filt,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _parent_run_id(client, experiment_id: str, cfg: TrackingConfig) -> str:
    found = _search(client, experiment_id, {TAG_PIPELINE: cfg.pipeline, TAG_ROLE: "parent"})
    if found:  # the oldest, should two have been created concurrently
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=cfg.pipeline,
        tags={TAG_PIPELINE: cfg.pipeline, TAG_ROLE: "parent"},
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _context_tags() -> dict[str, str]:
    """mlflow.user / mlflow.source.* tags as the fluent API would set them (best effort)."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        return {k: str(v) for k, v in resolve_tags().items()}
    except Exception:  # pragma: no cover - context providers are optional niceties
        return {}


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _dataset_input(spec: DatasetSpec):
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    with warnings.catch_warnings():  # two equivalent local sources are registered
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(spec.path))
    ds = MetaDataset(source, name=spec.name, digest=file_digest(spec.path))
    tags = [InputTag(key=MLFLOW_DATASET_CONTEXT, value=spec.context[:MAX_INPUT_TAG_VALUE])]
    return DatasetInput(dataset=ds._to_mlflow_entity(), tags=tags)


def _table_frame(rows: list[dict]):
    import pandas as pd

    def cell(v: object) -> object:
        if v is None or isinstance(v, (str, int, float, bool)):
            return v
        return json.dumps(v, ensure_ascii=False, default=str)

    return pd.DataFrame([{k: cell(v) for k, v in row.items()} for row in rows])


def _log_dir_files(client, run_id: str, src: Path, artifact_path: str) -> int:
    """Log every file under ``src`` (skipping ``*.tmp``) below ``artifact_path``."""
    n = 0
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = f.relative_to(src)
        if _skip_tmp(rel):
            continue
        parent = rel.parent.as_posix()
        sub = artifact_path if parent == "." else f"{artifact_path}/{parent}"
        client.log_artifact(run_id, str(f), sub)
        n += 1
    return n


# --------------------------------------------------------------------------- model registry

#: The pyfunc model logged for ``log_model: adapter`` (MLflow "models from code": this text is
#: written to a file and stored with the model, so loading needs no selfimprove install).
ADAPTER_MODEL_CODE = '''"""selfimprove round model for MLflow: a LoRA adapter on its start model.

model_config: base_model_uri (a registered model version it was trained on, loaded
recursively) or base_path (a local model folder, checked against base_digest); base_hub_id;
max_new_tokens. Load-time overrides (mlflow.pyfunc.load_model(uri, model_config={...})), passed
down the chain: base_override = a model folder used instead of the recorded base folder (no
digest check); allow_hub_fallback = load base_hub_id when the base folder is missing. The
adapter (if any) is the artifact "adapter". predict(prompts) returns greedy continuations;
unwrap_python_model().model / .tokenizer are the transformers model and tokenizer.
"""

import hashlib
import warnings
from pathlib import Path

import mlflow
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

PASS_DOWN = ("base_override", "allow_hub_fallback")


def folder_digest(path, length=36):
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root)
        if any(part.endswith(".tmp") for part in rel.parts):
            continue
        fh = hashlib.sha256()
        with open(f, "rb") as fd:
            while block := fd.read(1 << 20):
                fh.update(block)
        h.update(f"{rel.as_posix()}\\0{fh.hexdigest()}\\n".encode())
    return h.hexdigest()[:length]


def resolve_base(cfg):
    path, digest, hub_id = cfg.get("base_path"), cfg.get("base_digest"), cfg.get("base_hub_id")
    if cfg.get("base_override"):
        return cfg["base_override"]
    if path and Path(path).is_dir():
        if digest and folder_digest(path) != digest:
            raise RuntimeError(
                f"base model folder {path} changed since this model was logged (digest "
                f"{digest}); restore it (`dvc checkout` / `dvc pull` in the project), or load "
                "with model_config={'base_override': <folder>} to use another folder"
            )
        return path
    if path and not (cfg.get("allow_hub_fallback") and hub_id):
        raise RuntimeError(
            f"base model folder {path} not found; restore it (`dvc pull` in the project), or "
            "load with model_config={'base_override': <folder>} or "
            f"{{'allow_hub_fallback': True}} (hub id {hub_id!r})"
        )
    if not hub_id:
        raise RuntimeError("no base model recorded; pass model_config={'base_override': <folder>}")
    if path:
        warnings.warn(f"base model folder {path} not found; loading {hub_id} from the hub")
    return hub_id


class SelfImproveModel(PythonModel):
    def load_context(self, context):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = dict(context.model_config or {})
        if cfg.get("base_model_uri"):
            down = {k: cfg[k] for k in PASS_DOWN if cfg.get(k)}
            inner = mlflow.pyfunc.load_model(cfg["base_model_uri"], model_config=down or None)
            inner = inner.unwrap_python_model()
            model, tokenizer = inner.model, inner.tokenizer
        else:
            src = resolve_base(cfg)
            tokenizer = AutoTokenizer.from_pretrained(src)
            model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        adapter = (context.artifacts or {}).get("adapter")
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        model.eval()
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens = int(cfg.get("max_new_tokens") or 64)

    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        import torch

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out = []
        for prompt in model_input:
            enc = tok(prompt, return_tensors="pt")
            with torch.no_grad():
                ids = self.model.generate(
                    **enc, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad
                )
            out.append(tok.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
        return out


set_model(SelfImproveModel())
'''

ADAPTER_REQUIREMENTS = ["mlflow", "torch", "transformers", "peft", "safetensors"]
MERGED_REQUIREMENTS = ["mlflow", "torch", "transformers", "accelerate", "safetensors"]


@contextlib.contextmanager
def _fluent_run(run_id: str):
    """Make ``run_id`` the active run of MLflow's fluent API at :func:`tracking_uri`."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    # mlflow.set_tracking_uri also sets (or, given None, unsets) $MLFLOW_TRACKING_URI: restore both
    old_uri, old_env = getattr(utils, "_tracking_uri", None), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri())
    try:
        with mlflow.start_run(run_id=run_id):
            yield
    finally:
        mlflow.set_tracking_uri(old_uri)
        if old_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_env


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


def _adapter_base(adapter_dir: Path | None, model_dir: Path | None) -> Path | None:
    """The folder the adapter was trained on (adapter_config.json), or the model folder itself."""
    if adapter_dir is None:
        return model_dir
    conf = adapter_dir / "adapter_config.json"
    try:
        base = json.loads(conf.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None
    return Path(base) if base and Path(base).is_dir() else None


def _registered_version_with_digest(client, name: str, digest: str, exclude_run: str):
    """A current (non-superseded, finished) version of ``name`` whose model has ``digest``."""
    found = None
    for mv in _model_versions(client, name):
        if mv.tags.get(TAG_MODEL_DIGEST) != digest or not mv.run_id or mv.run_id == exclude_run:
            continue
        run = _get_run(client, mv.run_id)
        if run is None or run.info.status != "FINISHED":
            continue
        if run.data.tags.get(TAG_SUPERSEDED) == "true":
            continue
        if found is None or int(mv.version) > int(found.version):
            found = mv
    return found


def _model_versions(client, name: str) -> list:
    out, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _get_run(client, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def _log_registered_model(
    client,
    cfg: TrackingConfig,
    *,
    run_id: str,
    round_name: str,
    round_index: int,
    model_dir: Path | None,
    adapter_dir: Path | None,
    base_model_ref: str | None,
) -> str | None:
    """Log the round's model as an MLflow model and register it; return the version (or None)."""
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
    logged_name = re.sub(r"[^\w.\-]", "_", f"{cfg.pipeline}-{round_name}")
    with _fluent_run(run_id), warnings.catch_warnings():
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
            # every key present: MLflow only lets load-time model_config override existing keys
            model_config: dict = {
                "base_model_uri": "",
                "base_path": "",
                "base_digest": "",
                "base_hub_id": base_model_ref or "",
                "base_override": "",
                "allow_hub_fallback": False,
                "max_new_tokens": 64,
            }
            base = _adapter_base(adapter_dir, model_dir)
            base_version = None
            if base is not None:
                base_digest = model_digest if base == model_dir else file_digest(base)
                if adapter_dir is not None:  # trained on an earlier round's registered model?
                    base_version = _registered_version_with_digest(
                        client, name, base_digest, exclude_run=run_id
                    )
            if base_version is not None:
                model_config["base_model_uri"] = f"models:/{name}/{base_version.version}"
            elif base is not None:
                model_config["base_path"] = str(base.resolve())
                model_config["base_digest"] = base_digest
            with tempfile.TemporaryDirectory() as tmp:
                code = Path(tmp) / "selfimprove_model.py"
                code.write_text(ADAPTER_MODEL_CODE)
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
    """Point the alias ``best`` at the current version with the highest ``cfg.best_metric``.

    Versions whose round run is superseded (or not finished) are skipped and tagged
    ``selfimprove.superseded=true``. Returns the best version, or None (with a warning) when no
    current version's run has the metric.
    """
    name = cfg.registered_model_name()
    if name is None:
        return None
    key = _clean_key(cfg.best_metric)
    candidates, seen = [], set()
    for mv in _model_versions(client, name):
        run = _get_run(client, mv.run_id) if mv.run_id else None
        if run is None:
            continue
        if run.data.tags.get(TAG_SUPERSEDED) == "true" or run.info.status != "FINISHED":
            if mv.tags.get(TAG_SUPERSEDED) != "true":
                client.set_model_version_tag(name, mv.version, TAG_SUPERSEDED, "true")
            continue
        seen.update(run.data.metrics)
        if key in run.data.metrics:
            index = int(run.data.tags.get(TAG_ROUND_INDEX, mv.tags.get(TAG_ROUND_INDEX, "0")))
            candidates.append(
                {
                    "version": mv.version,
                    "round_index": index,
                    "round": mv.tags.get("round", run.data.tags.get(TAG_ROUND, "")),
                    "value": run.data.metrics[key],
                }
            )
    best = pick_best(candidates)
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


def log_round(
    cfg: TrackingConfig,
    *,
    round_name: str,
    round_index: int,
    params: dict | None = None,
    metrics: dict[str, float] | None = None,
    datasets: list[DatasetSpec] | None = None,
    artifacts: list[Path] | None = None,
    model_dir: Path | None = None,
    adapter_dir: Path | None = None,
    base_model_ref: str | None = None,
    tags: dict[str, str] | None = None,
    tables: dict[str, list[dict]] | None = None,
) -> str:
    """Log one round as a new child run of the pipeline's parent run; return its run id.

    Returns "" (and touches nothing) when ``cfg.enabled`` is false. Inputs are checked before
    any run is created (missing files raise :class:`InputError`). Metrics go to the round run and
    to the parent run, both at ``step=round_index``; non-finite or non-numeric ones are skipped
    (counted in the ``selfimprove.skipped_metrics`` tag). ``tables`` maps a name to rows, logged
    with ``log_table`` as ``tables/<name>.json``. On success older runs of the same pipeline and
    round are tagged ``selfimprove.superseded=true``; on an exception the round run is marked
    FAILED and the exception re-raised.

    Unless ``cfg.registered_model`` is None the model (see the module docstring) is logged as an
    MLflow model, registered with the tag ``round=<round_name>``, and the alias ``best`` moved
    to the current version with the highest ``cfg.best_metric`` (from ``metrics``).
    """
    if not cfg.enabled:
        return ""
    params, metrics, tags = params or {}, metrics or {}, tags or {}
    datasets, artifacts, tables = datasets or [], [Path(p) for p in artifacts or []], tables or {}
    model_dir = Path(model_dir) if model_dir is not None else None
    adapter_dir = Path(adapter_dir) if adapter_dir is not None else None
    _validate_inputs(round_name, datasets, artifacts, model_dir, adapter_dir)
    check_tracking(cfg)

    from mlflow.entities import Metric, Param

    client = _client()
    experiment_id = _experiment_id(client, cfg)
    parent_id = _parent_run_id(client, experiment_id, cfg)

    run_tags = _context_tags()
    run_tags.update({_clean_key(k): _truncate(str(v), MAX_TAG_VALUE) for k, v in tags.items()})
    run_tags.update(
        {
            TAG_PIPELINE: cfg.pipeline,
            TAG_ROLE: "round",
            TAG_ROUND: round_name,
            TAG_ROUND_INDEX: str(round_index),
            TAG_SUPERSEDED: "false",
            PARENT_TAG: parent_id,
        }
    )
    if model_dir is not None:
        run_tags[TAG_MODEL_DIR] = str(model_dir)
    if base_model_ref:
        run_tags[TAG_BASE_MODEL] = _truncate(base_model_ref, MAX_TAG_VALUE)
    good, skipped = _numeric_metrics(metrics)
    run_tags[TAG_SKIPPED_METRICS] = str(skipped)
    if skipped:
        log.warning("round %s: skipped %d non-finite or non-numeric metrics", round_name, skipped)

    registered = cfg.registered_model_name()
    run = client.create_run(experiment_id, run_name=f"{cfg.pipeline}/{round_name}", tags=run_tags)
    run_id = run.info.run_id
    try:
        flat = {_clean_key(k): v for k, v in flatten(params).items()}
        for chunk in _chunks([Param(k, v) for k, v in flat.items()], 100):
            client.log_batch(run_id, params=chunk, synchronous=True)
        now = int(time.time() * 1000)
        metric_list = [Metric(_clean_key(k), v, now, int(round_index)) for k, v in good.items()]
        for chunk in _chunks(metric_list, 1000):
            client.log_batch(run_id, metrics=chunk, synchronous=True)
            client.log_batch(parent_id, metrics=chunk, synchronous=True)

        if datasets:
            client.log_inputs(run_id, datasets=[_dataset_input(s) for s in datasets])
            for spec in datasets:
                client.log_artifact(run_id, str(spec.path), f"datasets/{spec.context}")
        for p in artifacts:
            if p.is_dir():
                _log_dir_files(client, run_id, p, f"artifacts/{p.name}")
            else:
                client.log_artifact(run_id, str(p), "artifacts")
        for name, rows in tables.items():
            fname = name if name.endswith((".json", ".parquet")) else f"{name}.json"
            with warnings.catch_warnings():  # pandas 3 deprecation inside mlflow's log_table
                warnings.filterwarnings("ignore", message=".*select_dtypes.*")
                client.log_table(run_id, data=_table_frame(rows), artifact_file=f"tables/{fname}")

        if cfg.log_model == "adapter" and adapter_dir is not None:
            _log_dir_files(client, run_id, adapter_dir, "model/adapter")
        elif cfg.log_model == "merged" and model_dir is not None and registered is None:
            # with the registry on, the weights go into the MLflow model instead (not twice)
            _log_dir_files(client, run_id, model_dir, "model/merged")
        version = _log_registered_model(
            client,
            cfg,
            run_id=run_id,
            round_name=round_name,
            round_index=round_index,
            model_dir=model_dir,
            adapter_dir=adapter_dir,
            base_model_ref=base_model_ref,
        )
        if version is not None:
            client.set_tag(run_id, "selfimprove.registered_model", f"{registered}/{version}")
    except BaseException as e:
        status = "FAILED" if isinstance(e, Exception) else "KILLED"
        try:
            client.set_terminated(run_id, status)
        except Exception:  # keep the original error
            log.exception("could not mark run %s %s", run_id, status)
        raise
    client.set_terminated(run_id, "FINISHED")

    older = _search(
        client,
        experiment_id,
        {TAG_PIPELINE: cfg.pipeline, TAG_ROLE: "round", TAG_ROUND: round_name},
    )
    for r in older:
        if r.info.run_id != run_id and r.data.tags.get(TAG_SUPERSEDED) != "true":
            client.set_tag(r.info.run_id, TAG_SUPERSEDED, "true")
    client.set_tag(parent_id, TAG_LAST_ROUND, round_name)
    client.set_terminated(parent_id, "FINISHED")
    if registered is not None:
        update_best_alias(client, cfg)
    log.info(
        "logged round %s as run %s (parent %s) to %s", round_name, run_id, parent_id, tracking_uri()
    )
    return run_id


# --------------------------------------------------------------------------- reading back


def log_report(cfg: TrackingConfig, files: list[Path], artifact_path: str = "report") -> str:
    """Log report files (plots, tables) to the pipeline's parent run under ``artifact_path``.

    Returns the parent run id, or "" when tracking is disabled. Files missing raise
    :class:`InputError` before anything is logged.
    """
    if not cfg.enabled:
        return ""
    files = [Path(f) for f in files]
    for f in files:
        if not f.is_file():
            raise InputError(f"report file {f}: not found; rerun the report stage")
    check_tracking(cfg)
    client = _client()
    parent_id = _parent_run_id(client, _experiment_id(client, cfg), cfg)
    for f in files:
        client.log_artifact(parent_id, str(f), artifact_path)
    return parent_id


def round_metrics(cfg: TrackingConfig) -> dict[str, dict[str, float]]:
    """Metrics of each round of ``cfg.pipeline`` from MLflow: per round, the latest round run
    not marked superseded. Raises :class:`InputError` if the experiment or pipeline is unknown."""
    check_tracking(cfg)
    client = _client()
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is None:
        raise InputError(
            f"MLflow experiment {cfg.experiment!r} not found in {tracking_uri()}; check "
            "tracking.experiment or MLFLOW_TRACKING_URI"
        )
    runs = _search(client, exp.experiment_id, {TAG_PIPELINE: cfg.pipeline, TAG_ROLE: "round"})
    latest: dict[str, object] = {}
    for run in runs:  # oldest first
        tags = run.data.tags
        if tags.get(TAG_SUPERSEDED) == "true" or run.info.status != "FINISHED":
            continue
        latest[tags.get(TAG_ROUND, "")] = run
    latest.pop("", None)
    if not latest:
        parents = _search(client, exp.experiment_id, {TAG_ROLE: "parent"})
        known = sorted({p.data.tags.get(TAG_PIPELINE, "") for p in parents} - {""})
        raise InputError(
            f"pipeline {cfg.pipeline!r} has no finished round runs in experiment "
            f"{cfg.experiment!r} ({tracking_uri()}); pipelines there: {', '.join(known) or 'none'}"
        )
    return {name: dict(run.data.metrics) for name, run in latest.items()}
