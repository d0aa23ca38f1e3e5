"""load_data: resolve the dataset once per process and record every split in MLflow with its digest."""

from __future__ import annotations

import json
from functools import lru_cache

import mlflow.data
from mlflow.entities import DatasetInput, InputTag

from compression.data import DataBundle, load_dataset
from tasks.config import DataConfig, PipelineConfig
from tasks.stage import stage_task


@lru_cache(maxsize=4)
def _cached_bundle(data_json: str, seed: int) -> DataBundle:
    settings = json.loads(data_json)
    settings.pop("eval_batch_size")
    return load_dataset(**settings, seed=seed)


def get_bundle(cfg: PipelineConfig, expected: dict | None = None) -> DataBundle:
    """The task's data; with `expected` (load_data's result) it must be the same data load_data recorded."""
    bundle = _cached_bundle(cfg.data.model_dump_json(), cfg.seed)
    if expected and expected["digests"] != bundle.digests:
        raise RuntimeError("the dataset changed since load_data recorded it (digests differ); re-run the pipeline")
    return bundle


@stage_task("load_data", sections=(), cache=False)
def load_data(cfg: PipelineConfig, ctx, run, workdir) -> dict:
    bundle = get_bundle(cfg)
    inputs = []
    for split in bundle.digests:
        part = getattr(bundle, split)
        dataset = mlflow.data.from_numpy(
            part.images.numpy(), targets=part.labels.numpy(), source=bundle.source,
            name=f"{bundle.name}-{split}", digest=bundle.digests[split][:16])
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", split)]))
        run.log_metrics({f"{split}_samples": len(part)})
    run.client.log_inputs(run.run_id, inputs)
    run.log_dict({"classes": bundle.classes, "digests": bundle.digests, "source": bundle.source,
                  "counts": {s: getattr(bundle, s).class_counts() for s in ("train", "val", "test")},
                  "unlabeled": len(bundle.unlabeled) if bundle.unlabeled is not None else 0}, "data.json")
    return {"classes": bundle.classes, "digests": bundle.digests, "in_channels": bundle.in_channels,
            "input_size": bundle.input_size, "mean": list(bundle.mean), "std": list(bundle.std)}


__all__ = ["DataConfig", "get_bundle", "load_data"]
