"""Knowledge distillation (Hinton et al., 2015) on the shared training engine."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from compression import CompressionError
from compression.training import LossFn


def check_kd_settings(temperature: float, alpha: float) -> None:
    if not temperature > 0:
        raise CompressionError(f"distillation temperature must be > 0, got {temperature}")
    if not 0 <= alpha <= 1:
        raise CompressionError(f"distillation alpha must be in [0, 1], got {alpha}")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y), KL averaged over the batch.

    The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones when T changes.
    Samples labelled -1 (the unlabeled transfer set) contribute the soft term only.
    """
    check_kd_settings(temperature, alpha)
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    labeled = targets >= 0
    hard = F.cross_entropy(student_logits[labeled], targets[labeled]) if labeled.any() else student_logits.sum() * 0
    return alpha * temperature ** 2 * soft + (1 - alpha) * hard


def distillation_loss(teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.9) -> LossFn:
    """A loss for `training.fit` that distils `teacher` (eval mode, no gradients) into the trained model. The
    teacher runs plainly in every training process (never wrapped in DDP: it has nothing to train)."""
    check_kd_settings(temperature, alpha)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss_fn(student, x, y):
        if next(teacher.parameters(), x).device != x.device:  # trained on a GPU: the teacher goes along, once
            teacher.to(x.device)
        with torch.no_grad():
            teacher_logits = teacher(x)
        logits = student(x)
        return kd_loss(logits, teacher_logits, y, temperature, alpha), logits

    return loss_fn
