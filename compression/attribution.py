"""Where a model looks, and whether a compressed model still looks there: occlusion maps and their agreement.

Occlusion needs forward passes only, so it works for torch.ao int8 models, which cannot be differentiated. A
patch of a baseline value slides over the (normalised) input; a pixel's attribution is the mean, over the
patches covering it, of how much covering it lowered the target class's logit. Same windows and
normalisation as captum's `Occlusion` with a window over all channels (the tests compare the two), written
here to batch occluded copies of many images per forward pass and to keep compression/ free of captum.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import product

import torch

from compression import CompressionError

# Default patch side as a fraction of the image side; the stride is half the patch (neighbouring patches
# overlap by half, so a feature is never missed by falling between two of them).
PATCH_FRACTION = 1 / 7
TOP_FRACTION = 0.1


def default_patch(size: int) -> int:
    """Patch side for an image side: about size / 7, at least 1."""
    return max(1, round(size * PATCH_FRACTION))


def _positions(size: int, patch: int, stride: int) -> list[int]:
    """Top-left offsets of the windows along one side, as captum places them (the last may overhang)."""
    return [k * stride for k in range(math.ceil((size - patch) / stride) + 1)]


def window_masks(height: int, width: int, patch: int, stride: int) -> torch.Tensor:
    """Bool masks [P, H, W] of the occlusion windows, row by row."""
    if not 1 <= patch <= min(height, width) or not 1 <= stride <= patch:
        raise CompressionError(f"occlusion needs 1 <= stride <= patch <= image side, got patch {patch}, "
                               f"stride {stride} on {height}x{width}")
    tops, lefts = _positions(height, patch, stride), _positions(width, patch, stride)
    masks = torch.zeros(len(tops) * len(lefts), height, width, dtype=torch.bool)
    for i, (top, left) in enumerate(product(tops, lefts)):
        masks[i, top:top + patch, left:left + patch] = True
    return masks


def _fill_values(x: torch.Tensor, baseline: float | str) -> torch.Tensor:
    """Per image and channel, the value a patch is filled with: [N, C, 1, 1]."""
    if baseline == "mean":
        return x.mean((2, 3), keepdim=True)
    if isinstance(baseline, str):
        raise CompressionError(f"baseline must be a number or 'mean', got {baseline!r}")
    return torch.full((*x.shape[:2], 1, 1), float(baseline), dtype=x.dtype, device=x.device)


def _check_inputs(x: torch.Tensor, targets: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] == 0 or not x.is_floating_point():
        what = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise CompressionError(f"occlusion needs a non-empty float input [N, C, H, W], got {what}")
    if not isinstance(targets, torch.Tensor) or targets.shape != (x.shape[0],) or targets.is_floating_point():
        raise CompressionError(f"occlusion needs one integer target per image ({x.shape[0]}), got "
                               f"{tuple(targets.shape) if isinstance(targets, torch.Tensor) else targets!r}")


@torch.no_grad()
def occlusion_maps(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, targets: torch.Tensor,
                   patch: int | None = None, stride: int | None = None, baseline: float | str = 0.0,
                   batch_size: int = 256) -> torch.Tensor:
    """Occlusion attribution [N, H, W] of `forward` (a model in eval mode, float or int8) at its input `x`
    (normalised, [N, C, H, W]) for class `targets` [N]: positive where covering the pixel lowers the logit.

    `baseline`: the fill value in input space (0.0 is the dataset's mean colour once normalised) or "mean"
    (each image's own per-channel mean). Patch defaults to about side / 7, stride to half the patch. Cost:
    one forward pass per window per image (about 169 windows with the defaults), `batch_size` at a time.
    Compare two models with the same targets (e.g. the reference's predictions). Runs where `x` is: the
    forward must take inputs on that device."""
    _check_inputs(x, targets)
    n, _, height, width = x.shape
    patch = patch or default_patch(min(height, width))
    masks = window_masks(height, width, patch, stride or max(1, patch // 2)).to(x.device)
    p = masks.shape[0]
    x, targets = x.float(), targets.long().to(x.device)
    fill = _fill_values(x, baseline)
    base = torch.cat([forward(chunk).float()[torch.arange(len(chunk), device=x.device), t]
                      for chunk, t in zip(x.split(batch_size), targets.split(batch_size))])
    drops = torch.empty(n * p, device=x.device)
    for start in range(0, n * p, batch_size):
        flat = torch.arange(start, min(start + batch_size, n * p), device=x.device)
        image, window = flat // p, flat % p
        occluded = torch.where(masks[window].unsqueeze(1), fill[image], x[image])
        logits = forward(occluded).float()
        drops[flat] = base[image] - logits[torch.arange(len(flat), device=x.device), targets[image]]
    coverage = masks.sum(0).float()
    return torch.einsum("np,phw->nhw", drops.view(n, p), masks.float()) / coverage


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks (from 0) of each row of a [N, M] tensor, float64, tied values sharing the mean of their ranks
    (occlusion maps are piecewise constant: ties are the rule, not the exception)."""
    order = values.argsort(dim=1, stable=True)
    ordered = values.gather(1, order)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = starts.long().cumsum(1) - 1
    position = torch.arange(values.shape[1], dtype=torch.float64).expand(values.shape[0], -1)
    total = torch.zeros_like(position).scatter_add_(1, group, position)
    count = torch.zeros_like(position).scatter_add_(1, group, torch.ones_like(position))
    mean_rank = (total / count.clamp(min=1)).gather(1, group)
    return torch.empty_like(position).scatter_(1, order, mean_rank)


def _row_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per row; 0 where a row is constant (no ranking to agree with)."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    denominator = (a.square().sum(1) * b.square().sum(1)).sqrt()
    return torch.where(denominator > 0, (a * b).sum(1) / denominator.clamp(min=1e-300), torch.zeros_like(denominator))


def _top_sets(values: torch.Tensor, k: int) -> torch.Tensor:
    """Bool [N, M]: the k largest of each row (ties: the lower pixel index first)."""
    top = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.zeros_like(values, dtype=torch.bool).scatter_(1, top, True)


def attribution_agreement(maps_a: torch.Tensor, maps_b: torch.Tensor, top_fraction: float = TOP_FRACTION) -> dict:
    """How alike two sets of maps [N, H, W] are, as means over the images: "spearman", the rank correlation
    (ties averaged; 0 for a constant map), and "top10_overlap", the share of the top `top_fraction` pixels
    (largest attributions, signed) the two maps have in common."""
    if not isinstance(maps_a, torch.Tensor) or not isinstance(maps_b, torch.Tensor) or maps_a.shape != maps_b.shape \
            or maps_a.dim() != 3 or maps_a.shape[0] == 0:
        raise CompressionError("attribution agreement needs two non-empty maps [N, H, W] of the same shape")
    if not 0 < top_fraction <= 1:
        raise CompressionError(f"top_fraction must lie in (0, 1], got {top_fraction}")
    a, b = maps_a.flatten(1).double(), maps_b.flatten(1).double()
    spearman = _row_correlation(average_ranks(a), average_ranks(b))
    k = max(1, math.ceil(top_fraction * a.shape[1]))
    overlap = (_top_sets(a, k) & _top_sets(b, k)).sum(1).double() / k
    return {"spearman": spearman.mean().item(), "top10_overlap": overlap.mean().item()}
