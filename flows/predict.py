"""The `predict` flow: score a folder of images, or the test split of a configured dataset, with a
registered model; the predictions CSV and the accuracy (when labels are known) on an MLflow run."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from tasks.config import ConfigError, load_config
from tasks.predict import predict_images


@flow(name="predict", log_prints=True)
def predict(model: str = "models:/fmnist-sandals-to-boots@champion", images: str | None = None,
            config: str | None = None, overrides: dict | None = None, experiment: str = "shrinkflow-predictions",
            tracking_uri: str | None = None, output: str | None = None,
            bad_images: Literal["skip", "fail"] = "skip") -> dict:
    """`model`: models:/name@alias or models:/name/version. `images`: a folder (root/<class>/<image> or flat);
    or `config` (with `overrides`): that config's test split. The MLflow store is `tracking_uri`, else the
    config's, else $MLFLOW_TRACKING_URI or the project's sqlite:///mlflow.db. `bad_images`: an image file
    that cannot be read is left out (skip, counted and named in the log) or ends the run as bad input (fail);
    with `config`, its data.bad_images decides."""
    if (images is None) == (config is None):
        raise ConfigError("predict needs exactly one of images (a folder) or config (its test split)")
    cfg = load_config(config, overrides) if config else None
    return predict_images(model, images, cfg, experiment, tracking_uri, output, bad_images)


if __name__ == "__main__":
    predict()
