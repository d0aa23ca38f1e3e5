"""MLflow tracking by explicit run id.

MLflow's active run is thread-local and Prefect may run tasks in other threads, so nothing here relies on
it: runs are created and ended with MlflowClient, and every task receives a `RunContext` naming the parent.
Runs that raise end FAILED, never RUNNING.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tasks.config import PROJECT_ROOT, ConfigError, PipelineConfig

PACKAGES = ("torch", "torchvision", "torch-pruning", "prefect", "mlflow", "pandas", "numpy", "pydantic")


@dataclass(frozen=True)
class RunContext:
    """Where a task logs: the tracking URI, the experiment and the pipeline's parent run."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str

    def client(self) -> MlflowClient:
        return make_client(self.tracking_uri)


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


def run_finished(client: MlflowClient, run_id: str) -> bool:
    """Whether `run_id` is a FINISHED run of the client's store (a cache hit may only point there)."""
    try:
        return client.get_run(run_id).info.status == "FINISHED"
    except MlflowException:
        return False


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


@contextmanager
def _store_lock(tracking_uri: str):
    """Serialise first use of a sqlite store across processes: MLflow migrates a new database on first
    contact, and several pipelines doing that at once corrupt the migration."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def make_client(tracking_uri: str) -> MlflowClient:
    """An MlflowClient; its constructor (and the registry store's first use) migrates a new database."""
    with _store_lock(tracking_uri):
        client = MlflowClient(tracking_uri)
        client.search_registered_models(max_results=1)
    return client


def load_pyfunc(model_uri: str):
    """mlflow.pyfunc.load_model from a temporary copy, removed once loaded. Without `dst_path` MLflow leaves
    each model it downloads from a server in the system's temp directory (a registered ResNet-18 teacher is 45
    MB a load). A shrinkflow model reads all of its files while it loads (tasks/serving.py), so the copy is not
    needed afterwards."""
    import mlflow.pyfunc

    with tempfile.TemporaryDirectory(prefix="shrinkflow-model-") as tmp:
        return mlflow.pyfunc.load_model(model_uri, dst_path=tmp)


def insert_safely(tracking_uri: str, call, *args) -> None:
    """An MLflow write that checks, then inserts (dataset inputs, model version tags): pipelines writing the
    same row at once collide on its unique key; the row then exists, and a retry updates or links it."""
    for attempt in range(3):
        try:
            with _store_lock(tracking_uri):
                call(*args)
            return
        except MlflowException as exc:
            if attempt == 2 or not any(m in str(exc) for m in ("UNIQUE constraint", "duplicate key", "ALREADY_EXISTS")):
                raise


EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def get_experiment_id(client: MlflowClient, name: str, tracking_uri: str) -> str:
    experiment_id = _find_or_create_experiment(client, name, tracking_uri)
    _mark_model_training(client, experiment_id, tracking_uri)
    return experiment_id


def _mark_model_training(client: MlflowClient, experiment_id: str, tracking_uri: str) -> None:
    """Without the tag, MLflow 3's UI guesses the experiment's kind and may open it as a GenAI one. Several
    pipelines starting at once may all try to set it: the first one does, the others find it set."""
    key, kind = EXPERIMENT_KIND
    with _store_lock(tracking_uri):
        if client.get_experiment(experiment_id).tags.get(key) == kind:
            return
        try:
            client.set_experiment_tag(experiment_id, key, kind)
        except MlflowException:
            if client.get_experiment(experiment_id).tags.get(key) != kind:
                raise


def _find_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    with _store_lock(tracking_uri):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
    artifact_location = None
    if tracking_uri.startswith("sqlite:") or tracking_uri.startswith("file:"):
        # Client-side stores put artifacts under ./mlruns of whatever the cwd is; pin it beside the database.
        db_path = Path(tracking_uri.removeprefix("sqlite:///").removeprefix("file://"))
        artifact_location = (db_path.parent / "mlruns").resolve().as_uri()
    with _store_lock(tracking_uri):
        experiment = client.get_experiment_by_name(name)  # another process may have made it meanwhile
        if experiment is not None:
            return experiment.experiment_id
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as exc:
            # A server store has no lock here: pipelines on several processes or hosts may all try to create
            # it, and all but one are told it exists.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return client.get_experiment_by_name(name).experiment_id


def flatten(prefix: str, value) -> dict[str, str]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: json.dumps(value) if isinstance(value, (list, tuple)) else str(value)}


def git_state() -> dict[str, str]:
    def git(*args):
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"git_commit": "unknown", "git_dirty": "unknown"}
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"git_commit": head.stdout.strip(), "git_dirty": str(dirty).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def prefect_context() -> dict[str, str]:
    from prefect.runtime import deployment, flow_run

    return {"prefect_flow_run_id": str(flow_run.id or ""), "prefect_deployment": str(deployment.name or "")}


class StageRun:
    """A child run of the pipeline run; the handle a task logs through."""

    def __init__(self, client: MlflowClient, run_id: str, stage: str) -> None:
        self.client = client
        self.run_id = run_id
        self.stage = stage
        self._pending = []  # asynchronous log operations not yet confirmed

    def flush(self) -> None:
        """Wait for every asynchronous log call; raises if one failed."""
        pending, self._pending = self._pending, []
        for operation in pending:
            operation.wait()

    def log_params(self, params: dict) -> None:
        flat = [Param(k, v[:6000]) for k, v in flatten("", params).items()]
        for i in range(0, len(flat), 100):
            self.client.log_batch(self.run_id, params=flat[i:i + 100])

    def log_metrics(self, metrics: dict, step: int = 0, prefix: str = "", wait: bool = True) -> None:
        """One log_batch per 500 metrics. wait=False queues it on MLflow's logging thread (see flush)."""
        now = int(time.time() * 1000)
        batch = [Metric(prefix + k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(batch), 500):
            operation = self.client.log_batch(self.run_id, metrics=batch[i:i + 500], synchronous=wait)
            if not wait:
                self._pending.append(operation)

    def epoch_logger(self, prefix: str = ""):
        """`on_epoch_end` callback: one log_batch per epoch, with the epoch as step. Asynchronous, so that
        training never waits for the tracking server (a round trip costs up to ~0.1 s; see
        docs/benchmarks.md); the stage's run waits for all of them before it ends."""

        def on_epoch_end(row: dict) -> None:
            self.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"], prefix=prefix,
                             wait=False)

        return on_epoch_end

    def set_tags(self, tags: dict) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        self.client.log_dict(self.run_id, data, name)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def log_figure(self, figure, name: str) -> None:
        log_figure(figure, name, [self])


def log_figure(figure, name: str, runs: list[StageRun]) -> None:
    """The figure rendered once (the costly part) and logged as `name` to every run of `runs`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(name).name
        figure.savefig(path, dpi=110, bbox_inches="tight")
        for run in runs:
            run.log_artifact(path, str(Path(name).parent) if Path(name).parent != Path(".") else None)


def _process_tags() -> dict[str, str]:
    return {"shrinkflow.host": socket.gethostname(), "shrinkflow.pid": str(os.getpid())}


def _alive(pid: int) -> bool:
    """Whether process `pid` runs; a zombie (killed, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def fail_orphaned_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """End FAILED the RUNNING runs that a process on this host left behind when it was killed (SIGKILL
    leaves MLflow runs RUNNING forever); returns their ids."""
    host = socket.gethostname()
    orphans = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        pid = tags.get("shrinkflow.pid")
        if tags.get("shrinkflow.host") == host and pid and pid.isdigit() and not _alive(int(pid)):
            client.set_tag(run.info.run_id, "shrinkflow.orphaned", "true")
            client.set_terminated(run.info.run_id, "FAILED")
            orphans.append(run.info.run_id)
    return orphans


@contextmanager
def _terminating(handle: StageRun):
    client, run_id = handle.client, handle.run_id
    try:
        yield handle
        handle.flush()
    except BaseException:
        try:
            handle.flush()
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


@contextmanager
def stage_run(ctx: RunContext, stage: str):
    """A FINISHED child run if the block completes, FAILED if it raises (the exception propagates)."""
    client = ctx.client()
    run = client.create_run(ctx.experiment_id, run_name=stage, tags={
        "mlflow.parentRunId": ctx.parent_run_id, "shrinkflow.stage": stage, **_process_tags()})
    with _terminating(StageRun(client, run.info.run_id, stage)) as handle:
        yield handle


@contextmanager
def pipeline_run(tracking_uri: str, experiment: str, run_name: str, config: dict, tags: dict):
    """The parent run of one pipeline execution, carrying its config, environment and provenance."""
    client = make_client(tracking_uri)
    experiment_id = get_experiment_id(client, experiment, tracking_uri)
    orphans = fail_orphaned_runs(client, experiment_id)
    run = client.create_run(experiment_id, run_name=run_name,
                            tags={"shrinkflow.kind": "pipeline", **tags, **_process_tags()})
    ctx = RunContext(tracking_uri, experiment_id, run.info.run_id)
    with _terminating(StageRun(client, run.info.run_id, "pipeline")) as handle:
        if orphans:
            handle.set_tags({"shrinkflow.orphans_failed": ",".join(orphans)})
        handle.log_params(config)
        handle.log_dict(config, "config.yaml")
        versions = package_versions()
        handle.set_tags({f"version.{k}": v for k, v in versions.items()})
        handle.log_dict(versions, "environment.json")
        yield ctx, handle


def provenance(cfg: PipelineConfig, flow_name: str, tracking_uri: str) -> dict[str, str]:
    """Tags of a pipeline run: what ran, from which code, in which Prefect run; MLflow's own source tags too,
    so that the UI shows them."""
    git = git_state()
    tags = {"shrinkflow.flow": flow_name, "shrinkflow.config_hash": cfg.config_hash(), "seed": str(cfg.seed),
            "source": cfg.source, "tracking_uri": redact(tracking_uri), **git, **prefect_context(),
            "mlflow.source.name": f"flows/{flow_name}.py", "mlflow.source.type": "JOB"}
    if git["git_commit"] != "unknown":
        tags["mlflow.source.git.commit"] = git["git_commit"]
    return tags


def logged_config(cfg: PipelineConfig) -> dict:
    config = cfg.model_dump(mode="json")
    if config["tracking"]["uri"]:
        config["tracking"]["uri"] = redact(config["tracking"]["uri"])
    return config
