"""Pruning: unstructured magnitude masks (smaller files when sparse-stored, no dense speed-up) and
structured channel pruning that physically removes channels, built on Torch-Pruning's dependency graph."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
import torch_pruning as tp
from torch import nn
from torchvision.models import shufflenetv2
from torchvision.models.convnext import CNBlock
from torchvision.models.vision_transformer import VisionTransformer
from torchvision.ops.misc import MLP

from compression import CompressionError
from compression.measure import count_nonzero_params
from compression.models import arch_name, check_supported, count_params, family, head, update_spec

MLP_ONLY_FAMILIES = ("swin", "swin_v2")


def _check_ratio(ratio: float) -> None:
    if not 0 < ratio < 1:
        raise CompressionError(f"prune ratio must be in (0, 1), got {ratio}")


def sparsity_report(model: nn.Module) -> dict:
    total, nonzero = count_nonzero_params(model)
    return {"params": total, "nonzero_params": nonzero, "sparsity": 1 - nonzero / total}


def prune_unstructured(model: nn.Module, ratio: float, include_head: bool = False) -> dict:
    """Zero the `ratio` smallest-magnitude weights of all conv and linear layers (one global threshold),
    in place. Shapes and dense MACs do not change; only the count of non-zero parameters does.

    The threshold is the k-th smallest magnitude, found without copying the weights: torch.nn.utils.prune's
    masks hold two more copies of every weight and a global kthvalue another one plus int64 indices, which
    ~600M-weight models cannot afford."""
    _check_ratio(ratio)
    classifier = head(model)
    weights = [m.weight for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) and (include_head or m is not classifier)]
    total = sum(w.numel() for w in weights)
    with torch.no_grad():
        threshold = _kth_smallest_magnitude(weights, int(round(ratio * total)))
        pruned = 0
        for w in weights:
            if threshold is not None:
                w.masked_fill_(w.abs() <= threshold, 0.0)
            pruned += int((w == 0).sum())
    return {**sparsity_report(model), "weight_sparsity": pruned / total}


def _kth_smallest_magnitude(weights: list[torch.Tensor], k: int) -> torch.Tensor | None:
    """The k-th smallest |w| over all the tensors, by bisection over float32 bit patterns (they sort like the
    non-negative floats they encode): 31 counting passes and no copy of all the weights at once."""
    if k < 1:
        return None
    low, high = 0, 0x7F800000  # 0.0 and +inf
    while low < high:
        middle = (low + high) // 2
        value = torch.tensor(middle, dtype=torch.int32).view(torch.float32)
        if sum(int((w.abs() <= value).sum()) for w in weights) >= k:
            high = middle
        else:
            low = middle + 1
    return torch.tensor(low, dtype=torch.int32).view(torch.float32)


IMPORTANCE = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    "bn-scale": lambda: tp.importance.BNScaleImportance(),
}


def _shufflenet_ignored(model: nn.Module) -> list[nn.Module]:
    """Layers whose output channels cross ShuffleNet's channel shuffle (a reshape Torch-Pruning cannot map):
    the stem, the downsampling branch and each block's last conv. The blocks' inner widths stay prunable."""
    ignored = [model.conv1[0]]
    for block in model.modules():
        if isinstance(block, shufflenetv2.InvertedResidual):
            ignored += [m for m in block.branch1.modules() if isinstance(m, nn.Conv2d)]
            ignored.append(block.branch2[5])
    return ignored


class _OpaqueChannelShuffle(torch.autograd.Function):
    """channel_shuffle as one autograd node, so Torch-Pruning's graph does not trace its reshapes (it divides by
    zero there). Only used while the pruner traces the graph; no channel group that gets pruned passes through it."""

    @staticmethod
    def forward(ctx, x, groups):
        ctx.groups = groups
        return _CHANNEL_SHUFFLE(x, groups)

    @staticmethod
    def backward(ctx, grad):
        return _CHANNEL_SHUFFLE(grad, grad.size(1) // ctx.groups), None


_CHANNEL_SHUFFLE = shufflenetv2.channel_shuffle


@contextmanager
def _traceable(model: nn.Module):
    if not isinstance(model, shufflenetv2.ShuffleNetV2):
        yield
        return
    shufflenetv2.channel_shuffle = _OpaqueChannelShuffle.apply
    try:
        yield
    finally:
        shufflenetv2.channel_shuffle = _CHANNEL_SHUFFLE


def _pruner_options(model: nn.Module, round_to: int | None) -> dict:
    """Family-specific Torch-Pruning settings: what must not be pruned, and channel multiples."""
    ignored, unwrapped = [head(model)], []
    if isinstance(model, shufflenetv2.ShuffleNetV2):
        ignored += _shufflenet_ignored(model)
    if isinstance(model, VisionTransformer):
        heads = model.encoder.layers[0].num_heads
        # Whole heads' worth of channels, so embed_dim stays divisible by num_heads.
        round_to = math.lcm(round_to or 1, heads)
        unwrapped = [(model.class_token, 2), (model.encoder.pos_embedding, 2)]
    unwrapped += [(m.layer_scale, 0) for m in model.modules() if isinstance(m, CNBlock)]
    return {"ignored_layers": ignored, "round_to": round_to, "unwrapped_parameters": unwrapped or None}


def _mlp_widths(model: nn.Module) -> dict[nn.Module, int]:
    return {mlp: mlp[0].out_features for mlp in model.modules() if isinstance(mlp, MLP)}


def _prune_mlp_hidden(widths: dict[nn.Module, int], fraction: float, p: int, round_to: int | None) -> None:
    """Swin's structured pruning (Torch-Pruning cannot trace its shifted windows): keep (1 - fraction) of each
    transformer MLP's original hidden units (`widths`), those with the largest L-p norm over fc1's row and
    fc2's column."""
    for mlp, original in widths.items():
        fc1, fc2 = mlp[0], mlp[3]
        keep = original - int(original * fraction)
        if round_to:
            keep = max(round_to, keep - keep % round_to)
        if keep >= fc1.out_features:
            continue
        score = fc1.weight.detach().norm(p=p, dim=1) + fc2.weight.detach().norm(p=p, dim=0)
        kept = score.topk(keep).indices.sort().values
        with torch.no_grad():
            mlp[0] = _sliced_linear(fc1, rows=kept)
            mlp[3] = _sliced_linear(fc2, cols=kept)


def _sliced_linear(layer: nn.Linear, rows=None, cols=None) -> nn.Linear:
    weight = layer.weight[rows] if rows is not None else layer.weight[:, cols]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None)
    new.weight.copy_(weight)
    if layer.bias is not None:
        new.bias.copy_(layer.bias[rows] if rows is not None else layer.bias)
    return new


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
    Swin models prune their MLP hidden units only, by magnitude (see `_prune_mlp_hidden`).
    """
    _check_ratio(ratio)
    if importance not in IMPORTANCE:
        raise CompressionError(f"unknown pruning importance {importance!r}; choose from {sorted(IMPORTANCE)}")
    if iterative_steps < 1:
        raise CompressionError(f"iterative_steps must be >= 1, got {iterative_steps}")
    if importance == "taylor" and gradient_batches is None:
        raise CompressionError("taylor importance needs gradient batches")
    arch = arch_name(model)
    check_supported(arch, "prune")
    mlp_only = family(arch) in MLP_ONLY_FAMILIES
    if mlp_only and importance not in ("l1", "l2"):
        raise CompressionError(f"{arch}: prune prunes transformer MLP widths by magnitude; use importance l1 or l2")
    before = count_params(model)
    was_training = model.training
    model.eval()
    mlp_widths = _mlp_widths(model) if mlp_only else {}
    with torch.enable_grad():
        with _traceable(model):  # the dependency graph is traced once, here
            pruner = None if mlp_only else tp.pruner.BasePruner(
                model, example_inputs, importance=IMPORTANCE[importance](), pruning_ratio=ratio,
                iterative_steps=iterative_steps, global_pruning=global_pruning, **_pruner_options(model, round_to))
        for step in range(iterative_steps):
            if importance == "taylor":
                model.zero_grad()
                for x, y in gradient_batches:
                    nn.functional.cross_entropy(model(x), y).backward()
            if pruner:
                pruner.step()
                if isinstance(model, VisionTransformer):
                    model.hidden_dim = model.conv_proj.out_channels
            else:
                _prune_mlp_hidden(mlp_widths, ratio * (step + 1) / iterative_steps, 1 if importance == "l1" else 2,
                                  round_to)
            model.zero_grad(set_to_none=True)
            if after_step:
                after_step(step, model)
                model.eval()
    model.train(was_training)
    after = count_params(model)
    update_spec(model, pruned=True)
    return {"params_before": before, "params_after": after, "param_ratio": before / after}
