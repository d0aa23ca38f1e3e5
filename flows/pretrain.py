"""The `pretrain` flow: train a base model on an upstream task and register it, so that `compress` has a
pretrained model to start from where no internet weights can be had."""

from __future__ import annotations

from prefect import flow

from flows.pipeline import run_pipeline
from tasks.config import load_config


@flow(name="pretrain", log_prints=True)
def pretrain(config: str = "configs/pretrain.yaml", overrides: dict | None = None) -> dict:
    """Same stages as compress, configured for training from scratch (no trimming, distillation, pruning)."""
    return run_pipeline(load_config(config, overrides), "pretrain")


if __name__ == "__main__":
    pretrain()
