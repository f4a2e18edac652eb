"""Where runs go (the tracking URI) and a fail-fast check that it can work (no MLflow import).

The tracking URI is ``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` (relative to the working
directory); an ``http(s)://`` server works unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

from selfimprove.config.tracking import TrackingConfig
from selfimprove.core.io import InputError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
CHECK_TIMEOUT_S = 5.0


def tracking_uri() -> str:
    """The MLflow tracking URI: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI", "").strip() or DEFAULT_TRACKING_URI


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for in-memory).

    >>> sqlite_path("sqlite:///mlflow.db"), sqlite_path("sqlite:////tmp/x/m.db?timeout=5")
    (PosixPath('mlflow.db'), PosixPath('/tmp/x/m.db'))
    >>> sqlite_path("sqlite://") is None
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
        db = sqlite_path(uri)
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
