"""Where runs go (the tracking URI) and a fail-fast check that it can work (no MLflow import).

The tracking URI is ``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` (a relative sqlite path is
resolved from the project root, so DVC's temporary experiment workspaces log there too); an
``http(s)://`` server or a database (``postgresql://``, ``mysql://``, ``mssql://``) works
unchanged. :func:`check_tracking` refuses, in one line each and within
seconds, what MLflow would only fail on later (or never): an in-memory sqlite database, a sqlite
file in a folder that cannot be written, an unknown scheme, a database URI without its driver,
a server that does not answer or is not MLflow. Every message shows the URI through
:func:`mask_uri`, so a password or token in it is never printed or logged.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from selfimprove.config.tracking import TrackingConfig
from selfimprove.core.io import InputError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
CHECK_TIMEOUT_S = 5.0
#: the cheap REST call that tells an MLflow server from any other web server
API_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"
#: schemes MLflow itself serves (http/https: REST; the rest: SQLAlchemy; databricks: its REST)
DB_SCHEMES = ("postgresql", "mysql", "mssql")
OTHER_SCHEMES = ("databricks", "databricks-uc", "uc")
#: SQLAlchemy dialect(+driver) -> (module to import, pip package that provides it)
DB_DRIVERS = {
    "postgresql": ("psycopg2", "psycopg2-binary"),
    "postgresql+psycopg2": ("psycopg2", "psycopg2-binary"),
    "postgresql+psycopg": ("psycopg", "psycopg[binary]"),
    "postgresql+pg8000": ("pg8000", "pg8000"),
    "mysql": ("MySQLdb", "mysqlclient"),
    "mysql+mysqldb": ("MySQLdb", "mysqlclient"),
    "mysql+pymysql": ("pymysql", "PyMySQL"),
    "mysql+mysqlconnector": ("mysql.connector", "mysql-connector-python"),
    "mssql": ("pyodbc", "pyodbc"),
    "mssql+pyodbc": ("pyodbc", "pyodbc"),
    "mssql+pymssql": ("pymssql", "pymssql"),
}
DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
#: query-string keys whose values are secrets (compared lower-case, ``-`` read as ``_``)
SECRET_KEYS = (
    "password", "passwd", "pwd", "pass", "secret", "token", "access_token", "api_key", "apikey",
    "key", "auth", "authorization", "sig", "signature", "credential", "credentials", "sas",
)  # fmt: skip
MASK = "***"


def project_root() -> Path:
    """The project's root: ``$DVC_ROOT``, which DVC sets for every stage it runs -- the main
    repository's root also in the temporary workspaces of ``dvc exp run --temp``/``--queue``
    (``.dvc/tmp/exps/...``, dvc/repo/experiments/queue/base.py) --, else the nearest folder up
    from the cwd holding ``.dvc/``, else the cwd."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"])
    cwd = Path.cwd()
    return next((p for p in (cwd, *cwd.parents) if (p / ".dvc").is_dir()), cwd)


def tracking_uri() -> str:
    """The MLflow tracking URI: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``, a relative
    sqlite path resolved from :func:`project_root`: one store for every workspace of a project
    (``sqlite:////<root>/mlflow.db``)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip() or DEFAULT_TRACKING_URI
    db = sqlite_path(uri) if uri_scheme(uri) == "sqlite" else None
    if db is None or db.is_absolute() or sqlite_in_memory(uri):
        return uri
    query = uri.partition("?")[1] + uri.partition("?")[2]
    return f"sqlite:///{(project_root() / db).as_posix()}{query}"


def shown_tracking_uri() -> str:
    """:func:`tracking_uri` as messages and log lines show it (:func:`mask_uri`)."""
    return mask_uri(tracking_uri())


def _secret_key(key: str) -> bool:
    return key.lower().replace("-", "_") in SECRET_KEYS


def mask_uri(uri: str) -> str:
    """``uri`` with its secrets replaced by ``***``: the password of ``user:password@`` (a lone
    ``token@`` too) and secret-looking query values; everything else as given.

    >>> mask_uri("postgresql://mlflow:s3cr3t@db:5432/mlflow")
    'postgresql://mlflow:***@db:5432/mlflow'
    >>> mask_uri("https://ghp_abc123@mlflow.example.com/")
    'https://***@mlflow.example.com/'
    >>> mask_uri("http://h:5000/?token=abc&x=1&api-key=k")
    'http://h:5000/?token=***&x=1&api-key=***'
    >>> mask_uri("sqlite:///mlflow.db"), mask_uri("http://u:p@w@h/")
    ('sqlite:///mlflow.db', 'http://u:***@h/')
    """
    netloc = uri.partition("://")[2].partition("/")[0]
    # SQLAlchemy's own URLs; an unquoted '@' in the password would leave its tail in the host
    if uri_scheme(uri).split("+")[0] in (*DB_SCHEMES, "sqlite") and netloc.count("@") <= 1:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(uri)
        except (ArgumentError, ValueError):  # unparsable (e.g. a bad port): masked below
            pass
        else:
            query = {k: MASK if _secret_key(k) else v for k, v in url.query.items()}
            # render_as_string percent-quotes query values: show the mask as the password's
            shown = url.set(query=query).render_as_string(hide_password=True)
            return shown.replace("%2A%2A%2A", MASK)
    # ours for the rest (http(s) above all): make_url shows a lone token@ as a user name and
    # cuts user:p@ss@host at the first '@', leaving part of the password in the host
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    path, q, query = path.partition("?")
    if q:
        parts = []
        for item in query.split("&"):
            key, eq, value = item.partition("=")
            parts.append(f"{key}={MASK}" if eq and _secret_key(key) else item)
        query = "&".join(parts)
    return f"{scheme}{sep}{netloc}{slash}{path}{q}{query}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for in-memory).

    >>> sqlite_path("sqlite:///mlflow.db"), sqlite_path("sqlite:////tmp/x/m.db?timeout=5")
    (PosixPath('mlflow.db'), PosixPath('/tmp/x/m.db'))
    >>> sqlite_path("sqlite://") is None
    True
    """
    rest = uri[len("sqlite://") :].split("?", 1)[0]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    return Path(unquote(rest[1:]))


def sqlite_in_memory(uri: str) -> bool:
    """True for every sqlite URI whose database lives only as long as the process.

    >>> [sqlite_in_memory(u) for u in ("sqlite://", "sqlite:///", "sqlite:///:memory:")]
    [True, True, True]
    >>> sqlite_in_memory("sqlite:///file::memory:?cache=shared")
    True
    >>> sqlite_in_memory("sqlite:///file:m.db?mode=memory&uri=true")
    True
    >>> sqlite_in_memory("sqlite:///mlflow.db"), sqlite_in_memory("sqlite:////tmp/m.db")
    (False, False)
    """
    db = sqlite_path(uri)
    if db is None or str(db).startswith(("file::memory:", ":memory:")):
        return True
    query = dict(parse_qsl(uri.split("?", 1)[1])) if "?" in uri else {}
    return query.get("mode", "").lower() == "memory"


def uri_scheme(uri: str) -> str:
    """The lower-case scheme of ``uri``, ``""`` for a plain path (or a Windows drive letter).

    >>> uri_scheme("HTTP://h"), uri_scheme("postgresql+psycopg2://x"), uri_scheme("./mlruns")
    ('http', 'postgresql+psycopg2', '')
    >>> uri_scheme("C:/runs"), uri_scheme("sqlite:///m.db")
    ('', 'sqlite')
    """
    if ":" not in uri:
        return ""
    scheme = uri.split(":", 1)[0].lower()
    return "" if len(scheme) == 1 else scheme


def _plugin_schemes() -> set[str]:
    """Schemes that installed MLflow plugins register (entry points ``mlflow.tracking_store``)."""
    from importlib.metadata import entry_points

    try:
        return {ep.name.lower() for ep in entry_points(group="mlflow.tracking_store")}
    except Exception:  # a broken distribution's metadata must not break the check
        return set()


def check_tracking(cfg: TrackingConfig, create: bool = True) -> None:
    """Fail fast (:class:`InputError`, one line with the fix) if the tracking URI cannot work;
    a no-op when tracking is disabled.

    http(s): ``GET <uri>/api/2.0/mlflow/experiments/search`` must answer like MLflow (JSON)
    within a few seconds. sqlite: not in-memory; the database's folder is created and a file
    can be written there (checked directly, not through MLflow's minutes of retries).
    postgresql/mysql/mssql: SQLAlchemy and the dialect's driver are installed and the host
    accepts a TCP connection. A file store (plain path or ``file:``) is refused unless
    ``MLFLOW_ALLOW_FILE_STORE=true`` (then its folder must be writable); ``databricks`` needs
    its credentials; any other scheme is refused unless a plugin registers it.

    ``create=False`` (``selfimprove check``) creates and writes nothing: folders are checked
    with ``os.access`` and an existing sqlite file by its header. The stages (``create=True``)
    create the sqlite database's folder and write a probe file in it.
    """
    if not cfg.enabled:
        return
    uri = tracking_uri()
    shown = f"MLFLOW_TRACKING_URI={mask_uri(uri)}"
    scheme = uri_scheme(uri)
    dialect = scheme.split("+", 1)[0]
    if uri.lower() in OTHER_SCHEMES:  # "databricks" alone is a workspace, not a folder
        scheme = dialect = uri.lower()
    if scheme in ("http", "https"):
        _check_http(uri)
    elif scheme == "sqlite":
        _check_sqlite(uri, shown, create)
    elif dialect in DB_SCHEMES:
        _check_database(uri, scheme, shown)
    elif scheme in ("", "file"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
            raise InputError(
                f"{shown}: a file store (a folder of runs), which MLflow 3 refuses; use "
                f"{DEFAULT_TRACKING_URI} (unset MLFLOW_TRACKING_URI) or an http://host:port "
                "server, or set MLFLOW_ALLOW_FILE_STORE=true"
            )
        _check_file_store(uri, shown)
    elif scheme in ("databricks", "databricks-uc"):
        _check_databricks(uri, shown)
    elif scheme not in OTHER_SCHEMES and scheme not in _plugin_schemes():
        known = ", ".join(("sqlite", "http", "https", *DB_SCHEMES, *OTHER_SCHEMES, "file"))
        raise InputError(
            f"{shown}: unknown scheme {scheme!r}; use one MLflow knows ({known}), e.g. "
            f"{DEFAULT_TRACKING_URI} (unset MLFLOW_TRACKING_URI) or http://host:port"
        )


def _check_sqlite(uri: str, shown: str, create: bool = True) -> None:
    if sqlite_in_memory(uri):
        raise InputError(
            f"{shown}: an in-memory sqlite database is gone when the stage exits (mlflow.json "
            f"would name a run that no longer exists); use a file, e.g. {DEFAULT_TRACKING_URI} "
            "(unset MLFLOW_TRACKING_URI)"
        )
    db = sqlite_path(uri)
    assert db is not None  # not in memory
    fix = "point it at a writable folder or unset MLFLOW_TRACKING_URI"
    db = db.expanduser()
    folder = db.absolute().parent
    above = _existing_ancestor(folder, shown, db, fix)
    if db.exists() and not db.is_file():
        raise InputError(f"{shown}: {db} exists but is not a file (a sqlite database); {fix}")
    if db.exists() and not sqlite_header_ok(db):
        raise InputError(
            f"{shown}: {db} exists but is not a sqlite database (its first bytes are not "
            "'SQLite format 3'); move it away or point the URI at another file"
        )
    if not create:  # selfimprove check: look, create nothing
        writable = os.access(above, os.W_OK | os.X_OK) and (
            not db.exists() or os.access(db, os.R_OK | os.W_OK)
        )
        if not writable:
            raise InputError(f"{shown}: cannot write {db} in {above} (permission denied); {fix}")
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = e.strerror or e
        raise InputError(
            f"{shown}: cannot create the folder {folder} for {db} ({reason}); {fix}"
        ) from None
    # sqlite writes a journal next to the database and MLflow its artifacts (mlruns/) there:
    # the folder itself must take a new file, and an existing database must open for writing
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".selfimprove-check-"):
            pass
        if db.exists():
            with open(db, "ab"):
                pass
    except OSError as e:
        reason = e.strerror or e
        raise InputError(f"{shown}: cannot write a file in {folder} ({reason}); {fix}") from None


def sqlite_header_ok(db: Path) -> bool:
    """An existing file is a sqlite database (its 16-byte header) or empty (sqlite makes an
    empty file a new database)."""
    try:
        with open(db, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return head in (b"", b"SQLite format 3\x00")


def _existing_ancestor(folder: Path, shown: str, target: Path, fix: str) -> Path:
    """The nearest existing folder at or above ``folder``; a file or a symlink loop on the way
    is one line."""
    for a in (folder, *folder.parents):
        try:
            a.stat()
        except FileNotFoundError:
            continue
        except OSError as e:
            from selfimprove.core.io import os_reason

            raise InputError(f"{shown}: {a}: {os_reason(e)}; {fix}") from None
        if not a.is_dir():
            raise InputError(
                f"{shown}: {a} is a file, expected a folder, so {target} cannot exist; {fix}"
            )
        return a
    return Path("/")


def _check_file_store(uri: str, shown: str) -> None:
    """An allowed file store's folder exists as a folder or can be made, and can be written."""
    from urllib.parse import urlsplit as split

    path = Path(unquote(split(uri).path) if uri_scheme(uri) == "file" else uri).expanduser()
    fix = "point it at a writable folder or unset MLFLOW_TRACKING_URI"
    if path.exists() and not path.is_dir():
        raise InputError(f"{shown}: {path} is a file, expected a folder (a file store); {fix}")
    above = _existing_ancestor(path.absolute(), shown, path, fix)
    if not os.access(above, os.W_OK | os.X_OK):
        raise InputError(f"{shown}: the file store {above} cannot be written; {fix}")


def _check_databricks(uri: str, shown: str) -> None:
    """A Databricks workspace: its host and token come from the environment or a
    ``~/.databrickscfg`` profile (not probed: that needs the network and the credentials)."""
    if os.environ.get("DATABRICKS_HOST") or (Path.home() / ".databrickscfg").is_file():
        return
    raise InputError(
        f"{shown}: a Databricks workspace, but no credentials: set DATABRICKS_HOST and "
        "DATABRICKS_TOKEN (or write ~/.databrickscfg), or unset MLFLOW_TRACKING_URI to log to "
        f"{DEFAULT_TRACKING_URI}"
    )


def _check_database(uri: str, scheme: str, shown: str) -> None:
    import importlib.util
    import socket

    dialect = scheme.split("+", 1)[0]
    if importlib.util.find_spec("sqlalchemy") is None:
        raise InputError(f"{shown}: MLflow needs SQLAlchemy for it; pip install sqlalchemy")
    module, package = DB_DRIVERS.get(scheme, (scheme.split("+", 1)[-1], scheme.split("+")[-1]))
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package of a dotted name is missing
        found = False
    if not found:
        raise InputError(
            f"{shown}: the {scheme} driver is not installed (no module {module!r}); "
            f"pip install {package!r}, or unset MLFLOW_TRACKING_URI to log to "
            f"{DEFAULT_TRACKING_URI}"
        )
    try:
        parts = urlsplit(uri)
        host, port = parts.hostname, parts.port or DB_PORTS[dialect]
    except ValueError as e:  # a port that is not a number
        raise InputError(f"{shown}: not a valid database URI ({e})") from None
    if not host:
        return  # a unix socket (?host=/run/postgresql) or the driver's default: not probed
    try:
        socket.create_connection((host, port), timeout=CHECK_TIMEOUT_S).close()
    except OSError as e:
        raise InputError(
            f"{shown}: the database does not answer at {host}:{port} ({e.strerror or e}); start "
            f"it, fix the address, or unset MLFLOW_TRACKING_URI to log to {DEFAULT_TRACKING_URI}"
        ) from None


def _auth_header(parts) -> str | None:
    """The Authorization header MLflow's client would send: the URI's ``user:password@``, else
    ``MLFLOW_TRACKING_TOKEN`` (bearer) or ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` (basic)."""
    import base64

    user, password = parts.username, parts.password
    if user is None:
        if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
            return f"Bearer {token}"
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if user is None:
            return None
    raw = f"{unquote(user)}:{unquote(password or '')}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _check_http(uri: str, timeout: float = CHECK_TIMEOUT_S) -> None:
    """One MLflow REST call (``API_PROBE``): any JSON answer below 500 that is not 401/403 is
    an MLflow server (it may have no experiment yet); anything else fails with the fix."""
    import json
    import ssl
    import urllib.error
    import urllib.request

    shown = f"MLFLOW_TRACKING_URI={mask_uri(uri)}"
    fix = (
        "start it (e.g. `mlflow server --host 127.0.0.1 --port 5000 "
        "--backend-store-uri sqlite:///mlflow.db`), fix the address, or unset "
        f"MLFLOW_TRACKING_URI to log to {DEFAULT_TRACKING_URI}"
    )
    try:
        parts = urlsplit(uri)
        netloc = parts.netloc.rsplit("@", 1)[-1]  # credentials go in the header, not the URL
        base = parts._replace(netloc=netloc, query="", fragment="").geturl().rstrip("/")
        auth = _auth_header(parts)
    except ValueError as e:
        raise InputError(f"{shown}: not a valid URL ({e}); {fix}") from None
    url = base + API_PROBE
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    if auth:
        req.add_header("Authorization", auth)
    context = None
    if parts.scheme == "https" and os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in (
        "1",
        "true",
    ):
        context = ssl._create_unverified_context()
    elif parts.scheme == "https" and os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        context = ssl.create_default_context(cafile=os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"])
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            status, body = resp.status, resp.read(65536)
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read(65536)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = mask_uri(str(getattr(e, "reason", e)))
        raise InputError(f"{shown}: the MLflow server does not answer ({reason}); {fix}") from None
    probe = mask_uri(base) + API_PROBE.split("?", 1)[0]
    if status >= 500:
        raise InputError(
            f"{shown}: the MLflow server answered {probe} with HTTP {status}; "
            f"check the server's log, or {fix}"
        )
    if status in (401, 403):
        raise InputError(
            f"{shown}: the MLflow server refused the credentials (HTTP {status}); set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
        )
    try:
        answer = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        answer = None
    if not isinstance(answer, dict) or (status != 200 and "error_code" not in answer):
        raise InputError(
            f"{shown}: the server there is not an MLflow tracking server ({probe} answered "
            f"HTTP {status}{'' if isinstance(answer, dict) else ', not JSON'}); fix the address "
            f"(the URI is the server's root, e.g. http://127.0.0.1:5000), or {fix}"
        )
