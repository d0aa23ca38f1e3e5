"""register: the best candidate within the accuracy budget goes to the MLflow Model Registry.

Alias `champion` when a candidate meets the budget, `challenger` (the most accurate compressed one)
otherwise. The version is loaded back through MLflow and must reproduce the evaluated test accuracy
before any alias points at it; a version that fails that check is deleted.
"""

from __future__ import annotations

import mlflow
import mlflow.pyfunc
import numpy as np

from tasks.config import PipelineConfig
from tasks.data import get_bundle
from tasks.fetch import SHA_TAG
from tasks.serving import ShrinkflowClassifier
from tasks.stage import stage_task
from tasks.tracking import RunContext

OBJECTIVES = {"params": "params", "macs": "macs", "latency": "latency_p50_ms", "size": "size_bytes"}


def choose(rows: list[dict], max_drop: float, objective: str) -> tuple[dict, str]:
    """(row, alias): the cheapest candidate within the budget, else the most accurate compressed one."""
    by_name = {r["candidate"]: r for r in rows}
    reference = by_name.get("teacher", rows[0])
    within = [r for r in rows if r["accuracy"] >= reference["accuracy"] - max_drop - 1e-9]
    if within:
        return min(within, key=lambda r: (r[OBJECTIVES[objective]], -r["accuracy"])), "champion"
    compressed = [r for r in rows if r is not reference] or rows
    return max(compressed, key=lambda r: r["accuracy"]), "challenger"


def _existing_version(client, name: str, sha: str):
    for version in client.search_model_versions(f"name='{name}'"):
        if version.tags.get(SHA_TAG) == sha:
            return version
    return None


def _test_images(cfg: PipelineConfig, data: dict, channels: int) -> tuple[np.ndarray, np.ndarray]:
    bundle = get_bundle(cfg, data)
    images = bundle.test.images.float() / 255.0
    if images.shape[1] != channels:
        images = images.expand(-1, channels, -1, -1)
    return images.numpy(), bundle.test.labels.numpy()


def _reloaded_accuracy(uri: str, images: np.ndarray, labels: np.ndarray) -> float:
    loaded = mlflow.pyfunc.load_model(uri)
    predictions = np.concatenate([loaded.predict(images[i:i + 512]) for i in range(0, len(images), 512)])
    return float((predictions == labels).mean())


@stage_task("register", sections=("register",), cache=False)
def register(cfg: PipelineConfig, ctx: RunContext, run, workdir, data: dict, rows: list[dict]) -> dict:
    settings = cfg.register
    row, alias = choose(rows, settings.max_accuracy_drop, settings.objective)
    client = run.client
    run.set_tags({"chosen": row["candidate"], "alias": alias})
    version = _existing_version(client, settings.model_name, row["sha256"]) if client.search_registered_models(
        f"name='{settings.model_name}'") else None
    if version is None:
        from compression.checkpoint import read_model_file

        spec = read_model_file(row["path"])["spec"]
        channels = spec["in_channels"]
        artifacts = {"checkpoint": row["path"]}
        if row.get("onnx_path"):
            artifacts["onnx"] = row["onnx_path"]
        images, labels = _test_images(cfg, data, channels)
        mlflow.set_tracking_uri(ctx.tracking_uri)
        with mlflow.start_run(run_id=run.run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=ShrinkflowClassifier(), artifacts=artifacts,
                input_example=images[:2], registered_model_name=settings.model_name,
                pip_requirements=["torch", "torchvision", "numpy"], code_paths=None)
        version = client.get_model_version(settings.model_name, info.registered_model_version)
        try:
            reloaded_accuracy = _reloaded_accuracy(f"models:/{settings.model_name}/{version.version}", images, labels)
        except Exception:
            client.delete_model_version(settings.model_name, version.version)
            raise
        run.log_metrics({"reloaded_accuracy": reloaded_accuracy, "evaluated_accuracy": row["accuracy"]})
        if abs(reloaded_accuracy - row["accuracy"]) > 1e-6:
            client.delete_model_version(settings.model_name, version.version)
            raise RuntimeError(f"registered model reloads at accuracy {reloaded_accuracy:.4f}, evaluated "
                               f"{row['accuracy']:.4f}; version {version.version} deleted")
        formats = ["shrinkflow-pt", "mlflow-pyfunc"] + (["onnx"] if "onnx" in artifacts else [])
        lineage = {
            SHA_TAG: row["sha256"], "candidate": row["candidate"], "accuracy": f"{row['accuracy']:.6f}",
            "parent_run_id": ctx.parent_run_id, "stage_run_id": row["stage_run_id"], "source": cfg.source,
            "dataset_digest_test": data["digests"]["test"], "dataset_digest_train": data["digests"]["train"],
            "config_hash": cfg.config_hash(), "formats": ",".join(formats),
            "quantization": (spec.get("quantization") or {}).get("mode", "none"),
        }
        for key, value in lineage.items():
            client.set_model_version_tag(settings.model_name, version.version, key, value)
    client.set_registered_model_alias(settings.model_name, alias, version.version)
    run.log_metrics({"registered_version": int(version.version)})
    return {"model_name": settings.model_name, "version": version.version, "alias": alias,
            "candidate": row["candidate"], "accuracy": row["accuracy"],
            "uri": f"models:/{settings.model_name}@{alias}"}
