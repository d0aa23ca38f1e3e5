"""Where the command line's output goes.

- stdout: progress lines (shrinkflow's own log, warnings) and the results.
- stderr: nothing but the one line that says why the command failed.
- a log file (`outputs/logs/`, or the system's temp directory when that is not writable): everything,
  including Prefect's and MLflow's logs and tracebacks, so that a failure can be looked into.

With --verbose nothing is redirected: every library logs to stderr as it would on its own.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from tasks.config import PROJECT_ROOT

KEEP_LOGS = 50


def _log_dir() -> Path:
    for candidate in (PROJECT_ROOT / "outputs" / "logs", Path(tempfile.gettempdir()) / "shrinkflow-logs"):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            if os.access(candidate, os.W_OK):
                return candidate
        except OSError:
            continue
    return Path(tempfile.mkdtemp(prefix="shrinkflow-logs-"))


def new_log_file() -> Path:
    directory = _log_dir()
    for old in sorted(directory.glob("shrinkflow-*.log"))[:-KEEP_LOGS]:
        old.unlink(missing_ok=True)
    return directory / f"shrinkflow-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def _handler(stream, level: int, fmt: str) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
    return handler


@contextmanager
def routed_logging(log_stream, verbose: bool):
    """Route every logger for the block: shrinkflow's progress to stdout, warnings to stdout, all of it to
    the log file; the loggers are as they were afterwards.

    Prefect and MLflow install their own stderr handlers when imported, so they are imported first and
    their handlers replaced."""
    import mlflow  # noqa: F401 - configures the "mlflow" logger
    import prefect  # noqa: F401 - configures the root and "prefect" loggers

    to_file = _handler(log_stream, logging.DEBUG, "%(asctime)s %(levelname)s %(name)s: %(message)s")
    progress = _handler(sys.stdout, logging.INFO, "%(asctime)s %(message)s")
    warnings_out = _handler(sys.stdout, logging.WARNING, "%(asctime)s warning: %(message)s")
    root = logging.getLogger()
    routes = {"shrinkflow": [to_file, progress], "py.warnings": [to_file, warnings_out],
              "mlflow": [to_file, warnings_out]}
    if not verbose:
        routes.update({"": [to_file], "uvicorn": [to_file], "fastapi": [to_file], "prefect._internal": [to_file]})
    else:
        routes[""] = [*root.handlers, to_file]
    loggers = {name: logging.getLogger(name) for name in routes}
    saved = {name: (lg.handlers, lg.propagate, lg.level) for name, lg in loggers.items()}
    for name, handlers in routes.items():
        loggers[name].handlers = handlers
        if name in ("shrinkflow", "py.warnings", "mlflow"):
            loggers[name].propagate = False
    loggers["shrinkflow"].setLevel(logging.INFO)
    loggers["mlflow"].setLevel(logging.WARNING)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for name, (handlers, propagate, level) in saved.items():
            loggers[name].handlers, loggers[name].propagate = handlers, propagate
            loggers[name].setLevel(level)


@contextmanager
def redirected_stderr(log_stream, verbose: bool):
    """Point file descriptor 2 and sys.stderr at the log file for the block; yields the real stderr.

    At the descriptor level too, because C extensions and subprocesses (Prefect's temporary server) write
    to descriptor 2 directly."""
    real = sys.stderr
    if verbose:
        yield real
        return
    real.flush()
    saved_fd = os.dup(2)
    # sys.stderr usually writes to descriptor 2, which now leads to the log: the error line needs its own
    # writer on the saved descriptor (unless sys.stderr is something else, such as a test's capture).
    writer = os.fdopen(os.dup(saved_fd), "w", buffering=1) if _writes_to_fd2(real) else real
    os.dup2(log_stream.fileno(), 2)
    sys.stderr = log_stream
    try:
        yield writer
    finally:
        sys.stderr = real
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        if writer is not real:
            writer.close()


def _writes_to_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False
