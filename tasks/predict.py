"""predict: score images with a registered model, on an MLflow run of its own.

The images are a folder (ImageFolder layout root/<class>/<image>, the folder naming the class by name or
dataset label id, or flat root/<image>) or the test split of a configured dataset. The predictions
(file, label, name, probability, and the true label where known) go to a CSV artifact; accuracy is logged
when labels are known. The model is loaded through MLflow exactly as its scoring server loads it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from prefect import task
from prefect.cache_policies import NO_CACHE

from compression import CompressionError
from compression.fileio import atomic_write
from compression.inference import as_images, image_files, read_images, true_labels
from tasks.config import PROJECT_ROOT, ConfigError, PipelineConfig
from tasks.data import dataset_labels, get_bundle
from tasks.fetch import registry_version
from tasks.mlflow_store import load_pyfunc, make_client
from tasks.preflight import ensure_writable
from tasks.tracking import pipeline_run
from tasks.tracking_uri import check_tracking, default_tracking_uri, redact

log = logging.getLogger("shrinkflow")
BATCH = 512


def registered_version(model_uri: str, tracking_uri: str):
    """The registry version `model_uri` (models:/name@alias or models:/name/version) names; bad input when
    there is none."""
    try:
        return registry_version(make_client(tracking_uri), model_uri)
    except CompressionError as exc:
        raise ConfigError(f"model {model_uri} not found in the registry at {redact(tracking_uri)}: {exc}") from None


def load_registered(model_uri: str, tracking_uri: str):
    """The pyfunc model and its registry version. The version is resolved once and loaded by number, so the
    version logged is the one that scores even if an alias moves meanwhile."""
    version = registered_version(model_uri, tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)  # pyfunc.load_model reads the registry from the global setting
    loaded = load_pyfunc(f"models:/{version.name}/{version.version}")
    try:
        python_model = loaded.unwrap_python_model()
    except MlflowException:  # another flavour (sklearn, ...): no python model to unwrap
        python_model = None
    if not hasattr(python_model, "predictor"):
        raise ConfigError(f"model {model_uri} is not a shrinkflow image model")
    return loaded, version


def output_dir(output: str | None) -> Path:
    """Where the predictions CSV goes, checked writable; bad input when `output` names a directory."""
    if output and Path(output).is_dir():
        raise ConfigError(f"output {output} is a directory; give the path of the CSV file to write")
    directory = Path(output).resolve().parent if output else PROJECT_ROOT / "outputs" / "predictions"
    ensure_writable(directory)
    return directory


def store_of(cfg: PipelineConfig | None, tracking_uri: str | None) -> str:
    return tracking_uri or (cfg.tracking.uri if cfg and cfg.tracking.uri else default_tracking_uri())


Chunk = tuple[list[str], np.ndarray, list[int | None]]  # file names, uint8 pixels, true labels


def folder_chunks(folder: str, predictor, bad_images: str, skipped: list[str]) -> Iterator[Chunk]:
    """The folder's images BATCH at a time, read with the model's evaluation transform; unusable files are
    bad input under bad_images fail, else left out and their messages appended to `skipped`."""
    found = image_files(folder)
    truth = true_labels([cls for _, cls in found], predictor.labels, predictor.names)
    log.info("[predict] reading %d images from %s", len(found), folder)
    root = Path(folder)
    for start in range(0, len(found), BATCH):
        paths = [path for path, _ in found[start:start + BATCH]]
        pixels, bad = read_images(paths, predictor.transform, predictor.channels, bad_images)
        left_out = {i for i, _ in bad}
        skipped += [message for _, message in bad]
        kept = [i for i in range(len(paths)) if i not in left_out]
        yield ([str(Path(paths[i]).relative_to(root)) for i in kept], pixels,
               [truth[start + i] for i in kept])


def dataset_chunks(cfg: PipelineConfig) -> Iterator[Chunk]:
    """The test split of the config's data, as uint8 pixels named test/<index>, BATCH at a time."""
    bundle = get_bundle(cfg)
    ids = np.asarray(dataset_labels(cfg, bundle.classes))
    done = 0
    for pixels, labels in bundle.pixel_batches("test", BATCH):
        yield [f"test/{done + i}" for i in range(len(labels))], pixels.numpy(), ids[labels.numpy()].tolist()
        done += len(labels)


def predictions_table(loaded, chunks: Iterator[Chunk], total: int) -> pd.DataFrame:
    parts, done = [], 0
    for files, pixels, truth in chunks:
        if not len(files):
            continue
        part = loaded.predict(pixels)[["label", "name", "probability"]]
        part.insert(0, "file", files)
        part["true_label"] = pd.array(truth, dtype="Int64")
        parts.append(part)
        done += len(files)
        log.info("[predict] %d/%d images", done, total)
    if not parts:
        raise CompressionError("no image could be read: nothing to predict")
    table = pd.concat(parts, ignore_index=True)
    if table["true_label"].notna().any():
        table["correct"] = (table["label"] == table["true_label"]).astype("boolean")
    else:
        table = table.drop(columns="true_label")
    return table


def _accuracy(table: pd.DataFrame) -> float | None:
    if "correct" not in table:
        return None
    known = table["correct"].dropna()
    return float(known.mean()) if len(known) else None


def _inputs(folder: str | None, cfg: PipelineConfig | None, predictor, bad_images: str,
            skipped: list[str]) -> tuple[int, Iterator[Chunk]]:
    """(image count, chunks), the first chunk read already: images the model cannot take are bad input
    before any run starts."""
    if folder:
        total, chunks = len(image_files(folder)), folder_chunks(folder, predictor, bad_images, skipped)
    else:
        total, chunks = len(get_bundle(cfg).test), dataset_chunks(cfg)
    first = next(chunks)
    if len(first[1]):
        as_images(first[1][:1], predictor.channels, predictor.size)
    return total, chain([first], chunks)


@task(name="predict", cache_policy=NO_CACHE)
def predict_images(model_uri: str, folder: str | None, cfg: PipelineConfig | None, experiment: str,
                   tracking_uri: str | None, output: str | None, bad_images: str = "skip") -> dict:
    tracking_uri = store_of(cfg, tracking_uri)
    check_tracking(tracking_uri)
    loaded, version = load_registered(model_uri, tracking_uri)
    predictor = loaded.unwrap_python_model().predictor
    skipped: list[str] = []
    total, chunks = _inputs(folder, cfg, predictor, cfg.data.bad_images if cfg else bad_images, skipped)
    out_dir = output_dir(output)
    params = {"model": model_uri, "images": folder or f"test split of {cfg.name}", "runtime": predictor.runtime,
              "model_version": version.version}
    with pipeline_run(tracking_uri, experiment, f"predict-{model_uri.removeprefix('models:/')}", params,
                      {"shrinkflow.kind": "predict", "mlflow.source.name": "flows/predict.py"}) as (ctx, run):
        started = time.perf_counter()
        table = predictions_table(loaded, chunks, total)
        seconds = time.perf_counter() - started
        if skipped:
            log.warning("[predict] skipped %d unreadable image(s): %s", len(skipped), "; ".join(skipped[:3]))
        out = Path(output).resolve() if output else out_dir / ctx.parent_run_id / "predictions.csv"
        atomic_write(out, lambda tmp: table.to_csv(tmp, index=False))
        run.log_artifact(out)
        accuracy = _accuracy(table)
        run.log_metrics({"images": len(table), "skipped_images": len(skipped), "seconds": seconds,
                         "images_per_second": len(table) / seconds,
                         **({"accuracy": accuracy} if accuracy is not None else {})})
    return {"run_id": ctx.parent_run_id, "tracking_uri": redact(tracking_uri), "csv": str(out), "images": len(table),
            "skipped": len(skipped), "accuracy": accuracy, "runtime": predictor.runtime,
            "model_version": params["model_version"], "counts": table["name"].value_counts().to_dict()}
