"""Depth trimming: drop whole residual blocks, keeping the teacher's weights in the blocks that stay.

Torch-Pruning removes channels, not layers, so this is ours. Only a block that maps its input to an output
of the same shape through a skip connection (output = x + f(x)) can go: the blocks after it still get the
input shape they were trained on. Blocks that change the shape always stay.

Where the blocks live, per family (a "container" is the nn.Sequential holding them; its module path is a
key of the trim plan):
- ResNet / ResNeXt / Wide ResNet: layer1..layer4, one stage each; a block with a downsample branch is fixed.
- MobileNetV2/V3: all blocks are in `features`; a stage is a run of blocks with the same output shape: a
  block that changes the shape (no residual connection) and the shape-preserving blocks after it.
- MNASNet: the stacks layers.8 .. layers.13; EfficientNet v1/v2: features.1 .. features.N (MBConv and
  FusedMBConv); RegNet: trunk_output.block1..4 (a block with a `proj` branch is fixed).
- ConvNeXt: the CNBlock stages features.1, 3, 5, 7; Swin (v1 and v2): the block stages features.1, 3, 5, 7;
  every block in them preserves the shape (downsampling happens between stages).
- ViT: encoder.layers, one stage.
Every stage keeps at least one block.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torchvision
from torch import nn
from torchvision.models import (
    convnext,
    efficientnet,
    mnasnet,
    mobilenetv2,
    mobilenetv3,
    regnet,
    resnet,
    swin_transformer,
    vision_transformer,
)

from compression import CompressionError
from compression.models import arch_name, model_spec, refusal, update_spec

# Block class -> whether an instance keeps the shape through a skip connection (so it can be removed).
REMOVABLE = {
    resnet.BasicBlock: lambda b: b.downsample is None,
    resnet.Bottleneck: lambda b: b.downsample is None,
    mobilenetv2.InvertedResidual: lambda b: b.use_res_connect,
    mobilenetv3.InvertedResidual: lambda b: b.use_res_connect,
    mnasnet._InvertedResidual: lambda b: b.apply_residual,
    efficientnet.MBConv: lambda b: b.use_res_connect,
    efficientnet.FusedMBConv: lambda b: b.use_res_connect,
    regnet.ResBottleneckBlock: lambda b: b.proj is None,
    convnext.CNBlock: lambda b: True,
    vision_transformer.EncoderBlock: lambda b: True,
    swin_transformer.SwinTransformerBlock: lambda b: True,  # SwinTransformerBlockV2 is a subclass
}

SUPPORTED = "ResNet, MobileNetV2/V3, MNASNet, EfficientNet v1/v2, RegNet, ConvNeXt, ViT, Swin"


@dataclass
class Stage:
    """Blocks of one container with the same output shape: `fixed` ones always stay, `free` ones may go."""

    container: str
    fixed: list[int]
    free: list[int]

    @property
    def size(self) -> int:
        return len(self.fixed) + len(self.free)


def _removable(block: nn.Module) -> bool | None:
    """True/False for a residual block that can/cannot go; None for anything that is not a block."""
    for cls, check in REMOVABLE.items():
        if isinstance(block, cls):
            return bool(check(block))
    return None


def _containers(model: nn.Module) -> list[str]:
    """Module paths of the nn.Sequential modules that directly hold residual blocks, in forward order."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Sequential)
            and any(_removable(child) is not None for child in module.children())]


def _container_stages(path: str, container: nn.Sequential) -> list[Stage]:
    # A block that changes the shape starts a new stage; shape-preserving blocks join the current one.
    stages: list[Stage] = []
    for index, block in enumerate(container.children()):
        removable = _removable(block)
        if removable is None:
            continue
        if not removable or not stages:
            stages.append(Stage(path, [], []))
        (stages[-1].free if removable else stages[-1].fixed).append(index)
    return stages


def trim_refusal(model: nn.Module) -> str | None:
    """Why `model` cannot be trimmed, or None when it can."""
    if _containers(model):
        return None
    generic = f"it has no shape-preserving residual blocks (depth trimming supports {SUPPORTED})"
    return refusal(arch_name(model), "trim") or generic


def check_trimmable(model: nn.Module) -> None:
    """Raise CompressionError naming the architecture and the stage when `model` cannot be trimmed."""
    why = trim_refusal(model)
    if why:
        # The wording of compression.models.check_supported: "<arch>: <stage> is not supported: <reason>".
        raise CompressionError(f"{arch_name(model)}: trim is not supported: {why}")


def check_trimmable_arch(arch: str) -> None:
    """check_trimmable by architecture name, for checks before any work (the pipeline's preflight): builds the
    bare torchvision model (no weights, no adaptation), which has the same blocks as the adapted one, on the
    meta device where it can (no memory, no initialisation: milliseconds even for 600M weights)."""
    try:
        with torch.device("meta"):
            model = torchvision.models.get_model(arch)
    except (RuntimeError, NotImplementedError):  # an initialiser that reads values (e.g. regnet_y_128gf)
        model = torchvision.models.get_model(arch)
    model.shrinkflow_spec = {"arch": arch}
    check_trimmable(model)


def find_stages(model: nn.Module) -> list[Stage]:
    """The model's stages in forward order (see the module docstring for what a stage is per family)."""
    check_trimmable(model)
    return [stage for path in _containers(model) for stage in _container_stages(path, model.get_submodule(path))]


def _stage_counts(model: nn.Module, stages: list[Stage], keep_per_stage: int | list[int]) -> list[int]:
    counts = [keep_per_stage] * len(stages) if isinstance(keep_per_stage, int) else list(keep_per_stage)
    if len(counts) != len(stages) or any(k < 1 for k in counts):
        sizes = ", ".join(str(s.size) for s in stages)
        raise CompressionError(f"keep_per_stage must be a number >= 1 or {len(stages)} of them "
                               f"({arch_name(model)} has {len(stages)} stages of {sizes} blocks), got {keep_per_stage}")
    return counts


def _choose(free: list[int], keep: int, strategy: str) -> list[int]:
    if strategy == "first" or not keep:
        return free[:keep]
    # "spread": evenly spaced, like DistilBERT's every-other-layer initialisation
    return [free[round(j * (len(free) - 1) / max(keep - 1, 1))] for j in range(keep)]


def plan_trim(model: nn.Module, keep_per_stage: int | list[int], strategy: str = "first") -> dict[str, list[int]]:
    """Indices of the children to keep in each container, keyed by the container's module path.

    `keep_per_stage` is how many blocks each stage keeps (one number, or one per stage). Blocks that change
    the shape always stay; the rest of the quota is filled from the shape-preserving blocks: the earliest
    ones ("first") or evenly spaced ones ("spread"). Children that are not blocks (e.g. a stem) stay.
    """
    stages = find_stages(model)
    counts = _stage_counts(model, stages, keep_per_stage)
    if strategy not in ("first", "spread"):
        raise CompressionError(f"unknown trim strategy {strategy!r}; choose first or spread")
    dropped: dict[str, set[int]] = {}
    for stage, keep in zip(stages, counts):
        quota = min(max(keep - len(stage.fixed), 0), len(stage.free))
        chosen = set(_choose(stage.free, quota, strategy))
        dropped.setdefault(stage.container, set()).update(i for i in stage.free if i not in chosen)
    return {path: [i for i in range(len(model.get_submodule(path))) if i not in gone]
            for path, gone in dropped.items()}


def _check_plan(model: nn.Module, plan: dict[str, list[int]]) -> None:
    containers = set(_containers(model))
    for path, kept in plan.items():
        if path not in containers:
            raise CompressionError(f"trim plan names {path!r}, which is not a block container of "
                                   f"{arch_name(model)} ({', '.join(sorted(containers))})")
        children = list(model.get_submodule(path).children())
        if any(not 0 <= i < len(children) for i in kept) or len(set(kept)) != len(kept):
            raise CompressionError(f"trim plan {kept} does not fit {path} with {len(children)} children")
        needed = [i for i, child in enumerate(children) if not _removable(child)]
        if missing := [i for i in needed if i not in kept]:
            raise CompressionError(f"trim plan for {path} drops children {missing}, which change the shape or "
                                   "are not blocks")


def _keep_children(container: nn.Sequential, kept: list[int]) -> None:
    items = list(container._modules.items())
    numbered = all(name.isdigit() for name, _ in items)
    container._modules.clear()
    for position, index in enumerate(sorted(kept)):
        name, module = items[index]
        # Numbered children are renumbered (what nn.Sequential(*kept) gives, and what older ResNet model
        # files hold); named ones (RegNet's block1-0, ViT's encoder_layer_0) keep their names.
        container.add_module(str(position) if numbered else name, module)


def apply_trim(model: nn.Module, plan: dict[str, list[int]]) -> nn.Module:
    """Keep only the planned children of each container, in place; the model's spec records the plan (as
    indices into the untrimmed model) so checkpoints can rebuild it."""
    check_trimmable(model)
    _check_plan(model, plan)
    for path, kept in plan.items():
        _keep_children(model.get_submodule(path), kept)
    earlier = model_spec(model).get("trim") or {}  # indices are relative to the already-trimmed model
    update_spec(model, trim={**earlier, **{
        path: [earlier[path][i] for i in sorted(kept)] if path in earlier else sorted(kept)
        for path, kept in plan.items()
    }})
    return model


def trim(model: nn.Module, keep_per_stage: int | list[int] = 1, strategy: str = "first") -> nn.Module:
    """A shallower copy of `model` initialised from its weights."""
    check_trimmable(model)
    student = copy.deepcopy(model)
    return apply_trim(student, plan_trim(student, keep_per_stage, strategy))
