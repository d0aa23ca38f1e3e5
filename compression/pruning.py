"""Pruning: unstructured magnitude masks (smaller files when sparse-stored, no dense speed-up) and
structured channel pruning that physically removes channels, built on Torch-Pruning's dependency graph."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune
import torch_pruning as tp

from compression import CompressionError
from compression.measure import count_nonzero_params
from compression.models import count_params, head, update_spec


def _check_ratio(ratio: float) -> None:
    if not 0 < ratio < 1:
        raise CompressionError(f"prune ratio must be in (0, 1), got {ratio}")


def sparsity_report(model: nn.Module) -> dict:
    total, nonzero = count_nonzero_params(model)
    return {"params": total, "nonzero_params": nonzero, "sparsity": 1 - nonzero / total}


def prune_unstructured(model: nn.Module, ratio: float, include_head: bool = False) -> dict:
    """Zero the `ratio` smallest-magnitude weights of all conv and linear layers (one global threshold),
    made permanent. Shapes and dense MACs do not change; only the count of non-zero parameters does."""
    _check_ratio(ratio)
    classifier = head(model)
    targets = [(m, "weight") for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) and (include_head or m is not classifier)]
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=ratio)
    for module, name in targets:
        torch_prune.remove(module, name)
    pruned = sum(int((m.weight == 0).sum()) for m, _ in targets)
    total = sum(m.weight.numel() for m, _ in targets)
    return {**sparsity_report(model), "weight_sparsity": pruned / total}


IMPORTANCE = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    "bn-scale": lambda: tp.importance.BNScaleImportance(),
}


def prune_structured(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ratio: float,
    importance: str = "l2",
    iterative_steps: int = 1,
    round_to: int | None = None,
    global_pruning: bool = False,
    gradient_batches: Iterable | None = None,
    after_step: Callable[[int, nn.Module], None] | None = None,
) -> dict:
    """Remove output channels in place until `ratio` of each layer's channels is gone (per-layer ratio,
    so ratio 0.5 removes about 75% of the weights), in `iterative_steps` equal steps.

    The classifier is never pruned. "taylor" importance needs `gradient_batches` ((x, y) pairs) to compute
    gradients before each step. `after_step(step, model)` runs after each step, e.g. to fine-tune.
    """
    _check_ratio(ratio)
    if importance not in IMPORTANCE:
        raise CompressionError(f"unknown pruning importance {importance!r}; choose from {sorted(IMPORTANCE)}")
    if iterative_steps < 1:
        raise CompressionError(f"iterative_steps must be >= 1, got {iterative_steps}")
    if importance == "taylor" and gradient_batches is None:
        raise CompressionError("taylor importance needs gradient batches")
    before = count_params(model)
    was_training = model.training
    model.eval()
    with torch.enable_grad():
        pruner = tp.pruner.BasePruner(
            model, example_inputs, importance=IMPORTANCE[importance](), pruning_ratio=ratio,
            iterative_steps=iterative_steps, ignored_layers=[head(model)], round_to=round_to,
            global_pruning=global_pruning,
        )
        for step in range(iterative_steps):
            if importance == "taylor":
                model.zero_grad()
                for x, y in gradient_batches:
                    nn.functional.cross_entropy(model(x), y).backward()
            pruner.step()
            model.zero_grad(set_to_none=True)
            if after_step:
                after_step(step, model)
                model.eval()
    model.train(was_training)
    after = count_params(model)
    update_spec(model, pruned=True)
    return {"params_before": before, "params_after": after, "param_ratio": before / after}
