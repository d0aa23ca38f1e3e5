"""register: the best candidate within the accuracy budget goes to the MLflow Model Registry.

Alias `champion` when a candidate meets the budget and passes the quality gates (`register.gates`, read from
the fidelity report), `challenger` otherwise (compression/selection.py); why a candidate is not champion is
logged in one line, and every gate's verdict kept as `gate.<name>` tags of the register run and the model
version. The model is tasks/serving.py's pyfunc, logged as code, serving on
onnxruntime when the candidate has a usable ONNX file and register.runtime allows it, else on torch; the
version's `shrinkflow.runtime` tag says which. The version is loaded back through MLflow and must reproduce
the accuracy measured for that runtime before any alias points at it; a version that fails that check is
deleted.

One model file on one runtime is one version, also when several pipelines register it at the same moment:
a version is created with the file's sha256 and the runtime as tags, and of all versions with those tags
the lowest number is the one every pipeline keeps (version numbers follow creation order, so a pipeline
that created a later one always sees the earlier one and deletes its own).
"""

from __future__ import annotations

import logging
from itertools import chain
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, DataType, Map, Schema

import compression
from compression.accuracy import ratio
from compression.checkpoint import read_model_file
from compression.comparison import reference_row
from compression.data import to_model_input
from compression.gates import check_gates, describe, gate_tags
from compression.selection import choose, gate_log
from tasks.config import PipelineConfig
from tasks.data import dataset_labels, get_bundle
from tasks.fetch import SHA_TAG
from tasks.mlflow_store import insert_safely, load_pyfunc
from tasks.stage import stage_task
from tasks.tracking import RunContext

log = logging.getLogger("shrinkflow")

CHECKED_TAG = "shrinkflow.reload_checked"
RUNTIME_TAG = "shrinkflow.runtime"
SERVING_CODE = Path(__file__).with_name("serving.py")
# Requests are uint8 0-255 or float 0-1 images of any batch size, checked by the model itself (one-line
# 400s), so the signature declares the response only.
SIGNATURE = ModelSignature(inputs=None, outputs=Schema([
    ColSpec(DataType.long, "label"), ColSpec(DataType.string, "name"), ColSpec(DataType.double, "probability"),
    ColSpec(Map(DataType.double), "probabilities")]))


def served_runtime(settings, row: dict) -> str:
    return "onnxruntime" if settings.runtime == "onnxruntime" and row.get("onnx_path") else "torch"


def served_accuracy(row: dict, runtime: str) -> float:
    return row["onnx_accuracy"] if runtime == "onnxruntime" else row["accuracy"]


def _versions_of(client, name: str, sha: str, runtime: str) -> list:
    if not client.search_registered_models(f"name='{name}'"):
        return []
    found = [v for v in client.search_model_versions(f"name='{name}'")
             if v.tags.get(SHA_TAG) == sha and v.tags.get(RUNTIME_TAG, "torch") == runtime]
    return sorted(found, key=lambda v: int(v.version))


def _test_batches(cfg: PipelineConfig, data: dict, channels: int):
    """The test split as a client sends it, 512 images at a time: uint8 pixels (read with the evaluation
    transform), with the dataset's own labels."""
    bundle = get_bundle(cfg, data)
    ids = np.asarray(dataset_labels(cfg, bundle.classes))
    for images, labels in bundle.pixel_batches("test", 512):
        images = (to_model_input(images, channels=channels) * 255).round().to(torch.uint8)
        yield images.numpy(), ids[labels.numpy()]


def _reloaded_accuracy(uri: str, batches) -> float:
    loaded = load_pyfunc(uri)
    correct = seen = 0
    for images, labels in batches:
        correct += int((loaded.predict(images)["label"].to_numpy() == labels).sum())
        seen += len(labels)
    return ratio(correct, seen)


def pyfunc_arguments(checkpoint: str, onnx: str | None, runtime: str, labels: list[int], threads: int,
                     example: np.ndarray) -> dict:
    """What mlflow.pyfunc.log_model (or save_model) takes for the serving model of a model file."""
    return dict(python_model=str(SERVING_CODE),
                artifacts={"checkpoint": checkpoint, **({"onnx": onnx} if onnx else {})},
                model_config={"runtime": runtime, "labels": labels, "threads": threads},
                code_paths=[str(Path(compression.__file__).parent)], signature=SIGNATURE, input_example=example,
                pip_requirements=["torch", "torchvision", "numpy", "pandas"] + (["onnxruntime"] if onnx else []))


def _create_version(cfg: PipelineConfig, ctx: RunContext, run, row: dict, runtime: str, example: np.ndarray,
                    classes: list[int]):
    """Log the pyfunc model as a model of the pipeline run (the MLflow UI lists it there) and create a
    version tagged with the file's sha256 and the runtime."""
    arguments = pyfunc_arguments(row["path"], row["onnx_path"] if runtime == "onnxruntime" else None, runtime,
                                 dataset_labels(cfg, classes), cfg.evaluate.threads, example)
    logged = run.client.create_logged_model(ctx.experiment_id, name="model", source_run_id=ctx.parent_run_id,
                                            tags={"shrinkflow.register_run_id": run.run_id})
    # No active run is used: the model id names the run it belongs to.
    info = mlflow.pyfunc.log_model(name="model", model_id=logged.model_id, **arguments)
    run.set_tags({"model_id": logged.model_id})
    # The identity tags are set in the same call that creates the version, so no other pipeline can see
    # the version without them (see the module docstring).
    return mlflow.register_model(info.model_uri, cfg.register.model_name,
                                 tags={SHA_TAG: row["sha256"], RUNTIME_TAG: runtime})


def _check_reload(client, name: str, version, expected: float, batches, run) -> None:
    """The version must reproduce the measured accuracy through MLflow; else it is deleted."""
    try:
        accuracy = _reloaded_accuracy(f"models:/{name}/{version.version}", batches)
    except Exception:
        client.delete_model_version(name, version.version)
        raise
    run.log_metrics({"reloaded_accuracy": accuracy, "evaluated_accuracy": expected})
    if abs(accuracy - expected) > 1e-6:
        client.delete_model_version(name, version.version)
        raise RuntimeError(f"registered model reloads at accuracy {accuracy:.4f}, evaluated "
                           f"{expected:.4f}; version {version.version} deleted")


def _lineage(cfg: PipelineConfig, ctx: RunContext, data: dict, row: dict, spec: dict, runtime: str) -> dict:
    onnx = ({"float": ["onnx"], "int8-qdq": ["onnx-int8"]}[row.get("onnx_format", "float")]
            if runtime == "onnxruntime" else [])
    return {
        SHA_TAG: row["sha256"], RUNTIME_TAG: runtime, "candidate": row["candidate"],
        "accuracy": f"{row['accuracy']:.6f}", "served_accuracy": f"{served_accuracy(row, runtime):.6f}",
        "parent_run_id": ctx.parent_run_id, "stage_run_id": row["stage_run_id"], "source": cfg.source,
        "dataset_digest_test": data["digests"]["test"], "dataset_digest_train": data["digests"]["train"],
        "config_hash": cfg.config_hash(), "formats": ",".join(["shrinkflow-pt", "mlflow-pyfunc"] + onnx),
        "quantization": (spec.get("quantization") or {}).get("mode", "none"), CHECKED_TAG: "true",
    }


def _the_version(cfg: PipelineConfig, ctx: RunContext, run, data: dict, row: dict, extra_tags: dict):
    """The registry version of the chosen file on its runtime: the one that exists, or a new one, checked once."""
    client, name = run.client, cfg.register.model_name
    runtime = served_runtime(cfg.register, row)
    # log_model, register_model and the reload check's load_model take the store from MLflow's
    # process-global setting only (no tracking_uri argument); registration runs one task at a time.
    mlflow.set_tracking_uri(ctx.tracking_uri)
    existing = _versions_of(client, name, row["sha256"], runtime)
    if existing and existing[0].tags.get(CHECKED_TAG) == "true":
        for key, value in extra_tags.items():  # e.g. the search that picked this file again
            insert_safely(ctx.tracking_uri, client.set_model_version_tag, name, existing[0].version, key, value)
        return existing[0]
    payload = read_model_file(row["path"])
    spec = payload["spec"]
    batches = _test_batches(cfg, data, spec["in_channels"])
    first = next(batches)
    if not existing:
        created = _create_version(cfg, ctx, run, row, runtime, first[0][:1], payload["meta"].get("classes", []))
        existing = _versions_of(client, name, row["sha256"], runtime)
        for later in (v for v in existing[1:] if v.version == created.version):
            client.delete_model_version(name, later.version)  # an earlier version of this file won
    version = existing[0]
    _check_reload(client, name, version, served_accuracy(row, runtime), chain([first], batches), run)
    for key, value in {**_lineage(cfg, ctx, data, row, spec, runtime), **extra_tags}.items():
        # Pipelines that registered the same file at once all tag the version they keep.
        insert_safely(ctx.tracking_uri, client.set_model_version_tag, name, version.version, key, value)
    return version


def _decide(settings, rows: list[dict], choice: dict | None) -> tuple[dict, str, list[str]]:
    """(row, alias, what the log says about the gates). A given `choice` (a search's pick) that fails a gate
    is registered challenger."""
    gates = settings.gates.limits()
    if not choice:
        row, alias = choose(rows, settings.max_accuracy_drop, settings.objective, gates=gates)
        return row, alias, gate_log(rows, row, alias, settings.max_accuracy_drop, settings.objective, gates)
    row = next(r for r in rows if r["candidate"] == choice["candidate"])
    failed = [describe(r) for r in check_gates(row, gates) if not r["passed"]] if row is not reference_row(rows) else []
    if failed:
        fallback = choice.get("challenger_alias", "challenger")
        return row, fallback, [f"{row['candidate']} is not @{choice['alias']}: gate " + "; gate ".join(failed)]
    return row, choice["alias"], []


def _gate_record(settings, rows: list[dict], row: dict) -> tuple[dict, dict]:
    """(tags, metrics) of the gates for the register run and the model version: `gate.<name>` per gate."""
    gates = settings.gates.limits()
    if not gates or row is reference_row(rows):
        return {}, {}
    results = check_gates(row, gates)
    metrics = {}
    for result in results:
        metrics[f"gate.{result['gate']}.passed"] = int(result["passed"])
        metrics[f"gate.{result['gate']}.limit"] = result["limit"]
        if result["value"] is not None:
            metrics[f"gate.{result['gate']}.value"] = result["value"]
    return gate_tags(results), metrics


def _register_one(cfg: PipelineConfig, ctx: RunContext, run, data: dict, rows: list[dict], choice: dict | None,
                  several: bool) -> dict:
    """One registration: the row chosen, its version (found or made and checked), its alias. With `several`
    (a search's targets), the register run's tags and metrics carry the alias, so that each keeps its own."""
    settings = cfg.register
    row, alias, decision = _decide(settings, rows, choice)
    for line in decision:
        log.log(logging.INFO if alias == (choice or {}).get("alias", "champion") else logging.WARNING,
                "[register] %s", line)
    tags, metrics = _gate_record(settings, rows, row)
    suffix = f".{alias}" if several else ""
    run.set_tags({f"chosen{suffix}": row["candidate"], f"alias{suffix}": alias,
                  RUNTIME_TAG + suffix: served_runtime(settings, row),
                  **{k + suffix: v for k, v in tags.items()},
                  **({f"decision{suffix}": " | ".join(decision)[:5000]} if decision else {})})
    version = _the_version(cfg, ctx, run, data, row, {**(choice or {}).get("tags", {}), **tags})
    run.client.set_registered_model_alias(settings.model_name, alias, version.version)
    run.log_metrics({f"registered_version{suffix}": int(version.version),
                     **{k + suffix: v for k, v in metrics.items()}})
    return {"model_name": settings.model_name, "version": version.version, "alias": alias,
            "candidate": row["candidate"], "accuracy": row["accuracy"], "runtime": served_runtime(settings, row),
            "uri": f"models:/{settings.model_name}@{alias}", "decision": decision}


@stage_task("register", sections=("register", "source", "evaluate"), cache=False)
def register(cfg: PipelineConfig, ctx: RunContext, run, workdir, data: dict, rows: list[dict],
             choice: dict | list[dict] | None = None) -> dict:
    """`choice` ({"candidate", "alias", "tags"}) names what to register, e.g. a search's pick; without it
    the register policy chooses (compression/selection.py). Either way the gates decide whether it may have
    its alias (else `challenger_alias`, by default challenger). A list (a search's one pick per budget target)
    registers each: the first's record, and all of them under "registrations"."""
    if not isinstance(choice, list):
        return _register_one(cfg, ctx, run, data, rows, choice, several=False)
    done = [_register_one(cfg, ctx, run, data, rows, one, several=True) for one in choice]
    return {**done[0], "registrations": done}
