"""The shared part of every training stage: fit on the task's data, log each epoch, save the model."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from compression.checkpoint import load_model, save_model
from compression.data import DataBundle
from compression.training import TrainConfig, TrainResult, fit
from tasks import plots
from tasks.stage import ModelRef, StageRun, model_ref


def fit_logged(run: StageRun, model: nn.Module, bundle: DataBundle, train_cfg: TrainConfig, checkpoint_dir: Path,
               name: str, prefix: str = "", split: str = "train", **fit_kwargs) -> TrainResult:
    """training.fit with per-epoch metrics in the stage's run (keys `prefix` + metric, step = epoch).

    split "transfer" adds the unlabeled images (for distillation losses only)."""
    channels = model.shrinkflow_spec["in_channels"]
    train = bundle.batches(split, train_cfg.batch_size, train=True, augment=train_cfg.augment,
                           seed=train_cfg.seed, channels=channels)
    val = bundle.batches("val", 256, channels=channels)
    result = fit(model, train, val, train_cfg, on_epoch_end=run.epoch_logger(prefix), checkpoint_dir=checkpoint_dir,
                 name=name, **fit_kwargs)
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
