"""The shared part of every training stage: fit on the task's data, log each epoch, save the model."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path

from torch import nn

from compression.checkpoint import load_model, save_model
from compression.data import DataBundle
from compression.fit_plan import FitPlan, train_on
from compression.training import TrainConfig, TrainResult
from tasks import plots
from tasks.config import DistributedConfig
from tasks.distributed import fit_distributed
from tasks.stage import ModelRef, StageRun, model_ref

# Who else reads each epoch's row as it is trained, besides the stage's run: a search trial's pruner
# (tasks/search.py), called as observer(stage, part, row) and free to raise TrialPruned to stop the training.
# A context variable, not an argument: the trial sets it around the pipeline's own stages, which pass nothing
# of the search down, and Prefect runs a task called inside a task in the caller's thread and context.
EPOCH_OBSERVER: ContextVar[Callable[[str, int, dict], None] | None] = ContextVar("epoch_observer", default=None)


def _on_epoch_end(run: StageRun, prefix: str, part: int | None):
    log_epoch, observer = run.epoch_logger(prefix), EPOCH_OBSERVER.get()
    if observer is None or part is None:
        return log_epoch

    def on_epoch_end(row: dict) -> None:
        log_epoch(row)  # first: a pruned trial's run keeps the epoch that stopped it
        observer(run.stage, part, row)

    return on_epoch_end


def fit_logged(run: StageRun, model: nn.Module, bundle: DataBundle, train_cfg: TrainConfig, checkpoint_dir: Path,
               name: str, prefix: str = "", split: str = "train",
               plan: FitPlan = FitPlan(),  # noqa: B008 - FitPlan is a frozen dataclass: one shared default is safe
               teacher: ModelRef | None = None, distributed: DistributedConfig | None = None,
               part: int | None = 0) -> TrainResult:
    """Train `model` as `plan` says (compression.fit_plan), with per-epoch metrics in the stage's run (keys
    `prefix` + metric, step = epoch): in this process, or in `distributed.world_size` DDP processes.

    split "transfer" adds the unlabeled images (for distillation losses only); `teacher` is the KD teacher's
    model file. `part` says which of the stage's trainings this is to an EPOCH_OBSERVER (prune: its step,
    from 1; None: not observed); DDP trainings are not observed."""
    log_epoch = run.epoch_logger(prefix)
    if distributed is not None and distributed.world_size > 1:
        result = fit_distributed(distributed, run, model, bundle, train_cfg, plan, teacher, split, checkpoint_dir,
                                 name, prefix)
    else:
        result = train_on(model, bundle, train_cfg, plan, teacher=load(teacher) if teacher else None, split=split,
                          checkpoint_dir=checkpoint_dir, name=name, on_epoch_end=_on_epoch_end(run, prefix, part))
    if result.resumed_from_epoch is not None:
        # Epochs trained before a crash, or before this stage ran again for another tracking store: this
        # run gets their metrics from the checkpoint, and a tag that says so.
        for row in result.history[:result.resumed_from_epoch + 1]:
            log_epoch(row)
        run.set_tags({f"{prefix}shrinkflow.resumed_from_epoch": str(result.resumed_from_epoch + 1)})
    run.log_metrics({"best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
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
    meta = {**bundle.model_meta(), "candidate": name}
    sha = save_model(model, path, meta=meta)
    run.log_artifact(path, "model")
    run.set_tags({f"sha256.{name}": sha})
    return model_ref(name, path, sha, run.run_id, **extra)


def load(ref: ModelRef) -> nn.Module:
    """Load a model another task wrote, refusing a file whose sha256 changed since."""
    return load_model(ref["path"], expected_sha256=ref["sha256"])
