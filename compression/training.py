"""One train/evaluate engine for every stage: fine-tuning, distillation, recovery after pruning.

Deterministic on CPU: the caller seeds model construction (`seed_everything`), and every epoch reseeds
both the batch order and torch's global generator from (seed, epoch), so a run resumed from its epoch
checkpoint ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from compression import CompressionError
from compression.data import Batches
from compression.fileio import torch_save_atomic
from compression.train_config import TrainConfig

log = logging.getLogger("shrinkflow")

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    best_val_acc: float = float("nan")
    best_epoch: int = -1
    stopped_early: bool = False
    resumed_from_epoch: int | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CompressionError("device cuda requested but CUDA is not available")
    return torch.device(device)


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def loss_fn(model, x, y):
        logits = model(x)
        return criterion(logits, y), logits

    return loss_fn


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer, cfg: TrainConfig):
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    return None


@torch.no_grad()
def predict(model: nn.Module, batches: Batches, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of the whole split, model in eval mode."""
    device = device or next(model.parameters(), torch.empty(0)).device  # int8 models have no parameters
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in batches:
        logits.append(model(x.to(device)).float().cpu())
        labels.append(y)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, batches: Batches, device: torch.device | None = None) -> dict:
    logits, labels = predict(model, batches, device)
    return {
        "loss": nn.functional.cross_entropy(logits, labels).item(),
        "acc": (logits.argmax(1) == labels).float().mean().item(),
    }


def _fmt_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Log lines while training: one every `every_seconds` within epochs and one per finished epoch, each
    with an ETA from the mean time per batch so far."""

    def __init__(self, name: str, epochs: int, total_batches: int, every_seconds: float) -> None:
        self.name, self.epochs, self.every_seconds = name, epochs, every_seconds
        self.total = max(total_batches, 1)
        self.done = 0
        self.started = self.last_report = time.perf_counter()

    def _eta(self, now: float) -> str:
        return _fmt_seconds((now - self.started) / max(self.done, 1) * (self.total - self.done))

    def batch_done(self, epoch: int, mean_loss: float) -> None:
        self.done += 1
        now = time.perf_counter()
        if now - self.last_report >= self.every_seconds:
            log.info("[%s] epoch %d/%d  %d%%  loss %.4f  ETA %s", self.name, epoch + 1, self.epochs,
                     100 * self.done // self.total, mean_loss, self._eta(now))
            self.last_report = now

    def epoch_done(self, row: dict, stopped_early: bool) -> None:
        val = f"  val_acc {row['val_acc']:.4f}" if "val_acc" in row else ""
        log.info("[%s] epoch %d/%d  loss %.4f  acc %.4f%s  %.0f img/s  ETA %s%s", self.name, row["epoch"],
                 self.epochs, row["train_loss"], row["train_acc"], val, row["images_per_s"],
                 self._eta(time.perf_counter()), "  (early stop)" if stopped_early else "")


def _optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def train_one_epoch(model: nn.Module, batches: Batches, loss_fn: LossFn, optimizer: torch.optim.Optimizer,
                    device: torch.device, *, scaler=None, progress: Progress | None = None, epoch: int = 0,
                    name: str = "train") -> dict:
    """One optimizer step per batch (mixed precision when `scaler` is a GradScaler), model in the mode the
    caller left it in; returns the epoch's row: epoch (1-based), train_loss, train_acc, lr, epoch_time,
    images_per_s."""
    started = time.perf_counter()
    loss_sum, correct, seen, labeled = 0.0, 0, 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, enabled=scaler is not None):
            loss, logits = loss_fn(model, x, y)
        if not math.isfinite(loss.item()):
            raise CompressionError(f"[{name}] loss became {loss.item()} in epoch {epoch + 1}; lower the learning rate")
        _optimizer_step(loss, optimizer, scaler)
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()  # unlabeled samples (y = -1) never match
        seen += len(y)
        labeled += (y >= 0).sum().item()
        if progress:
            progress.batch_done(epoch, loss_sum / seen)
    train_time = time.perf_counter() - started
    return {
        "epoch": epoch + 1,
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": correct / max(labeled, 1),
        "lr": optimizer.param_groups[0]["lr"],
        "epoch_time": train_time,
        "images_per_s": seen / max(train_time, 1e-9),
    }


@dataclass
class _Session:
    """What a fit call carries from epoch to epoch; its checkpoint holds exactly this."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    result: TrainResult = field(default_factory=TrainResult)
    best_state: dict | None = None
    next_epoch: int = 0

    def track_best(self, row: dict, patience: int | None) -> None:
        """Keep the weights of the best validation accuracy; stop after `patience` epochs without a new best."""
        result = self.result
        if not result.best_val_acc >= row["val_acc"]:  # also true while best is nan
            result.best_val_acc, result.best_epoch = row["val_acc"], row["epoch"]
            self.best_state = copy.deepcopy(self.model.state_dict())
        elif patience and row["epoch"] - result.best_epoch >= patience:
            result.stopped_early = True

    def state(self, fingerprint: dict, epoch: int) -> dict:
        result = self.result
        return {
            "fingerprint": fingerprint, "epoch": epoch, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "history": result.history, "best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch,
            "best_state": self.best_state, "stopped_early": result.stopped_early,
        }

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        result = self.result
        result.history = state["history"]
        result.best_val_acc, result.best_epoch = state["best_val_acc"], state["best_epoch"]
        result.stopped_early = state["stopped_early"]
        result.resumed_from_epoch = state["epoch"]
        self.best_state = state["best_state"]
        self.next_epoch = state["epoch"] + 1


def _fingerprint(model: nn.Module, cfg: TrainConfig) -> dict:
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    config = {k: v for k, v in asdict(cfg).items() if k not in ("progress_seconds", "checkpoint_seconds")}
    return {"config": config, "shapes": shapes}


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    torch_save_atomic(state, path)


def load_checkpoint(path: str | os.PathLike, fingerprint: dict, device: torch.device) -> dict | None:
    """The checkpoint in `path` if one was written for this fingerprint (model shapes and config), else None."""
    if not Path(path).exists():
        return None
    state = torch.load(path, map_location=device, weights_only=True)
    return state if state.get("fingerprint") == fingerprint else None


class _EpochCheckpoints:
    """last.pt in `directory` (None: no checkpoints), written after an epoch once `every_seconds` have passed
    since the last write, after the final epoch and on early stop."""

    def __init__(self, directory: str | os.PathLike | None, fingerprint: dict, every_seconds: float, name: str):
        self.path = Path(directory) / "last.pt" if directory else None
        self.fingerprint, self.every_seconds, self.name = fingerprint, every_seconds, name
        self.last_write = time.perf_counter()

    def resume(self, session: _Session, device: torch.device, epochs: int) -> None:
        if not self.path:
            return
        state = load_checkpoint(self.path, self.fingerprint, device)
        if state is not None:
            session.restore(state)
            log.info("[%s] resuming after epoch %d/%d from %s", self.name, session.next_epoch, epochs, self.path)
        elif self.path.exists():
            log.warning("[%s] ignoring checkpoint %s: written for another model or config", self.name, self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.last_write = time.perf_counter()

    def after_epoch(self, session: _Session, epoch: int, final: bool) -> None:
        due = time.perf_counter() - self.last_write >= self.every_seconds or final
        if self.path and (due or session.result.stopped_early):
            self.last_write = time.perf_counter()
            save_checkpoint(self.path, session.state(self.fingerprint, epoch))


def fit(
    model: nn.Module,
    train: Batches,
    val: Batches | None,
    cfg: TrainConfig,
    *,
    loss_fn: LossFn | None = None,
    param_groups: list[dict] | None = None,
    on_epoch_start: Callable[[int, nn.Module], None] | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    name: str = "train",
) -> TrainResult:
    """Train `model` in place for cfg.epochs and leave it holding the best validation weights.

    With `checkpoint_dir`, the state after an epoch is written there (atomically) once `checkpoint_seconds`
    have passed since the last write, and after the final epoch; a later call with the same model shape and
    config resumes after the last checkpointed epoch. A write costs ~0.3 s for ResNet-18 with AdamW, 6% of
    a 5-second epoch, so short epochs are not each checkpointed; a crash loses at most that much time
    plus one epoch. 0 checkpoints every epoch.
    """
    device = resolve_device(cfg.device)
    model.to(device)
    loss_fn = loss_fn or cross_entropy(cfg.label_smoothing)
    optimizer = make_optimizer(param_groups or model.parameters(), cfg)
    session = _Session(model, optimizer, make_scheduler(optimizer, cfg))
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.type == "cuda" else None
    train.seed = cfg.seed
    checkpoints = _EpochCheckpoints(checkpoint_dir, _fingerprint(model, cfg), cfg.checkpoint_seconds, name)
    checkpoints.resume(session, device, cfg.epochs)
    progress = Progress(name, cfg.epochs, len(train) * (cfg.epochs - session.next_epoch), cfg.progress_seconds)
    for epoch in range(session.next_epoch, cfg.epochs):
        if session.result.stopped_early:
            break
        torch.manual_seed(cfg.seed * 1000 + epoch)  # with train.set_epoch: epoch e is the same after a resume
        train.set_epoch(epoch)
        model.train()
        if on_epoch_start:
            on_epoch_start(epoch, model)
        row = train_one_epoch(model, train, loss_fn, optimizer, device, scaler=scaler, progress=progress,
                              epoch=epoch, name=name)
        if session.scheduler:
            session.scheduler.step()
        if val is not None:
            row.update({f"val_{k}": v for k, v in evaluate(model, val, device).items()})
            session.track_best(row, cfg.patience)
        session.result.history.append(row)
        progress.epoch_done(row, session.result.stopped_early)
        checkpoints.after_epoch(session, epoch, final=epoch + 1 == cfg.epochs)
        if on_epoch_end:
            on_epoch_end(row)
    if session.best_state is not None:
        model.load_state_dict(session.best_state)
    return session.result
