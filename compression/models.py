"""Torchvision classification models by name, adapted to the task's channels, input size and classes.

Every model built here carries `model.shrinkflow_spec`: the arguments that rebuild its architecture
(plus any trimming applied later), which is what checkpoints store instead of pickled modules.
"""

from __future__ import annotations

import difflib
import threading
from contextlib import contextmanager

import torch
import torchvision
from torch import nn
from torchvision.models import vision_transformer
from torchvision.models.vision_transformer import VisionTransformer

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


FAMILIES = ("resnet", "resnext", "wide_resnet", "mobilenet_v2", "mobilenet_v3", "efficientnet_v2", "efficientnet",
            "regnet", "convnext", "densenet", "shufflenet", "mnasnet", "squeezenet", "vgg", "alexnet", "googlenet",
            "inception", "vit", "swin_v2", "swin", "maxvit")


def family(arch: str) -> str:
    """The torchvision family an architecture name belongs to ("mobilenet_v3_small" -> "mobilenet_v3")."""
    name = arch.lower()
    return next((f for f in FAMILIES if name.startswith(f)), name)


# Stages a family cannot do, with the one-line reason. The stages check this before doing any work.
REFUSALS = {
    ("maxvit", "build"): "MaxViT's 7x7 block/grid partitions need 224x224 input (or a multiple); smaller inputs are "
                         "not supported",
    ("squeezenet", "quantize-dynamic"): "SqueezeNet has no Linear layer (its classifier is a 1x1 conv), so dynamic "
                                        "int8 would quantize nothing; use static int8",
    # Depth trimming removes blocks with a skip connection (compression/trimming.py); these families have none.
    ("densenet", "trim"): "its dense layers concatenate their outputs, so removing one changes the next layer's input",
    ("shufflenet", "trim"): "its units split, concatenate and shuffle channels instead of adding a skip connection",
    ("squeezenet", "trim"): "its fire modules have no skip connection",
    ("googlenet", "trim"): "its inception modules have no skip connection",
    ("inception", "trim"): "its inception modules have no skip connection",
    ("vgg", "trim"): "it is a plain stack of layers with no skip connections",
    ("alexnet", "trim"): "it is a plain stack of layers with no skip connections",
    ("maxvit", "trim"): "its blocks (MBConv with block and grid attention) are not among the families depth trimming "
                        "handles",
}
STAGES = ("build", "trim", "prune", "quantize-static", "quantize-dynamic", "export")


def refusal(arch: str, stage: str) -> str | None:
    """Why `arch` cannot go through `stage`, or None when it can."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    return REFUSALS.get((family(arch), stage))


def check_supported(arch: str, stage: str) -> None:
    """Refuse, before any work, a stage that the architecture's family is known not to support."""
    reason = refusal(arch, stage)
    if reason:
        raise CompressionError(f"{arch}: {stage} is not supported: {reason}")


def check_stages(arch: str, stages: list[str]) -> None:
    """check_supported for every stage a run will reach, so that a refusal comes before the first one starts."""
    for stage in ("build", *stages):
        check_supported(arch, stage)


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


# Classifiers that are not the model's last Linear layer.
CONV_HEADS = {"squeezenet": "classifier.1"}  # a 1x1 conv per class, then ReLU and global average pooling


def head_name(model: nn.Module) -> str:
    """Qualified name of the classifier: the family's conv head, else the last Linear layer."""
    conv_head = CONV_HEADS.get(family(arch_name(model)))
    if conv_head:
        return conv_head
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise CompressionError(f"{type(model).__name__} has no Linear classifier head")
    return names[-1]


def head(model: nn.Module) -> nn.Linear | nn.Conv2d:
    return model.get_submodule(head_name(model))


def head_classes(model: nn.Module) -> int:
    layer = head(model)
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Give the model a freshly initialised classifier with `num_classes` outputs (transfer learning)."""
    name = head_name(model)
    old = model.get_submodule(name)
    if head_classes(model) == num_classes:
        return model
    if isinstance(old, nn.Conv2d):
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1, bias=old.bias is not None)
        nn.init.normal_(new.weight, mean=0.0, std=0.01)  # torchvision's init for SqueezeNet's final conv
        if new.bias is not None:
            nn.init.zeros_(new.bias)
    else:
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    parent, leaf = _parent(model, name)
    setattr(parent, leaf, new)
    if hasattr(model, "num_classes"):  # SqueezeNet keeps it; nothing reads it after init, but keep it true
        model.num_classes = num_classes
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


def _drop_last_pool(features: nn.Sequential) -> bool:
    pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
    if pools:
        features[pools[-1]] = nn.Identity()
    return bool(pools)


def _shrink_stem(model: nn.Module, arch: str) -> bool:
    """One step of small-input adaptation for families whose downsampling runs the feature map to zero."""
    kind = family(arch)
    if kind in ("vgg", "alexnet"):
        return _drop_last_pool(model.features)
    if kind == "densenet" and isinstance(model.features.pool0, nn.MaxPool2d):
        model.features.pool0 = nn.Identity()
        return True
    if kind == "convnext":
        stem = model.features[0][0]
        if stem.stride[0] > 2:
            stem.stride, stem.padding = (2, 2), (1, 1)
            return True
    if kind == "inception":
        for pool in ("maxpool2", "maxpool1"):  # the later one first: it costs the least resolution
            if isinstance(getattr(model, pool), nn.MaxPool2d):
                setattr(model, pool, nn.Identity())
                return True
    return False


# The stems a ResNet-family model can be built with: how its first conv and max-pool downsample the input.
# torchvision's (7x7/2 conv + 3x3/2 max-pool) is made for 224 px photos: at 28-32 px it leaves a 7x7 or 8x8
# map for the first block, which caps accuracy; "no-pool" halves that downsampling, "full-res" removes it
# (as CIFAR ResNets do) at about 4x and 16x the compute of the blocks. The first conv keeps its size and weights,
# so a pretrained stem stays pretrained.
STEMS = ("torchvision", "no-pool", "full-res")
STEM_FAMILIES = ("resnet", "resnext", "wide_resnet")


def stem_refusal(arch: str, stem: str) -> str | None:
    """Why `arch` cannot be built with `stem`, or None when it can."""
    if stem not in STEMS:
        return f"unknown stem {stem!r}; stems: {', '.join(STEMS)}"
    if stem != "torchvision" and family(arch) not in STEM_FAMILIES:
        return f"{arch}: stem {stem!r} applies to the ResNet family ({', '.join(STEM_FAMILIES)}) only"
    return None


def _set_stem(model: nn.Module, stem: str) -> None:
    """Give a freshly built ResNet-family model the stem `stem` (build_model checked it with stem_refusal)."""
    if stem in ("no-pool", "full-res"):
        model.maxpool = nn.Identity()
    if stem == "full-res":
        model.conv1.stride = (1, 1)


def adapt_small_input(model: nn.Module, size: int) -> list[str]:
    """Make the model accept size x size input, changing as little as possible; returns what was changed."""
    arch = arch_name(model)
    changes = []
    while not _forward_ok(model, size):
        if not _shrink_stem(model, arch):
            raise CompressionError(f"architecture {arch} cannot take {size}x{size} input")
        changes.append("shrink-stem")
    return changes


class PaddedVisionTransformer(VisionTransformer):
    """torchvision's ViT taking images smaller than a whole number of patches: its patch convolution zero-pads
    the input up to the patch grid the position embeddings were built for (28x28 with 16x16 patches: padded to
    32x32, a 2x2 grid). The token layout is torchvision's; it no longer reads `hidden_dim` or asserts the input
    size, so channel pruning and FX tracing work on it."""

    def _process_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_proj(x).flatten(2).transpose(1, 2)


def vit_grid_size(patch_size: int, input_size: int) -> int:
    """The image size a ViT is built for: input_size rounded up to whole patches."""
    return -(-input_size // patch_size) * patch_size


def _build_vit(arch: str, weights, input_size: int) -> nn.Module:
    patch = int(arch.rsplit("_", 1)[1])  # vit_b_16: 16x16 patches
    image_size = vit_grid_size(patch, input_size)
    model = torchvision.models.get_model(arch, image_size=image_size)
    if weights is not None:
        pretrained = torchvision.models.get_model(arch, weights=weights).state_dict()
        model.load_state_dict(vision_transformer.interpolate_embeddings(image_size, patch, pretrained))
    pad = -(-(image_size - input_size) // 2)
    model.conv_proj.padding = (pad, pad)
    model.__class__ = PaddedVisionTransformer
    return model


def _construct(arch: str, weights, input_size: int) -> nn.Module:
    """torchvision's model, built for classification at `input_size` (no auxiliary heads, no ImageNet-only
    input transform); `weights` is a resolved torchvision weights enum or None."""
    kind = family(arch)
    if kind == "vit":
        return _build_vit(arch, weights, input_size)
    # torchvision refuses aux_logits=False beside weights (it loads them into the auxiliary heads first).
    kwargs = {"aux_logits": False} if kind in ("googlenet", "inception") and weights is None else {}
    model = torchvision.models.get_model(arch, weights=weights, **kwargs)
    if getattr(model, "aux_logits", False):
        model.aux_logits = False  # in train mode the model would return (logits, aux logits)
        for aux in ("aux1", "aux2", "AuxLogits"):
            if hasattr(model, aux):
                setattr(model, aux, None)
    return model


def build_model(arch: str, num_classes: int, in_channels: int = 3, input_size: int = 224,
                weights: str | None = None, stem: str = "torchvision") -> nn.Module:
    """A torchvision classifier by name, with the requested classes, input channels and input size.

    `weights` is a torchvision weights name (e.g. "DEFAULT", "IMAGENET1K_V1"); torchvision reads it from
    $TORCH_HOME/hub/checkpoints when present and downloads it otherwise. What the small-input adaptation
    changed is recorded in the spec's "adaptations" (rebuilding from the spec must make the same changes).
    `stem`: one of STEMS, recorded in the spec when it is not torchvision's.
    """
    _check_arch(arch)
    check_supported(arch, "build")
    if reason := stem_refusal(arch, stem):  # before any weights are fetched
        raise CompressionError(reason)
    if num_classes < 2:
        raise CompressionError(f"num_classes must be >= 2, got {num_classes}")
    resolved = None
    if weights:
        try:
            weights_enum = torchvision.models.get_model_weights(arch)
            resolved = weights_enum[weights] if weights != "DEFAULT" else weights_enum.DEFAULT
        except KeyError:
            options = [w.name for w in torchvision.models.get_model_weights(arch)]
            raise CompressionError(f"unknown weights {weights!r} for {arch}; choose from {options}") from None
    model = _construct(arch, resolved, input_size)
    _set_stem(model, stem)
    if getattr(model, "transform_input", False) and in_channels != 3:
        model.transform_input = False  # it re-normalises three ImageNet channels
    # The spec goes on first: the adaptations below keep it current and read it.
    model.shrinkflow_spec = {
        "arch": arch,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "input_size": input_size,
        "trim": None,
    }
    if stem != "torchvision":  # specs of models with torchvision's stem stay as they were before stems existed
        model.shrinkflow_spec["stem"] = stem
    replace_head(model, num_classes)
    adapt_input_channels(model, in_channels)
    changes = adapt_small_input(model, input_size)
    if isinstance(model, PaddedVisionTransformer):
        changes.insert(0, f"vit-image-size-{model.image_size}")
    if changes:
        model.shrinkflow_spec["adaptations"] = changes
    return model


INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "xavier_uniform_",
                  "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")


@contextmanager
def skip_random_init():
    """Build without drawing initial weights in this thread (strict loading replaces every parameter): a
    600M-weight model spends most of its build time there. Other threads keep initialising normally."""
    owner = threading.get_ident()
    saved = {name: getattr(nn.init, name) for name in INIT_FUNCTIONS}

    def skipping(original):
        def init(tensor, *args, **kwargs):
            return tensor if threading.get_ident() == owner else original(tensor, *args, **kwargs)
        return init

    try:
        for name, original in saved.items():
            setattr(nn.init, name, skipping(original))
        yield
    finally:
        for name, original in saved.items():
            setattr(nn.init, name, original)


def count_params(model: nn.Module) -> int:
    """Weights and biases of the float model (int8 modules keep theirs in packed params, not counted here)."""
    return sum(p.numel() for p in model.parameters())


SHAPE_ATTRS = {
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.modules.batchnorm._BatchNorm: ("num_features",),
    nn.LayerNorm: ("normalized_shape",),
    nn.GroupNorm: ("num_groups", "num_channels"),
    nn.MultiheadAttention: ("embed_dim", "kdim", "vdim", "head_dim", "num_heads"),
    VisionTransformer: ("hidden_dim",),
}


def layer_sizes(model: nn.Module) -> dict[str, dict]:
    """The size attributes of every conv, norm, linear and attention layer (they change under pruning)."""
    sizes = {}
    for name, module in model.named_modules():
        for cls, attrs in SHAPE_ATTRS.items():
            if isinstance(module, cls):
                sizes[name] = {a: (list(v) if isinstance(v := getattr(module, a), tuple) else v) for a in attrs}
    return sizes
