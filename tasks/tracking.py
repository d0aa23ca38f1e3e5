"""MLflow tracking by explicit run id: the run lifecycle.

MLflow's active run is thread-local and Prefect may run tasks in other threads, so nothing here relies on
it: runs are created and ended with MlflowClient, and every task receives a `RunContext` naming the parent.
Runs that raise end FAILED, never RUNNING (a search trial its pruner stopped: KILLED, see PRUNED_TAGS).
This module owns `RunContext`, `StageRun` (parameters, metrics, asynchronous per-epoch metrics, tags,
artifacts, figures), `stage_run`, `pipeline_run`, `run_finished`, `log_figure`, and the host/pid tags a
run carries so that `fail_orphaned_runs` can end the runs a killed process left RUNNING. The tracking URI's
policy is tasks/tracking_uri.py, the store (client, lock, experiments, pyfunc loading)
tasks/mlflow_store.py, a pipeline run's provenance tasks/provenance.py.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from compression.errors import TrialPruned
from tasks.mlflow_store import get_experiment_id, make_client
from tasks.provenance import package_versions


@dataclass(frozen=True)
class RunContext:
    """Where a task logs: the tracking URI, the experiment and the pipeline's parent run."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str

    def client(self) -> MlflowClient:
        return make_client(self.tracking_uri)


def run_finished(client: MlflowClient, run_id: str) -> bool:
    """Whether `run_id` is a FINISHED run of the client's store (a cache hit may only point there)."""
    try:
        return client.get_run(run_id).info.status == "FINISHED"
    except MlflowException:
        return False


def flatten(prefix: str, value) -> dict[str, str]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: json.dumps(value) if isinstance(value, (list, tuple)) else str(value)}


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


# MLflow has no PRUNED status. A run a search's pruner stopped ends KILLED (stopped before its end, as by a
# user), not FAILED (nothing went wrong) nor FINISHED (its metrics stop part-way and its stage wrote no
# model, and a FINISHED run is what a cache record may point at), with this tag saying why.
PRUNED_TAGS = {"search.state": "PRUNED"}


@contextmanager
def _terminating(handle: StageRun):
    client, run_id = handle.client, handle.run_id
    try:
        yield handle
        handle.flush()
    except TrialPruned as stop:
        handle.flush()
        handle.set_tags({**PRUNED_TAGS, "search.pruned_at_epoch": stop.step,
                         "search.pruned_val_accuracy": f"{stop.value:.4f}"})
        client.set_terminated(run_id, "KILLED")
        raise
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
    """A FINISHED child run if the block completes, FAILED if it raises (the exception propagates), KILLED
    if a search's pruner stopped it."""
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
