"""register: the best candidate within the accuracy budget goes to the MLflow Model Registry.

Alias `champion` when a candidate meets the budget, `challenger` (the most accurate compressed one)
otherwise (compression/selection.py). The version is loaded back through MLflow and must reproduce the
evaluated test accuracy before any alias points at it; a version that fails that check is deleted.

One model file is one version, also when several pipelines register it at the same moment: a version is
created with the file's sha256 as a tag, and of all versions with that sha256 the lowest number is the one
every pipeline keeps (version numbers follow creation order, so a pipeline that created a later one always
sees the earlier one and deletes its own).
"""

from __future__ import annotations

import mlflow
import mlflow.pyfunc
import numpy as np

from compression.checkpoint import read_model_file
from compression.data import to_model_input
from compression.selection import choose
from tasks.config import PipelineConfig
from tasks.data import get_bundle
from tasks.fetch import SHA_TAG
from tasks.serving import ShrinkflowClassifier
from tasks.stage import stage_task
from tasks.tracking import RunContext

CHECKED_TAG = "shrinkflow.reload_checked"


def _versions_of(client, name: str, sha: str) -> list:
    if not client.search_registered_models(f"name='{name}'"):
        return []
    found = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get(SHA_TAG) == sha]
    return sorted(found, key=lambda v: int(v.version))


def _test_images(cfg: PipelineConfig, data: dict, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The test split as a client sends it to the registered model: [0, 1] floats (it normalises itself)."""
    bundle = get_bundle(cfg, data)
    return to_model_input(bundle.test.images, channels=channels).numpy(), bundle.test.labels.numpy()


def _reloaded_accuracy(uri: str, images: np.ndarray, labels: np.ndarray) -> float:
    loaded = mlflow.pyfunc.load_model(uri)
    predictions = np.concatenate([loaded.predict(images[i:i + 512]) for i in range(0, len(images), 512)])
    return float((predictions == labels).mean())


def _create_version(ctx: RunContext, run, settings, row: dict, example: np.ndarray):
    """Log the pyfunc model as a model of the pipeline run (the MLflow UI lists it there) and create a
    version tagged with the file's sha256."""
    artifacts = {"checkpoint": row["path"]}
    if row.get("onnx_path"):
        artifacts["onnx"] = row["onnx_path"]
    logged = run.client.create_logged_model(ctx.experiment_id, name="model", source_run_id=ctx.parent_run_id,
                                            tags={"shrinkflow.register_run_id": run.run_id})
    # No active run is used: the model id names the run it belongs to.
    info = mlflow.pyfunc.log_model(name="model", python_model=ShrinkflowClassifier(), artifacts=artifacts,
                                   input_example=example, pip_requirements=["torch", "torchvision", "numpy"],
                                   model_id=logged.model_id)
    run.set_tags({"model_id": logged.model_id})
    # The sha256 tag is set in the same call that creates the version, so no other pipeline can see the
    # version without it (see the module docstring).
    return mlflow.register_model(info.model_uri, settings.model_name, tags={SHA_TAG: row["sha256"]})


def _check_reload(client, name: str, version, row: dict, images, labels, run) -> None:
    """The version must reproduce the evaluated accuracy through MLflow; else it is deleted."""
    try:
        accuracy = _reloaded_accuracy(f"models:/{name}/{version.version}", images, labels)
    except Exception:
        client.delete_model_version(name, version.version)
        raise
    run.log_metrics({"reloaded_accuracy": accuracy, "evaluated_accuracy": row["accuracy"]})
    if abs(accuracy - row["accuracy"]) > 1e-6:
        client.delete_model_version(name, version.version)
        raise RuntimeError(f"registered model reloads at accuracy {accuracy:.4f}, evaluated "
                           f"{row['accuracy']:.4f}; version {version.version} deleted")


def _lineage(cfg: PipelineConfig, ctx: RunContext, data: dict, row: dict, spec: dict, onnx: bool) -> dict:
    formats = ["shrinkflow-pt", "mlflow-pyfunc"] + (["onnx"] if onnx else [])
    return {
        SHA_TAG: row["sha256"], "candidate": row["candidate"], "accuracy": f"{row['accuracy']:.6f}",
        "parent_run_id": ctx.parent_run_id, "stage_run_id": row["stage_run_id"], "source": cfg.source,
        "dataset_digest_test": data["digests"]["test"], "dataset_digest_train": data["digests"]["train"],
        "config_hash": cfg.config_hash(), "formats": ",".join(formats),
        "quantization": (spec.get("quantization") or {}).get("mode", "none"), CHECKED_TAG: "true",
    }


def _the_version(cfg: PipelineConfig, ctx: RunContext, run, data: dict, row: dict, extra_tags: dict):
    """The registry version of the chosen file: the one that exists, or a new one, checked once."""
    client, name = run.client, cfg.register.model_name
    # log_model, register_model and the reload check's load_model take the store from MLflow's
    # process-global setting only (no tracking_uri argument); registration runs one task at a time.
    mlflow.set_tracking_uri(ctx.tracking_uri)
    existing = _versions_of(client, name, row["sha256"])
    if existing and existing[0].tags.get(CHECKED_TAG) == "true":
        for key, value in extra_tags.items():  # e.g. the search that picked this file again
            client.set_model_version_tag(name, existing[0].version, key, value)
        return existing[0]
    spec = read_model_file(row["path"])["spec"]
    images, labels = _test_images(cfg, data, spec["in_channels"])
    if not existing:
        created = _create_version(ctx, run, cfg.register, row, images[:2])
        existing = _versions_of(client, name, row["sha256"])
        for later in (v for v in existing[1:] if v.version == created.version):
            client.delete_model_version(name, later.version)  # an earlier version of this file won
    version = existing[0]
    _check_reload(client, name, version, row, images, labels, run)
    for key, value in {**_lineage(cfg, ctx, data, row, spec, bool(row.get("onnx_path"))), **extra_tags}.items():
        client.set_model_version_tag(name, version.version, key, value)
    return version


@stage_task("register", sections=("register", "source"), cache=False)
def register(cfg: PipelineConfig, ctx: RunContext, run, workdir, data: dict, rows: list[dict],
             choice: dict | None = None) -> dict:
    """`choice` ({"candidate", "alias", "tags"}) names what to register, e.g. a search's pick; without it
    the register policy chooses (compression/selection.py)."""
    settings = cfg.register
    if choice:
        row, alias = next(r for r in rows if r["candidate"] == choice["candidate"]), choice["alias"]
    else:
        row, alias = choose(rows, settings.max_accuracy_drop, settings.objective)
    run.set_tags({"chosen": row["candidate"], "alias": alias})
    version = _the_version(cfg, ctx, run, data, row, (choice or {}).get("tags", {}))
    run.client.set_registered_model_alias(settings.model_name, alias, version.version)
    run.log_metrics({"registered_version": int(version.version)})
    return {"model_name": settings.model_name, "version": version.version, "alias": alias,
            "candidate": row["candidate"], "accuracy": row["accuracy"],
            "uri": f"models:/{settings.model_name}@{alias}"}
