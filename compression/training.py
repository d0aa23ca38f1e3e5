"""One train/evaluate engine for every stage: fine-tuning, distillation, recovery after pruning.

Deterministic on CPU: the caller seeds model construction (`seed_everything`), and every epoch reseeds
both the batch order and torch's global generator from (seed, epoch), so a run resumed from its epoch
checkpoint ends with the same weights as one that never stopped.

Under torch DDP (`cluster`, compression/distributed.py) every process trains on its slice of each global
batch, loss and accuracy are summed over processes, and only the leader checkpoints and reports. On CUDA,
training runs in mixed precision (bf16 where the GPU has it, else fp16 with a gradient scaler) and
channels_last; `amp: bf16` also trains in bf16 on a CPU that has it natively.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compression import CompressionError
from compression.accuracy import hits_count, ratio, top1_accuracy
from compression.data import Batches
from compression.distributed import LOCAL, Cluster
from compression.fileio import torch_save_atomic
from compression.train_config import TrainConfig

log = logging.getLogger("shrinkflow")

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    best_val_accuracy: float = float("nan")
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
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer, cfg: TrainConfig):
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    return None


@dataclass(frozen=True)
class Precision:
    """How a training step computes: autocast dtype (None: float32), gradient scaler, memory format."""

    dtype: torch.dtype | None = None
    scaled: bool = False
    channels_last: bool = False

    def scaler(self):
        return torch.amp.GradScaler("cuda") if self.scaled else None

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware: a GPU that supports it, or a CPU with AVX512-BF16 or AMX
    (elsewhere on a CPU bf16 is emulated and autocast only slows training down)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def bf16_refusal(device: torch.device) -> str | None:
    """Why `amp: bf16` cannot train on `device` (None where it can): one wording for the check before any
    work and for the one where training starts."""
    if native_bf16(device):
        return None
    return (f"the {device.type} device here has no native bf16 (a CPU needs AVX512-BF16 or AMX); use amp: true "
            "or false")


def precision_for(device: torch.device, amp: bool | str = True) -> Precision:
    """amp True: mixed precision on CUDA (bf16 where supported, else fp16 with a scaler) and channels_last
    there, float32 elsewhere. amp "bf16": bf16 autocast on CUDA or on a CPU with native bf16, refused on any
    other device. amp False: float32."""
    if amp == "bf16":
        if refusal := bf16_refusal(device):
            raise CompressionError(f"invalid training setting amp='bf16': {refusal}")
        return Precision(torch.bfloat16, False, device.type == "cuda")
    if device.type != "cuda" or not amp:
        return Precision()
    if torch.cuda.is_bf16_supported():
        return Precision(torch.bfloat16, False, True)
    return Precision(torch.float16, True, True)


@torch.no_grad()
def predict(model: nn.Module, batches: Batches,
            device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of the whole split, model in eval mode."""
    device = device or next(model.parameters(), torch.empty(0)).device  # int8 models have no parameters
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in batches:
        logits.append(model(x.to(device)).float().cpu())
        labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, batches: Batches, device: torch.device | None = None, cluster: Cluster = LOCAL) -> dict:
    """Mean loss and accuracy of a split; under DDP each process scores its shard and the sums are shared."""
    logits, labels = predict(model, batches, device)
    if not cluster.distributed:
        return {"loss": nn.functional.cross_entropy(logits, labels).item(),
                "accuracy": top1_accuracy(logits, labels)}
    loss = nn.functional.cross_entropy(logits, labels, reduction="sum").item() if len(labels) else 0.0
    correct = hits_count(logits, labels)
    loss, correct, seen = cluster.sum([loss, correct, len(labels)])
    return {"loss": loss / max(seen, 1), "accuracy": ratio(correct, seen)}


def _fmt_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Log lines while training: one every `every_seconds` within epochs and one per finished epoch, each
    with images per second, the share of the time spent waiting for the data loader (high: the data path,
    not the model, is the bottleneck) and an ETA from the mean time per batch so far."""

    def __init__(self, name: str, epochs: int, total_batches: int, every_seconds: float) -> None:
        self.name, self.epochs, self.every_seconds = name, epochs, every_seconds
        self.total = max(total_batches, 1)
        self.done = 0
        self.started = self.last_report = time.perf_counter()

    def _eta(self, now: float) -> str:
        return _fmt_seconds((now - self.started) / max(self.done, 1) * (self.total - self.done))

    def batch_done(self, epoch: int, mean_loss: float, speed: tuple[float, float]) -> None:
        """`speed`: (images per second, loader share) of the epoch so far."""
        self.done += 1
        now = time.perf_counter()
        if now - self.last_report >= self.every_seconds:
            log.info("[%s] epoch %d/%d  %d%%  loss %.4f  %.0f img/s  loader %.0f%%  ETA %s", self.name, epoch + 1,
                     self.epochs, 100 * self.done // self.total, mean_loss, speed[0], 100 * speed[1], self._eta(now))
            self.last_report = now

    def epoch_done(self, row: dict, stopped_early: bool) -> None:
        val = f"  val_accuracy {row['val_accuracy']:.4f}" if "val_accuracy" in row else ""
        log.info("[%s] epoch %d/%d  loss %.4f  acc %.4f%s  %.0f img/s  loader %.0f%%  ETA %s%s", self.name,
                 row["epoch"], self.epochs, row["train_loss"], row["train_accuracy"], val, row["images_per_s"],
                 100 * row["loader_share"], self._eta(time.perf_counter()), "  (early stop)" if stopped_early else "")


def _optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def timed(batches):
    """(x, y, seconds spent waiting for the batch) of every batch: decoding, augmentation, transfer."""
    iterator = iter(batches)
    while True:
        started = time.perf_counter()
        try:
            x, y = next(iterator)
        except StopIteration:
            return
        yield x, y, time.perf_counter() - started


def train_one_epoch(model: nn.Module, batches: Batches, loss_fn: LossFn, optimizer: torch.optim.Optimizer,
                    device: torch.device, *, scaler=None, precision: Precision = Precision(),
                    progress: Progress | None = None, epoch: int = 0, name: str = "train",
                    cluster: Cluster = LOCAL) -> dict:
    """One optimizer step per batch (in `precision`; `scaler` a GradScaler for fp16), model in the mode the
    caller left it in; returns the epoch's row, summed over every training process: epoch (1-based),
    train_loss, train_accuracy, lr, epoch_time, images_per_s, loader_share."""
    started = time.perf_counter()
    loss_sum, correct, seen, labeled, waited = 0.0, 0, 0, 0, 0.0
    for x, y, wait in timed(batches):
        waited += wait
        x, y = precision.inputs(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=precision.dtype, enabled=precision.dtype is not None):
            loss, logits = loss_fn(model, x, y)
        if not math.isfinite(loss.item()):
            raise CompressionError(f"[{name}] loss became {loss.item()} in epoch {epoch + 1}; lower the learning rate")
        _optimizer_step(loss, optimizer, scaler)
        loss_sum += loss.item() * len(y)
        correct += hits_count(logits.detach(), y)  # unlabeled samples (y = -1) never match
        seen += len(y)
        labeled += (y >= 0).sum().item()
        if progress:
            elapsed = time.perf_counter() - started
            progress.batch_done(epoch, loss_sum / seen, (seen * cluster.world / elapsed, waited / elapsed))
    train_time = time.perf_counter() - started
    loss_sum, correct, seen, labeled = cluster.sum([loss_sum, correct, seen, labeled])
    return {
        "epoch": epoch + 1,
        "train_loss": loss_sum / max(seen, 1),
        "train_accuracy": ratio(correct, labeled),
        "lr": optimizer.param_groups[0]["lr"],
        "epoch_time": train_time,
        "images_per_s": seen / max(train_time, 1e-9),
        "loader_share": waited / max(train_time, 1e-9),
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
        if not result.best_val_accuracy >= row["val_accuracy"]:  # also true while best is nan
            result.best_val_accuracy, result.best_epoch = row["val_accuracy"], row["epoch"]
            self.best_state = copy.deepcopy(self.model.state_dict())
        elif patience and row["epoch"] - result.best_epoch >= patience:
            result.stopped_early = True

    def state(self, fingerprint: dict, epoch: int) -> dict:
        result = self.result
        return {
            "fingerprint": fingerprint, "epoch": epoch, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "history": result.history, "best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
            "best_state": self.best_state, "stopped_early": result.stopped_early,
        }

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        result = self.result
        result.history = state["history"]
        result.best_val_accuracy, result.best_epoch = state["best_val_accuracy"], state["best_epoch"]
        result.stopped_early = state["stopped_early"]
        result.resumed_from_epoch = state["epoch"]
        self.best_state = state["best_state"]
        self.next_epoch = state["epoch"] + 1


CHECKPOINT_FORMAT = 2


def _fingerprint(model: nn.Module, cfg: TrainConfig) -> dict:
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    config = {k: v for k, v in asdict(cfg).items() if k not in ("progress_seconds", "checkpoint_seconds")}
    # The format: a checkpoint an older version wrote (other keys) is not resumed from, it is trained again.
    return {"format": CHECKPOINT_FORMAT, "config": config, "shapes": shapes}


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
    since the last write, after the final epoch and on early stop. Under DDP the leader reads and writes it
    and shares what it read, so that every process resumes from the same state."""

    def __init__(self, directory: str | os.PathLike | None, fingerprint: dict, every_seconds: float, name: str,
                 cluster: Cluster = LOCAL):
        self.path = Path(directory) / "last.pt" if directory else None
        self.fingerprint, self.every_seconds, self.name, self.cluster = fingerprint, every_seconds, name, cluster
        self.last_write = time.perf_counter()

    def resume(self, session: _Session, device: torch.device, epochs: int) -> None:
        if not self.path:
            return
        mine = self.cluster.is_leader
        state = (load_checkpoint(self.path, self.fingerprint, device if not self.cluster.distributed else "cpu")
                 if mine else None)
        state = self.cluster.share(state)
        if state is not None:
            session.restore(state)
            if mine:
                log.info("[%s] resuming after epoch %d/%d from %s", self.name, session.next_epoch, epochs, self.path)
        elif mine and self.path.exists():
            log.warning("[%s] ignoring checkpoint %s: written for another model or config", self.name, self.path)
        if mine:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.last_write = time.perf_counter()

    def after_epoch(self, session: _Session, epoch: int, final: bool) -> None:
        due = time.perf_counter() - self.last_write >= self.every_seconds or final
        if self.path and self.cluster.is_leader and (due or session.result.stopped_early):
            self.last_write = time.perf_counter()
            save_checkpoint(self.path, session.state(self.fingerprint, epoch))


def freeze_norm_statistics(model: nn.Module) -> None:
    """BatchNorm layers in eval mode: they normalise with their running statistics and stop updating them
    (their scale and shift still train). Small per-process batches then cannot make the statistics noisy,
    and the processes of a DDP run compute exactly what one process with the whole batch would."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


class _Wrapper:
    """The model as the training step calls it: under DDP, wrapped again whenever the set of parameters that
    train changes (a frozen backbone thawing), since DDP syncs exactly the parameters it was built with."""

    def __init__(self, model: nn.Module, cluster: Cluster) -> None:
        self.model, self.cluster, self.trainable, self.wrapped = model, cluster, None, model

    def __call__(self) -> nn.Module:
        trainable = tuple(p.requires_grad for p in self.model.parameters())
        if self.cluster.distributed and trainable != self.trainable:
            self.wrapped, self.trainable = self.cluster.wrap(self.model), trainable
        return self.wrapped


def _epoch(session: _Session, wrapper: _Wrapper, train, val, cfg: TrainConfig, epoch: int, steps: dict) -> dict:
    """Train one epoch, step the schedule, score val (keeping the best weights): the epoch's row."""
    model, cluster = session.model, wrapper.cluster
    torch.manual_seed(cfg.seed * 1000 + epoch)  # with train.set_epoch: epoch e is the same after a resume
    train.set_epoch(epoch)
    model.train()
    if cfg.freeze_norm:
        freeze_norm_statistics(model)
    if steps["on_epoch_start"]:
        steps["on_epoch_start"](epoch, model)
    row = train_one_epoch(wrapper(), train, steps["loss_fn"], session.optimizer, steps["device"],
                          scaler=steps["scaler"], precision=steps["precision"], progress=steps["progress"],
                          epoch=epoch, name=steps["name"], cluster=cluster)
    if session.scheduler:
        session.scheduler.step()
    if val is not None:
        row.update({f"val_{k}": v for k, v in evaluate(model, val, steps["device"], cluster).items()})
        session.track_best(row, cfg.patience)
    session.result.history.append(row)
    return row


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
    cluster: Cluster = LOCAL,
) -> TrainResult:
    """Train `model` in place for cfg.epochs and leave it holding the best validation weights, on the
    device it came on.

    With `checkpoint_dir`, the state after an epoch is written there (atomically) once `checkpoint_seconds`
    have passed since the last write, and after the final epoch; a later call with the same model shape and
    config resumes after the last checkpointed epoch. Writing costs a noticeable share of a short epoch
    (docs/benchmarks.md), so short epochs are not each checkpointed; a crash loses at most that much time
    plus one epoch. 0 checkpoints every epoch. Under DDP (`cluster`), `train` and `val` are this process's
    shards, and only the leader checkpoints, reports progress and calls `on_epoch_end`.
    """
    device = cluster.device if cluster.distributed else resolve_device(cfg.device)
    home = next(model.parameters(), torch.empty(0)).device
    precision = precision_for(device, cfg.amp)
    model.to(device, memory_format=torch.channels_last if precision.channels_last else torch.preserve_format)
    optimizer = make_optimizer(param_groups or model.parameters(), cfg)
    session = _Session(model, optimizer, make_scheduler(optimizer, cfg))
    train.seed = cfg.seed
    for batches in (train, val):  # streamed batches are normalised where they train
        if batches is not None:
            batches.device = device
    checkpoints = _EpochCheckpoints(checkpoint_dir, _fingerprint(model, cfg), cfg.checkpoint_seconds, name, cluster)
    checkpoints.resume(session, device, cfg.epochs)
    progress = Progress(name, cfg.epochs, len(train) * (cfg.epochs - session.next_epoch), cfg.progress_seconds)
    steps = {"loss_fn": loss_fn or cross_entropy(cfg.label_smoothing), "device": device, "precision": precision,
             "scaler": precision.scaler(), "progress": progress if cluster.is_leader else None,
             "on_epoch_start": on_epoch_start, "name": name}
    wrapper = _Wrapper(model, cluster)
    for epoch in range(session.next_epoch, cfg.epochs):
        if session.result.stopped_early:
            break
        row = _epoch(session, wrapper, train, val, cfg, epoch, steps)
        if cluster.is_leader:
            progress.epoch_done(row, session.result.stopped_early)
        checkpoints.after_epoch(session, epoch, final=epoch + 1 == cfg.epochs)
        if on_epoch_end and cluster.is_leader:
            on_epoch_end(row)
    if session.best_state is not None:
        model.load_state_dict(session.best_state)
    model.to(home, memory_format=torch.contiguous_format)
    return session.result
