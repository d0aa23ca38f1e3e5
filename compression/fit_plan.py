"""A training run of a stage, declared as data: its loss (cross-entropy, or distillation from a teacher), its
optimizer groups and its epoch hook (a backbone frozen for the first epochs). The process that trains (the
stage's own, or every process of a distributed stage) builds them from the plan the same way, then trains on
its shard of the bundle with `train_on`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

from torch import nn

from compression.data import DataBundle
from compression.distillation import distillation_loss
from compression.distributed import LOCAL, Cluster
from compression.loader import check_trainable
from compression.models import input_channels
from compression.train_config import TrainConfig
from compression.training import LossFn, TrainResult, cross_entropy, fit
from compression.transfer import freeze_backbone_for, transfer_param_groups

EVAL_BATCH_PER_PROCESS = 256


@dataclass(frozen=True)
class FitPlan:
    """`loss` ce or kd (Hinton, with `temperature` and `alpha`; needs a teacher); `backbone_lr_factor`: the
    head trains at lr and the rest at lr times this (transfer fine-tuning), the backbone frozen for the first
    `freeze_epochs`."""

    loss: Literal["ce", "kd"] = "ce"
    temperature: float = 4.0
    alpha: float = 0.9
    backbone_lr_factor: float | None = None
    freeze_epochs: int = 0

    def loss_fn(self, cfg: TrainConfig, teacher: nn.Module | None) -> LossFn:
        if self.loss == "kd":
            if teacher is None:
                raise ValueError("a distillation plan needs its teacher")
            return distillation_loss(teacher, self.temperature, self.alpha)
        return cross_entropy(cfg.label_smoothing)

    def param_groups(self, model: nn.Module, lr: float) -> list[dict] | None:
        return transfer_param_groups(model, lr, self.backbone_lr_factor) if self.backbone_lr_factor else None

    def epoch_hook(self) -> Callable[[int, nn.Module], None] | None:
        return freeze_backbone_for(self.freeze_epochs) if self.backbone_lr_factor else None

    def to_dict(self) -> dict:
        return asdict(self)


def train_on(model: nn.Module, bundle: DataBundle, cfg: TrainConfig, plan: FitPlan, *, teacher: nn.Module | None = None,
             split: str = "train", checkpoint_dir: str | os.PathLike | None = None, name: str = "train",
             on_epoch_end: Callable[[dict], None] | None = None, cluster: Cluster = LOCAL) -> TrainResult:
    """Train `model` on `split` ("transfer": with the unlabeled images, for distillation) with validation on
    val, each process of `cluster` on its shard; see training.fit."""
    channels = input_channels(model)
    train = bundle.batches(split, cfg.batch_size, train=True, augment=cfg.augment, seed=cfg.seed,
                           channels=channels, shard=cluster.shard)
    check_trainable(len(train.split), cfg.batch_size, cluster.shard)
    val = bundle.batches("val", EVAL_BATCH_PER_PROCESS * cluster.world, channels=channels, shard=cluster.shard)
    return fit(model, train, val, cfg, loss_fn=plan.loss_fn(cfg, teacher),
               param_groups=plan.param_groups(model, cfg.lr), on_epoch_start=plan.epoch_hook(),
               on_epoch_end=on_epoch_end, checkpoint_dir=checkpoint_dir, name=name, cluster=cluster)
