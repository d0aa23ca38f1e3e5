"""The shared part of every training stage: fit on the task's data, log each epoch, save the model."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from compression.checkpoint import load_model, save_model
from compression.data import DataBundle
from compression.models import input_channels
from compression.training import TrainConfig, TrainResult, fit
from tasks import plots
from tasks.stage import ModelRef, StageRun, model_ref


def fit_logged(run: StageRun, model: nn.Module, bundle: DataBundle, train_cfg: TrainConfig, checkpoint_dir: Path,
               name: str, prefix: str = "", split: str = "train", **fit_kwargs) -> TrainResult:
    """training.fit with per-epoch metrics in the stage's run (keys `prefix` + metric, step = epoch).

    split "transfer" adds the unlabeled images (for distillation losses only)."""
    channels = input_channels(model)
    train = bundle.batches(split, train_cfg.batch_size, train=True, augment=train_cfg.augment,
                           seed=train_cfg.seed, channels=channels)
    val = bundle.batches("val", 256, channels=channels)
    log_epoch = run.epoch_logger(prefix)
    result = fit(model, train, val, train_cfg, on_epoch_end=log_epoch, checkpoint_dir=checkpoint_dir,
                 name=name, **fit_kwargs)
    if result.resumed_from_epoch is not None:
        # Epochs trained before a crash, or before this stage ran again for another tracking store: this
        # run gets their metrics from the checkpoint, and a tag that says so.
        for row in result.history[:result.resumed_from_epoch + 1]:
            log_epoch(row)
        run.set_tags({f"{prefix}shrinkflow.resumed_from_epoch": str(result.resumed_from_epoch + 1)})
    run.log_metrics({"best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch,
                     "epochs_run": len(result.history), "stopped_early": int(result.stopped_early)}, prefix=prefix)
    return result


def log_curves(run: StageRun, histories: dict[str, list[dict]], title: str) -> None:
    histories = {k: v for k, v in histories.items() if v}
    if histories:
        fig = plots.training_curves(histories, title)
        run.log_figure(fig, "training_curves.png")
        plots.close(fig)


def save_candidate(run: StageRun, model: nn.Module, workdir: Path, name: str, bundle: DataBundle,
                   **extra) -> ModelRef:
    """Write the model file (with what inference needs: classes and normalisation) and log it."""
    path = workdir / f"{name}.pt"
    meta = {"classes": bundle.classes, "mean": list(bundle.mean), "std": list(bundle.std), "candidate": name}
    sha = save_model(model, path, meta=meta)
    run.log_artifact(path, "model")
    run.set_tags({f"sha256.{name}": sha})
    return model_ref(name, path, sha, run.run_id, **extra)


def load(ref: ModelRef) -> nn.Module:
    """Load a model another task wrote, refusing a file whose sha256 changed since."""
    return load_model(ref["path"], expected_sha256=ref["sha256"])
