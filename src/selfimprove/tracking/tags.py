"""Names and limits of what selfimprove writes to MLflow, and the pure helpers that fit values to
them (no MLflow import: every other tracking module builds on this one).

Run tags: ``selfimprove.pipeline`` and ``selfimprove.role`` (``parent`` | ``round``) find the
runs of a pipeline; ``selfimprove.round`` / ``selfimprove.round_index`` name a round run;
``selfimprove.superseded=true`` marks a round run (or model version) replaced by a rerun.

Paths: every param and tag value that is an absolute path (or a ``file:`` URI) is logged relative
to the project root (:func:`portable_value`), so runs of the same commit on two machines log the
same values; ``selfimprove.host`` is the one tag that names the machine.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
from collections.abc import Mapping
from numbers import Real

#: MLflow limits (mlflow.utils.validation); kept here so pure helpers need no mlflow import.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_INPUT_TAG_VALUE = 500
#: MLflow stores at most 36 characters of a dataset digest: the sha256 prefix we log.
DIGEST_CHARS = 36

TAG_PIPELINE = "selfimprove.pipeline"
TAG_ROLE = "selfimprove.role"
TAG_STUDY = "selfimprove.study"
TAG_ROUND = "selfimprove.round"
TAG_ROUND_INDEX = "selfimprove.round_index"
TAG_SUPERSEDED = "selfimprove.superseded"
TAG_BASE_MODEL = "selfimprove.base_model"
TAG_MODEL_DIR = "selfimprove.model_dir"
TAG_SKIPPED_METRICS = "selfimprove.skipped_metrics"
TAG_LAST_ROUND = "selfimprove.last_round"
TAG_MODEL_DIGEST = "selfimprove.model_digest"
TAG_REGISTERED_MODEL = "selfimprove.registered_model"
#: the machine that ran the round (the only machine-specific tag)
TAG_HOST = "selfimprove.host"
PARENT_TAG = "mlflow.parentRunId"
BEST_ALIAS = "best"


def _stringify(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return str(value)


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in "..." when cut.

    >>> truncate("abcdef", 5), truncate("abc", 5)
    ('ab...', 'abc')
    """
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
            out[full] = truncate(_stringify(value), max_len)
    return out


def clean_key(key: str) -> str:
    """Make ``key`` a valid MLflow param/metric/tag name.

    >>> clean_key("eval/acc@1 (greedy)")
    'eval/acc_1 _greedy_'
    >>> clean_key("/a//b/")
    '_a__b_'
    """
    key = re.sub(r"[^\w.\- :/]", "_", str(key))[:MAX_KEY]
    if key.startswith("/") or posixpath.normpath(key) != key:
        key = key.replace("/", "_")
    return key or "_"


def numeric_metrics(metrics: Mapping, prefix: str = "") -> tuple[dict[str, float], int]:
    """Finite numeric metrics with dotted keys, and how many values were skipped.

    >>> numeric_metrics({"acc": 0.5, "n": 3, "bad": float("nan"), "s": "x", "sub": {"f1": 1}})
    ({'acc': 0.5, 'n': 3.0, 'sub.f1': 1.0}, 2)
    """
    good: dict[str, float] = {}
    skipped = 0
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            sub, n = numeric_metrics(value, prefix=f"{prefix}{key}.")
            good.update(sub)
            skipped += n
        elif isinstance(value, Real) and math.isfinite(float(value)):
            good[f"{prefix}{key}"] = float(value)
        else:
            skipped += 1
    return good, skipped


def safe_name(text: str) -> str:
    """``text`` with every character but letters, digits, ``_.-`` replaced by ``_`` (a name
    MLflow accepts for a logged model, and a safe folder name).

    >>> safe_name("my pipe/r1")
    'my_pipe_r1'
    """
    return re.sub(r"[^\w.\-]", "_", text)


def file_digest(path: str | os.PathLike, length: int = DIGEST_CHARS) -> str:
    """The digest MLflow stores for a dataset or model: :func:`core.digest.digest`, 36 chars."""
    from selfimprove.core.digest import digest

    return digest(path, length)


def _rel(path: str, root: str) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:  # another drive (Windows): no relative path exists
        return os.path.basename(path.rstrip("/\\")) or path


def portable_path(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``path`` relative to the project ``root``, in posix form (``..`` where it lies outside).

    Symlinks are not resolved (a DVC output linked into the cache keeps its workspace path),
    except that a symlinked prefix of ``root`` (``/tmp`` -> ``/private/tmp``) is seen through.

    >>> portable_path("/home/a/proj/data/models/base", "/home/a/proj")
    'data/models/base'
    >>> portable_path("/home/a/models/tiny", "/home/a/proj"), portable_path("data/x", "/p")
    ('../models/tiny', 'data/x')
    >>> portable_path("/home/a/proj", "/home/a/proj")
    '.'
    """
    path = os.fspath(path)
    if not os.path.isabs(path):
        return posixpath.normpath(path.replace(os.sep, "/"))
    root = os.path.abspath(os.fspath(root))
    rel = _rel(os.path.abspath(path), root)
    if rel.startswith(".."):  # try again with symlinks resolved on both sides
        real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        other = _rel(real, os.path.realpath(root))
        if other.count("..") < rel.count(".."):
            rel = other
    return rel.replace(os.sep, "/")


def portable_value(value: str, root: str | os.PathLike) -> str:
    """``value`` with an absolute path or a ``file:`` URI made relative to ``root``; any other
    value unchanged.

    >>> portable_value("/srv/proj/stages/track.py", "/srv/proj")
    'stages/track.py'
    >>> portable_value("file:///srv/proj/mlruns", "/srv/proj"), portable_value("lmsi", "/srv")
    ('mlruns', 'lmsi')
    >>> portable_value("https://host/x", "/srv"), portable_value("models:/m/1", "/srv")
    ('https://host/x', 'models:/m/1')
    """
    if value.startswith("file://"):
        from urllib.parse import unquote, urlparse

        parsed = urlparse(value)
        if parsed.netloc in ("", "localhost") and parsed.path.startswith("/"):
            return portable_path(unquote(parsed.path), root)
        return value
    if os.path.isabs(value) and "\n" not in value:
        return portable_path(value, root)
    return value
