"""Tracking-URI policy: the default tracking URI, redaction of a URI's password, one name per tracking
store (`store_id`), and the pre-flight check that MLflow has a store for a URI's scheme and that a tracking
server answers.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tasks.config import PROJECT_ROOT, ConfigError


def redact(uri: str) -> str:
    """The URI without a password (user:secret@host -> user:***@host)."""
    parts = urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def store_id(uri: str) -> str:
    """One name per tracking store: a sqlite file by its absolute path, a server by its redacted URI."""
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return redact(uri).rstrip("/")


# Tracking URI schemes MLflow has stores for (a "+driver" suffix is SQLAlchemy's, e.g. postgresql+psycopg2).
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks")


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, on a tracking URI MLflow has no store for, and (instead of MLflow's minutes
    of retries) on a tracking server that does not answer."""
    scheme = urlsplit(uri).scheme.split("+")[0]
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError(f"tracking URI {redact(uri)}: unknown scheme {scheme or '(none)'!r}; use one of "
                          f"{', '.join(TRACKING_SCHEMES)}")
    if scheme not in ("http", "https"):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout).raise_for_status()
    except requests.RequestException as exc:
        raise ConnectionError(f"MLflow tracking server {redact(uri)} is unreachable ({type(exc).__name__})") from None
