"""The `compress` flow: a pretrained model in, a registered compressed model out."""

from __future__ import annotations

from prefect import flow

from flows.pipeline import run_pipeline
from tasks.config import load_config


@flow(name="compress", log_prints=True)
def compress(config: str = "configs/quickstart.yaml", overrides: dict | None = None) -> dict:
    """Run the pipeline of `config` (a YAML path relative to the project root) with dotted-key `overrides`,
    e.g. {"prune.ratio": 0.6}. The config is validated before any work starts."""
    return run_pipeline(load_config(config, overrides), "compress")


if __name__ == "__main__":
    compress()
