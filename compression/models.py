"""Torchvision classification models by name, adapted to the task's channels, input size and classes.

Every model built here carries `model.shrinkflow_spec`: the arguments that rebuild its architecture
(plus any trimming applied later), which is what checkpoints store instead of pickled modules.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn
import torchvision

from compression import CompressionError


# ---------------------------------------------------------------- the spec

def model_spec(model: nn.Module) -> dict:
    """The model's `shrinkflow_spec`; {} for a model that build_model did not make."""
    return getattr(model, "shrinkflow_spec", {})


def require_spec(model: nn.Module) -> dict:
    if not hasattr(model, "shrinkflow_spec"):
        raise CompressionError("model has no shrinkflow_spec; build it with compression.models.build_model")
    return model.shrinkflow_spec


def update_spec(model: nn.Module, **changes) -> None:
    """Record architecture changes in the spec of a model that has one."""
    if hasattr(model, "shrinkflow_spec"):
        model.shrinkflow_spec.update(changes)


def arch_name(model: nn.Module) -> str:
    return model_spec(model).get("arch", type(model).__name__)


def input_channels(model: nn.Module) -> int:
    return require_spec(model)["in_channels"]


def quantization_info(model: nn.Module) -> dict | None:
    """How an int8 model was made (mode, backend, float layout and costs); None for a float model."""
    return model_spec(model).get("quantization")


def example_input(model: nn.Module, batch: int = 1, size: int | None = None) -> torch.Tensor:
    """Zeros shaped like the model's input: [batch, channels, size, size], size defaulting to the spec's."""
    spec = require_spec(model)
    size = size or spec["input_size"]
    return torch.zeros(batch, spec["in_channels"], size, size)


# ---------------------------------------------------------------- building

def list_architectures() -> list[str]:
    """Names of torchvision's image classification models."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _check_arch(arch: str) -> None:
    known = list_architectures()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known[:8])}, ..."
        raise CompressionError(f"unknown architecture {arch!r}{hint}")


def _parent(model: nn.Module, qualified_name: str) -> tuple[nn.Module, str]:
    *path, leaf = qualified_name.split(".")
    parent = model
    for part in path:
        parent = getattr(parent, part)
    return parent, leaf


def first_conv_name(model: nn.Module) -> str:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name
    raise CompressionError(f"{type(model).__name__} has no Conv2d layer")


def head_name(model: nn.Module) -> str:
    """Qualified name of the classifier: the last Linear layer."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise CompressionError(f"{type(model).__name__} has no Linear classifier head")
    return names[-1]


def head(model: nn.Module) -> nn.Linear:
    return model.get_submodule(head_name(model))


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Give the model a freshly initialised classifier with `num_classes` outputs (transfer learning)."""
    name = head_name(model)
    old = model.get_submodule(name)
    if old.out_features == num_classes:
        return model
    parent, leaf = _parent(model, name)
    setattr(parent, leaf, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    update_spec(model, num_classes=num_classes)
    return model


def adapt_input_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """Swap the stem convolution for one taking `in_channels`; pretrained RGB filters are summed for grey input."""
    name = first_conv_name(model)
    old: nn.Conv2d = model.get_submodule(name)
    update_spec(model, in_channels=in_channels)
    if old.in_channels == in_channels:
        return model
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    old.dilation, old.groups, old.bias is not None, old.padding_mode)
    with torch.no_grad():
        if in_channels == 1:
            new.weight.copy_(old.weight.sum(dim=1, keepdim=True))
        else:
            mean = old.weight.mean(dim=1, keepdim=True)
            new.weight.copy_(mean.expand(-1, in_channels, -1, -1) * old.in_channels / in_channels)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    parent, leaf = _parent(model, name)
    setattr(parent, leaf, new)
    return model


def _forward_ok(model: nn.Module, size: int) -> bool:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input(model, size=size))
        return True
    except RuntimeError:
        return False
    finally:
        model.train(was_training)


def _shrink_stem(model: nn.Module, arch: str) -> bool:
    """One step of small-input adaptation for families whose downsampling runs the feature map to zero."""
    if arch.startswith("vgg"):
        pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
        if pools:
            model.features[pools[-1]] = nn.Identity()
            return True
    elif arch.startswith("densenet") and isinstance(model.features.pool0, nn.MaxPool2d):
        model.features.pool0 = nn.Identity()
        return True
    elif arch.startswith("convnext"):
        stem = model.features[0][0]
        if stem.stride[0] > 2:
            stem.stride, stem.padding = (2, 2), (1, 1)
            return True
    return False


def adapt_small_input(model: nn.Module, size: int) -> list[str]:
    """Make the model accept size x size input, changing as little as possible; returns what was changed."""
    arch = arch_name(model)
    changes = []
    while not _forward_ok(model, size):
        if not _shrink_stem(model, arch):
            raise CompressionError(f"architecture {arch} cannot take {size}x{size} input")
        changes.append("shrink-stem")
    return changes


def build_model(arch: str, num_classes: int, in_channels: int = 3, input_size: int = 224,
                weights: str | None = None) -> nn.Module:
    """A torchvision classifier by name, with the requested classes, input channels and input size.

    `weights` is a torchvision weights name (e.g. "DEFAULT", "IMAGENET1K_V1"); torchvision reads it from
    $TORCH_HOME/hub/checkpoints when present and downloads it otherwise.
    """
    _check_arch(arch)
    if num_classes < 2:
        raise CompressionError(f"num_classes must be >= 2, got {num_classes}")
    if weights:
        try:
            weights_enum = torchvision.models.get_model_weights(arch)
            resolved = weights_enum[weights] if weights != "DEFAULT" else weights_enum.DEFAULT
        except KeyError:
            options = [w.name for w in torchvision.models.get_model_weights(arch)]
            raise CompressionError(f"unknown weights {weights!r} for {arch}; choose from {options}") from None
        model = torchvision.models.get_model(arch, weights=resolved)
    else:
        model = torchvision.models.get_model(arch)
    # The spec goes on first: the adaptations below keep it current and read it.
    model.shrinkflow_spec = {
        "arch": arch,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "input_size": input_size,
        "trim": None,
    }
    replace_head(model, num_classes)
    adapt_input_channels(model, in_channels)
    adapt_small_input(model, input_size)
    return model


def count_params(model: nn.Module) -> int:
    """Weights and biases of the float model (int8 modules keep theirs in packed params, not counted here)."""
    return sum(p.numel() for p in model.parameters())


SHAPE_ATTRS = {
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.modules.batchnorm._BatchNorm: ("num_features",),
    nn.LayerNorm: ("normalized_shape",),
    nn.GroupNorm: ("num_groups", "num_channels"),
}


def layer_sizes(model: nn.Module) -> dict[str, dict]:
    """The size attributes of every conv, norm and linear layer (they change under pruning)."""
    sizes = {}
    for name, module in model.named_modules():
        for cls, attrs in SHAPE_ATTRS.items():
            if isinstance(module, cls):
                sizes[name] = {a: (list(v) if isinstance(v := getattr(module, a), tuple) else v) for a in attrs}
    return sizes
