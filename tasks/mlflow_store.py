"""The MLflow store: the cross-process lock around first use of a sqlite store, the client factory
(`make_client`), writes that may collide between pipelines (`insert_safely`), finding or creating an
experiment (tagged as a model-training one), and loading a pyfunc model (`load_pyfunc`).
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient


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
