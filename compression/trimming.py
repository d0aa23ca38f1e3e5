"""Depth trimming: drop whole residual blocks, keeping the teacher's weights in the blocks that stay.

Torch-Pruning removes channels, not layers, so this is ours. In a ResNet stage only blocks that map their
input shape to the same output shape (no downsample branch) can go; the others are always kept.
"""

from __future__ import annotations

import copy

from torch import nn
from torchvision.models.resnet import ResNet

from compression import CompressionError
from compression.models import arch_name, model_spec, update_spec

STAGES = ("layer1", "layer2", "layer3", "layer4")


def _check_trimmable(model: nn.Module) -> None:
    if not isinstance(model, ResNet):
        raise CompressionError(f"trimming supports ResNet-family models only, not {arch_name(model)}")


def plan_trim(model: nn.Module, keep_per_stage: int | list[int], strategy: str = "first") -> dict[str, list[int]]:
    """Indices of the blocks to keep in each stage.

    `keep_per_stage` is how many blocks each stage keeps (one number, or one per stage). Blocks with a
    downsample branch change the shape and always stay; the rest of the quota is filled from the
    shape-preserving blocks: the earliest ones ("first") or evenly spaced ones ("spread", like DistilBERT's
    every-other-layer initialisation).
    """
    _check_trimmable(model)
    counts = [keep_per_stage] * len(STAGES) if isinstance(keep_per_stage, int) else list(keep_per_stage)
    if len(counts) != len(STAGES) or any(k < 1 for k in counts):
        raise CompressionError(f"keep_per_stage must be a number >= 1 or {len(STAGES)} of them, got {keep_per_stage}")
    if strategy not in ("first", "spread"):
        raise CompressionError(f"unknown trim strategy {strategy!r}; choose first or spread")
    plan = {}
    for stage, keep in zip(STAGES, counts):
        blocks = list(getattr(model, stage))
        fixed = [i for i, b in enumerate(blocks) if getattr(b, "downsample", None) is not None]
        free = [i for i, b in enumerate(blocks) if getattr(b, "downsample", None) is None]
        keep = min(max(keep - len(fixed), 0), len(free))
        if strategy == "first":
            chosen = free[:keep]
        else:
            chosen = [free[round(j * (len(free) - 1) / max(keep - 1, 1))] for j in range(keep)] if keep else []
        plan[stage] = sorted(set(fixed) | set(chosen))
    return plan


def apply_trim(model: nn.Module, plan: dict[str, list[int]]) -> nn.Module:
    """Keep only the planned blocks, in place; the model's spec records the plan so checkpoints can rebuild it."""
    _check_trimmable(model)
    for stage, kept in plan.items():
        blocks = getattr(model, stage)
        if any(not 0 <= i < len(blocks) for i in kept):
            raise CompressionError(f"trim plan {kept} does not fit {stage} with {len(blocks)} blocks")
        setattr(model, stage, nn.Sequential(*[blocks[i] for i in kept]))
    earlier = model_spec(model).get("trim")  # indices are relative to the already-trimmed model
    update_spec(model, trim={
        stage: [earlier[stage][i] for i in kept] if earlier else list(kept) for stage, kept in plan.items()
    })
    return model


def trim(model: nn.Module, keep_per_stage: int | list[int] = 1, strategy: str = "first") -> nn.Module:
    """A shallower copy of `model` initialised from its weights."""
    student = copy.deepcopy(model)
    return apply_trim(student, plan_trim(student, keep_per_stage, strategy))
