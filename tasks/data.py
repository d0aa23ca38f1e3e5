"""load_data: resolve the dataset once per process and record every split in MLflow with its digest."""

from __future__ import annotations

import json
import logging
import os
from functools import lru_cache
from pathlib import Path

import mlflow.data
from mlflow.data.dataset_source_registry import get_registered_sources, resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag

from compression.data import DataBundle, load_dataset
from compression.loader import default_workers
from tasks.config import DataConfig, PipelineConfig
from tasks.mlflow_store import insert_safely
from tasks.stage import stage_task

log = logging.getLogger("shrinkflow")


@lru_cache(maxsize=4)
def _cached_bundle(data_json: str, seed: int) -> DataBundle:
    settings = json.loads(data_json)
    settings.pop("eval_batch_size")
    settings["crop_scale"] = tuple(settings["crop_scale"])
    settings["loader_workers"] = usable_worker_count(settings["loader_workers"])
    return load_dataset(**settings, seed=seed)


def usable_worker_count(requested: int | None) -> int:
    """Loader workers: the config's count capped at the machine's cores (more only queue for the same cores),
    with a warning; None: one per core, at most 8."""
    cores = os.cpu_count() or 1
    if requested is None:
        return default_workers()
    if requested > cores:
        log.warning("[data] data.loader_workers %d is more than this machine's %d cores: using %d", requested,
                    cores, cores)
        return cores
    return requested


def get_bundle(cfg: PipelineConfig, expected: dict | None = None, fresh: bool = False) -> DataBundle:
    """The task's data, loaded once per process; with `expected` (load_data's result) it must be the data
    load_data recorded. `fresh`: read the data again (load_data does, at the start of every pipeline: files
    of a folder may have changed since an earlier pipeline of this process, a deployment's worker say)."""
    key = (cfg.data.model_dump_json(), cfg.seed)
    if fresh:
        _cached_bundle.cache_clear()
    bundle = _cached_bundle(*key)
    if expected and expected["digests"] != bundle.digests:
        _cached_bundle.cache_clear()  # recorded by a load_data after this process's copy was read
        bundle = _cached_bundle(*key)
        if expected["digests"] != bundle.digests:
            raise RuntimeError("the dataset changed since load_data recorded it (digests differ); re-run the pipeline")
    return bundle


def dataset_labels(cfg: PipelineConfig, classes: list[str]) -> list[int]:
    """The dataset's own class id of each model output 0..k-1 (e.g. [5, 7, 9] for classes 5, 7 and 9)."""
    return list(cfg.data.classes) if cfg.data.classes is not None else list(range(len(classes)))


def _dataset_source(path: str):
    """The data's folder as MLflow's local-files source. Said explicitly: resolving a bare path, MLflow
    finds two registered local sources and warns that the path "can be interpreted in multiple ways"."""
    local = [s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource"][:1]
    return resolve_dataset_source(path, candidate_sources=local or None)


def _dataset(bundle: DataBundle, split: str, source):
    """MLflow's record of one split: its digest and source; in-memory splits with their arrays' profile, a
    streamed folder as metadata only (reading its pixels is what the manifest avoids)."""
    part, name, digest = getattr(bundle, split), f"{bundle.name}-{split}", bundle.digests[split][:16]
    if bundle.streamed:
        return MetaDataset(source, name=name, digest=digest)
    return mlflow.data.from_numpy(part.images.numpy(), targets=part.labels.numpy(), source=source, name=name,
                                  digest=digest)


def _dataset_inputs(bundle: DataBundle) -> list[DatasetInput]:
    source = _dataset_source(bundle.source)
    return [DatasetInput(_dataset(bundle, split, source)._to_mlflow_entity(),
                         tags=[InputTag("mlflow.data.context", split)]) for split in bundle.digests]


def _log_manifests(bundle: DataBundle, run, workdir: Path) -> None:
    """The listing of every image folder the splits come from, as CSV artifacts (one row per image)."""
    manifests = {"train": bundle.train.manifest, "test": bundle.test.manifest}
    for name, manifest in manifests.items():
        if name == "test" and manifest is manifests["train"]:
            continue
        path = workdir / f"manifest-{name}.csv.gz"
        manifest.write_csv(path)
        run.log_artifact(path, "manifest")
    skipped = sum(m.skipped for n, m in manifests.items() if n == "train" or m is not manifests["train"])
    run.log_metrics({"images_listed": sum(len(m) for m in {id(m): m for m in manifests.values()}.values()),
                     "bad_images_skipped": skipped})


@stage_task("load_data", sections=(), cache=False)
def load_data(cfg: PipelineConfig, ctx, run, workdir) -> dict:
    """The data, recorded as dataset inputs of this stage's run and of the pipeline run (where the MLflow
    UI's run list shows them); an image folder's manifest as artifacts."""
    bundle = get_bundle(cfg, fresh=True)
    inputs = _dataset_inputs(bundle)
    run.log_metrics({f"{split}_samples": len(getattr(bundle, split)) for split in bundle.digests})
    for run_id in (run.run_id, ctx.parent_run_id):
        insert_safely(ctx.tracking_uri, run.client.log_inputs, run_id, inputs)
    if bundle.streamed:
        _log_manifests(bundle, run, workdir)
    run.log_dict({"classes": bundle.classes, "digests": bundle.digests, "source": bundle.source,
                  "counts": {s: getattr(bundle, s).class_counts() for s in ("train", "val", "test")},
                  "unlabeled": len(bundle.unlabeled) if bundle.unlabeled is not None else 0,
                  "transform": bundle.eval_transform()}, "data.json")
    return {"classes": bundle.classes, "digests": bundle.digests, "in_channels": bundle.in_channels,
            "input_size": bundle.input_size, "mean": list(bundle.mean), "std": list(bundle.std)}


__all__ = ["DataConfig", "dataset_labels", "get_bundle", "load_data"]
