"""The tracking URI's fail-fast check (tracking/health.py): one InputError line, in seconds, for
every URI MLflow would fail on later, and no secret of the URI in any message.

Servers here listen on 127.0.0.1 only, answer from a thread that stops by itself after
``SERVE_S`` at the latest, and are shut down by the test. The tests run as root, which ignores
permission bits, so a non-writable sqlite location is made without them: a path under a regular
file (its "folder" cannot be created) and /proc (a folder where no file can be created).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from selfimprove.config.tracking import TrackingConfig
from selfimprove.core.io import InputError
from selfimprove.tracking import health
from selfimprove.tracking.health import check_tracking, mask_uri, tracking_uri

SERVE_S = 20.0
SECRET = "hunter2"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Loopback requests go straight to the test server, whatever proxy the machine sets."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@contextlib.contextmanager
def serve(status: int, body: bytes, content_type: str = "application/json"):
    """An HTTP server on 127.0.0.1 answering every GET with ``status``/``body``; yields
    (its URL, the list of request (path, Authorization header))."""
    seen: list[tuple[str, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    srv.timeout = 0.1
    stop = threading.Event()
    deadline = time.monotonic() + SERVE_S

    def loop():
        while not stop.is_set() and time.monotonic() < deadline:
            srv.handle_request()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}", seen
    finally:
        stop.set()
        thread.join(timeout=5)
        srv.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _refused(monkeypatch, uri: str, match: str, within_s: float = 3.0) -> str:
    """check_tracking's one-line error for ``uri``, quick and without the secret."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    t0 = time.monotonic()
    with pytest.raises(InputError, match=match) as e:
        check_tracking(TrackingConfig())
    msg = str(e.value)
    assert time.monotonic() - t0 < within_s
    assert "\n" not in msg and "MLFLOW_TRACKING_URI=" in msg
    assert SECRET not in msg
    return msg


# ------------------------------------------------------------------------- moved here


def test_tracking_uri_default(monkeypatch, tmp_path):
    """One store per project: a relative sqlite path resolves from DVC's $DVC_ROOT (the main
    repository also inside `dvc exp run --temp` workspaces), else from the folder with .dvc/."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "main"))
    assert tracking_uri() == f"sqlite:///{tmp_path}/main/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs/m.db?timeout=30")
    assert tracking_uri() == f"sqlite:///{tmp_path}/main/runs/m.db?timeout=30"
    monkeypatch.delenv("DVC_ROOT")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / "proj" / ".dvc").mkdir(parents=True)
    (tmp_path / "proj" / "stages").mkdir()
    monkeypatch.chdir(tmp_path / "proj" / "stages")
    assert tracking_uri() == f"sqlite:///{tmp_path}/proj/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///:memory:")
    assert tracking_uri() == "sqlite:///:memory:"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000")
    assert tracking_uri() == "http://localhost:5000"


def test_check_tracking_disabled_checks_nothing(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///")
    check_tracking(TrackingConfig(enabled=False))


def test_check_tracking_sqlite_creates_nothing(tmp_path, monkeypatch):
    """`selfimprove check` (create=False) only looks: no folder, no probe file; the stages
    (create=True) make the database's folder."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/a/b/mlflow.db")
    check_tracking(TrackingConfig(), create=False)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b").mkdir()
    check_tracking(TrackingConfig(), create=False)
    assert list((tmp_path / "a" / "b").iterdir()) == []
    check_tracking(TrackingConfig())
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the stages' write probe left nothing


def test_check_tracking_file_store_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    _refused(monkeypatch, str(tmp_path / "mlruns"), "sqlite")


def test_check_tracking_unreachable_http_fast(monkeypatch):
    uri = f"http://127.0.0.1:{_free_port()}"
    msg = _refused(monkeypatch, uri, "does not answer")
    assert uri in msg


def test_check_tracking_http_answering(monkeypatch):
    """A server that answers MLflow's REST API with JSON passes (no experiment yet is fine)."""
    with serve(200, b"{}") as (url, seen):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url + "/")
        check_tracking(TrackingConfig())
    assert seen[0][0].startswith("/api/2.0/mlflow/experiments/search")
    # an MLflow error answer (JSON with error_code) is MLflow too
    with serve(400, b'{"error_code": "INVALID_PARAMETER_VALUE"}') as (url, _):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        check_tracking(TrackingConfig())


# ------------------------------------------------------------------------- sqlite


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite:///file::memory:?cache=shared",
        "sqlite:///file:m.db?mode=memory&uri=true",
    ],
)
def test_sqlite_in_memory_refused(monkeypatch, uri):
    _refused(monkeypatch, uri, "in-memory sqlite database is gone")


def test_sqlite_under_a_regular_file_refused(tmp_path, monkeypatch):
    """The folder cannot be created: a regular file stands where it would be."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    msg = _refused(
        monkeypatch, f"sqlite:///{blocker}/runs/mlflow.db", "is a file, expected a folder"
    )
    assert str(blocker) in msg


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_sqlite_folder_not_writable_refused(monkeypatch):
    """/proc exists and is a folder, but no file can be created there (not even by root): the
    stand-in for a read-only folder. Before this check: 104 s of retries and a traceback."""
    msg = _refused(monkeypatch, "sqlite:////proc/selfimprove-test.db", "cannot write a file in")
    assert "/proc" in msg
    _refused(monkeypatch, "sqlite:////proc/selfimprove-test/m.db", "cannot create the folder")


def test_sqlite_path_is_a_folder_refused(tmp_path, monkeypatch):
    (tmp_path / "m.db").mkdir()
    _refused(monkeypatch, f"sqlite:///{tmp_path}/m.db", "is not a file")


# ------------------------------------------------------------------------- other schemes


def test_unknown_scheme_refused(monkeypatch):
    msg = _refused(monkeypatch, f"mongodb://u:{SECRET}@127.0.0.1/runs", "unknown scheme 'mongodb'")
    assert "u:***@" in msg and "sqlite:///mlflow.db" in msg


@pytest.mark.parametrize(
    "uri, package",
    [
        (f"postgresql://mlflow:{SECRET}@127.0.0.1/mlflow", "psycopg2-binary"),
        (f"mysql+pymysql://mlflow:{SECRET}@127.0.0.1/mlflow", "PyMySQL"),
    ],
)
def test_database_without_driver_names_the_package(monkeypatch, uri, package):
    scheme = uri.split(":", 1)[0]
    monkeypatch.setitem(health.DB_DRIVERS, scheme, ("selfimprove_no_such_driver", package))
    msg = _refused(monkeypatch, uri, "driver is not installed")
    assert f"pip install {package!r}" in msg and "mlflow:***@" in msg


def test_database_closed_port_fast(monkeypatch):
    port = _free_port()
    monkeypatch.setitem(health.DB_DRIVERS, "postgresql", ("json", "json"))  # "installed"
    uri = f"postgresql://mlflow:{SECRET}@127.0.0.1:{port}/mlflow"
    msg = _refused(monkeypatch, uri, "database does not answer")
    assert f"127.0.0.1:{port}" in msg


# ------------------------------------------------------------------------- http


def test_http_server_that_is_not_mlflow_refused(monkeypatch):
    """A web server answering 404 to MLflow's API (its /health may well say 200) is refused
    before anything runs; before: a 47-line MLflow traceback at the first log call."""
    with serve(404, b"<html>Not Found</html>", "text/html") as (url, seen):
        msg = _refused(monkeypatch, url, "not an MLflow tracking server")
    assert "HTTP 404" in msg and len(seen) == 1
    with serve(200, b"<html>hello</html>", "text/html") as (url, _):
        _refused(monkeypatch, url, r"not an MLflow tracking server .*not JSON")


def test_http_server_error_refused(monkeypatch):
    with serve(503, b"busy", "text/plain") as (url, _):
        _refused(monkeypatch, url, "HTTP 503")


def test_http_credentials_sent_as_header_and_masked(monkeypatch):
    """``user:password@`` goes in the Authorization header (not the URL), never in a message."""
    with serve(401, b'{"error_code": "UNAUTHENTICATED"}') as (url, seen):
        uri = url.replace("http://", f"http://alice:{SECRET}@") + f"/?token={SECRET}"
        msg = _refused(monkeypatch, uri, "refused the credentials")
    assert seen[0][1] and seen[0][1].startswith("Basic ")
    assert "alice:***@" in msg and "token=***" in msg
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SECRET)
    with serve(200, b'{"experiments": []}') as (url, seen):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        check_tracking(TrackingConfig())
    assert seen[0][1] == f"Bearer {SECRET}"


# ------------------------------------------------------------------------- masking


def test_mask_uri_hides_every_secret():
    cases = {
        f"postgresql://mlflow:{SECRET}@db:5432/mlflow": "postgresql://mlflow:***@db:5432/mlflow",
        f"https://{SECRET}@mlflow.example.com": "https://***@mlflow.example.com",
        f"http://h:5000/?access_token={SECRET}&a=1": "http://h:5000/?access_token=***&a=1",
        f"mysql://u:{SECRET}@h/db?password={SECRET}": "mysql://u:***@h/db?password=***",
        "sqlite:////tmp/m.db?timeout=5": "sqlite:////tmp/m.db?timeout=5",
        "./mlruns": "./mlruns",
    }
    for uri, masked in cases.items():
        assert mask_uri(uri) == masked
    # a password containing '@' or ':' is hidden whole
    assert SECRET not in mask_uri(f"http://u:{SECRET}@x:y@host/")
    assert mask_uri(f"postgresql://u:{SECRET}@x@db/m") == "postgresql://u:***@db/m"
    # database URIs through SQLAlchemy's make_url: quoted passwords, drivers, several query keys
    # (shown sorted, as SQLAlchemy renders them)
    assert (
        mask_uri(f"postgresql+psycopg2://u:{SECRET}%40x@db/m?sslmode=require&token={SECRET}")
        == "postgresql+psycopg2://u:***@db/m?sslmode=require&token=***"
    )
    assert mask_uri(f"mysql://u:{SECRET}@h/db?b=1&password={SECRET}&a=2") == (
        "mysql://u:***@h/db?a=2&b=1&password=***"
    )


def test_sqlite_file_that_is_not_a_database_refused(tmp_path, monkeypatch):
    """An existing file must be a sqlite database (its header) or empty; check opens nothing
    for writing and creates nothing."""
    import sqlite3

    notdb = tmp_path / "notes.txt"
    notdb.write_text("my notes\n")
    before = notdb.stat().st_mtime_ns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{notdb}")
    with pytest.raises(InputError, match="is not a sqlite database"):
        check_tracking(TrackingConfig(), create=False)
    assert notdb.read_text() == "my notes\n" and notdb.stat().st_mtime_ns == before
    db = tmp_path / "real.db"
    sqlite3.connect(db).execute("create table t (x)").connection.close()
    (tmp_path / "empty.db").write_bytes(b"")
    for name in ("real.db", "empty.db"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / name}")
        check_tracking(TrackingConfig(), create=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "notes.txt", "real.db"]


def test_allowed_file_store_must_be_a_writable_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _refused(monkeypatch, str(blocker), "is a file, expected a folder")
    _refused(monkeypatch, f"file://{blocker}/runs", "is a file, expected a folder")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    _refused(monkeypatch, f"{tmp_path}/loop/runs", "symlink loop")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path / "mlruns"))
    check_tracking(TrackingConfig(), create=False)
    assert not (tmp_path / "mlruns").exists()
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        _refused(monkeypatch, str(ro / "mlruns"), "cannot be written")


def test_databricks_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DATABRICKS_HOST", raising=False)
    for uri in ("databricks", "databricks://profile"):
        msg = _refused(monkeypatch, uri, "Databricks workspace")
        assert "file store" not in msg and "DATABRICKS_HOST" in msg
    monkeypatch.setenv("DATABRICKS_HOST", "https://x.cloud.databricks.com")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "databricks")
    check_tracking(TrackingConfig(), create=False)
