"""Post-training int8 quantization for CPU inference.

Two modes:
- "dynamic": Linear layers get int8 weights, activations are quantized on the fly (`quantize_dynamic`).
  For a CNN this touches only the classifier head, so expect little change.
- "static": every conv and linear but the classifier gets int8 weights and int8 activations with scales
  calibrated on a few hundred training images; conv+bn+relu are fused first (FX graph mode).

The static recipe ("act8-float-head") starts from torch's default mapping for the backend and changes two things:
- Activations keep all 8 bits. For fbgemm/x86, torch's default gives them only 7 (`reduce_range`): CPUs without
  VNNI multiply uint8 activations by int8 weights and add pairs of products in int16, which saturates at full
  range. Taking that bit from the weights instead (7-bit weights, what onnxruntime's `reduce_range` does) avoids
  the same overflow, and a bit costs less on per-channel weights than on activations that share one scale per
  tensor. Other backends' defaults already use 8-bit activations and are kept.
- The classifier head, and whatever is computed from its output (SqueezeNet's ReLU and pooling), stays float.
  int8 logits share one scale across every class, so two classes whose logits are close can swap places: a
  changed prediction however good the features are. The head holds a small share of the MACs.
Models saved before the recipe was recorded were made with torch's default mapping as it is ("torch-default");
they load with it.

Why `torch.ao.quantization` although torch 2.14 marks it deprecated: it is the path whose int8 kernels
(fbgemm/oneDNN, backend "x86") run fast on CPU without compilation. Its successor, torchao's PT2E flow
(`prepare_pt2e` with `X86InductorQuantizer`), raises "Input partition has more than one output node" on
torchvision's ResNet under torch 2.14 + torchao 0.18, and its int8 speed comes only after `torch.compile`.
See docs/benchmarks.md for the measured numbers.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from contextlib import contextmanager

import torch
from torch import nn
from torchvision.models.swin_transformer import ShiftedWindowAttention

from compression import CompressionError
from compression.measure import count_macs, count_nonzero_params
from compression.models import (
    check_supported,
    example_input,
    head_name,
    layer_sizes,
    quantization_info,
    require_spec,
)

MODES = ("static", "dynamic")
# How static int8 is made (the module docstring says why). Files without a recorded recipe used LEGACY_RECIPE.
RECIPE, LEGACY_RECIPE = "act8-float-head", "torch-default"
RECIPES = (RECIPE, LEGACY_RECIPE)


def supported_backends() -> list[str]:
    return [b for b in torch.backends.quantized.supported_engines if b != "none"]


@contextmanager
def _quiet_deprecation():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", module=r"torch\.ao\..*")
        yield


def check_settings(mode: str, backend: str, recipe: str = RECIPE) -> None:
    if mode not in MODES:
        raise CompressionError(f"unknown quantization mode {mode!r}; use one of {', '.join(MODES)}")
    check_recipe(recipe)
    check_backend(backend)


def check_recipe(recipe: str) -> None:
    if recipe not in RECIPES:
        raise CompressionError(f"unknown static int8 recipe {recipe!r}; this version knows {', '.join(RECIPES)}")


def check_backend(backend: str) -> None:
    if backend not in supported_backends():
        raise CompressionError(f"quantization backend {backend!r} is not supported by this torch build; "
                               f"available: {', '.join(supported_backends())}")


def is_quantized(model: nn.Module) -> bool:
    return bool(quantization_info(model))


def _float_layout(model: nn.Module) -> dict:
    """What a loader needs to rebuild the (trimmed, pruned) float model before quantizing it again."""
    return {"layer_sizes": layer_sizes(model), "shapes": {k: list(v.shape) for k, v in model.state_dict().items()}}


def _convert(model: nn.Module, mode: str, backend: str, example: torch.Tensor,
             calibration: Iterable[torch.Tensor] | None, in_place: bool = False, recipe: str = RECIPE) -> nn.Module:
    from torch.ao.quantization import quantize_dynamic
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = backend
    model = (model if in_place else copy.deepcopy(model)).cpu().eval()
    if mode == "dynamic":
        return quantize_dynamic(model, _dynamic_targets(model), dtype=torch.qint8)
    prepared = prepare_fx(model, _static_mapping(model, backend, recipe), (example[:1].cpu().contiguous(),))
    with torch.no_grad():
        for images in calibration or ():
            # Grey images expanded to RGB have a zero channel stride; observers want a plain layout.
            prepared(images.cpu().contiguous())
    quantized = _pool_instead_of_mean(convert_fx(prepared))
    return quantized if recipe == LEGACY_RECIPE else _float_output(quantized)


def _static_mapping(model: nn.Module, backend: str, recipe: str):
    """The QConfigMapping of `recipe`: torch's default for the backend, as it is for LEGACY_RECIPE; for RECIPE
    with full-range activations and the classifier head (and what follows it) left float."""
    from torch.ao.quantization import get_default_qconfig_mapping

    mapping = get_default_qconfig_mapping(backend)
    if recipe == LEGACY_RECIPE:
        return mapping
    mapping.set_global(_full_range_activations(mapping.global_qconfig))
    for pattern, qconfig in list(mapping.object_type_qconfigs.items()):
        mapping.set_object_type(pattern, _full_range_activations(qconfig))
    for name in float_tail(model):
        mapping.set_module_name(name, None)
    return mapping


def _full_range_activations(qconfig):
    """`qconfig` with 8-bit activations and 7-bit int8 weights where it had 7-bit (reduce_range) activations:
    either keeps a uint8 x int8 pair of products within int16 on CPUs without VNNI."""
    from torch.ao.quantization import QConfig

    activation = getattr(getattr(qconfig, "activation", None), "p", None)
    if activation is None or not activation.keywords.get("reduce_range"):
        return qconfig
    weight = qconfig.weight
    if getattr(getattr(weight, "p", None), "keywords", {}).get("dtype") == torch.qint8:
        weight = weight.with_args(quant_min=-64, quant_max=63)
    return QConfig(activation=qconfig.activation.with_args(reduce_range=False), weight=weight)


def float_tail(model: nn.Module) -> list[str]:
    """Qualified names of the classifier head and of every module computed from its output (SqueezeNet's ReLU
    and pooling after its conv head), in the graph that FX quantization traces."""
    from torch.ao.quantization.fx.tracer import QuantizationTracer

    head = head_name(model)
    reached, names = set(), [head]
    for node in QuantizationTracer([], []).trace(model).nodes:  # in execution order
        if (node.op == "call_module" and node.target == head) or reached.intersection(node.all_input_nodes):
            reached.add(node)
            if node.op == "call_module" and node.target not in names:
                names.append(node.target)
    return names


_SHAPE_OPS = {"flatten", "reshape", "view", "squeeze", "contiguous"}


def _float_output(quantized: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Drop a quantize -> shape ops -> dequantize round trip on the way to the output: the float tail's logits
    would be rounded to int8 again by a function after it (SqueezeNet's torch.flatten), which a module-name
    qconfig cannot reach."""
    graph = quantized.graph
    output = next(node for node in graph.nodes if node.op == "output")
    dequantize = output.args[0]
    if not (isinstance(dequantize, torch.fx.Node) and dequantize.target == "dequantize"):
        return quantized
    node = dequantize.args[0]
    while node.op in ("call_function", "call_method") and getattr(node.target, "__name__", node.target) in _SHAPE_OPS:
        node = node.args[0]
    if node.op != "call_function" or node.target is not torch.quantize_per_tensor:
        return quantized
    for dropped in (dequantize, node):
        dropped.replace_all_uses_with(dropped.args[0])
        graph.erase_node(dropped)
    graph.eliminate_dead_code()
    quantized.recompile()
    return quantized


def _dynamic_targets(model: nn.Module) -> dict:
    """Every Linear layer, except those whose forward reads `.weight` directly instead of calling the layer
    (Swin's window attention calls F.linear(x, self.qkv.weight)): an int8 layer has no weight tensor."""
    from torch.ao.quantization import default_dynamic_qconfig

    targets = {nn.Linear: default_dynamic_qconfig}
    for name, module in model.named_modules():
        if isinstance(module, ShiftedWindowAttention):
            targets.update({f"{name}.qkv": None, f"{name}.proj": None})
    return targets


def _pool_instead_of_mean(quantized: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Rewrite `x.mean([2, 3])` (global pooling in MNASNet, ShuffleNet) as adaptive_avg_pool2d + flatten.

    int8 conv outputs are channels_last and the quantized mean over H, W keeps that memory format for a 2-D
    result, which raises "required rank 4 tensor to use channels_last format"; the pooling op takes them.
    """
    graph = quantized.graph
    for node in list(graph.nodes):
        if node.op != "call_method" or node.target != "mean" or len(node.args) != 2 or node.kwargs:
            continue
        if list(node.args[1]) not in ([2, 3], [-2, -1]):
            continue
        with graph.inserting_before(node):
            pooled = graph.call_function(nn.functional.adaptive_avg_pool2d, (node.args[0], 1))
            flat = graph.call_method("flatten", (pooled, 1))
        node.replace_all_uses_with(flat)
        graph.erase_node(node)
    quantized.recompile()
    return quantized


def quantize(model: nn.Module, mode: str, example: torch.Tensor, calibration: Iterable[torch.Tensor] | None = None,
             backend: str = "x86", in_place: bool = False, recipe: str = RECIPE) -> nn.Module:
    """An int8 copy of `model` (left unchanged unless `in_place`: then it is converted, saving a copy of the
    weights for the largest models). Static mode runs `calibration` batches through observers, using `recipe`.

    The copy's `shrinkflow_spec["quantization"]` records how to rebuild it (mode, backend, static recipe, the
    float layer shapes) and the float model's weight count and MACs: int8 kernels hold the same weights and do the same
    multiply-accumulates, but quantized modules expose no parameters and torch's flop counter cannot see
    inside quantized ops.
    """
    check_settings(mode, backend, recipe)
    spec = dict(require_spec(model))
    check_supported(spec["arch"], f"quantize-{mode}")
    if is_quantized(model):
        raise CompressionError("model is already quantized")
    if mode == "static":
        calibration = list(calibration or ())
        if not calibration or sum(len(b) for b in calibration) == 0:
            raise CompressionError("static quantization needs calibration images; got none")
    params, nonzero = count_nonzero_params(model)
    macs = count_macs(model, example[:1])
    with _quiet_deprecation():
        quantized = _convert(model, mode, backend, example, calibration, in_place, recipe)
    spec["quantization"] = {"mode": mode, "backend": backend, **({"recipe": recipe} if mode == "static" else {}),
                            "float_layout": _float_layout(model), "float_params": params,
                            "float_nonzero_params": nonzero, "float_macs": macs}
    quantized.shrinkflow_spec = spec
    return quantized


def skeleton(float_model: nn.Module, settings: dict) -> nn.Module:
    """The quantized structure for `settings` with placeholder scales, ready for load_state_dict.
    `float_model` is used up (converted in place). Settings without a recipe (files saved before it was
    recorded) rebuild LEGACY_RECIPE."""
    recipe = settings.get("recipe", LEGACY_RECIPE)
    check_recipe(recipe)
    with _quiet_deprecation():  # uncalibrated observers give placeholder scales; the loaded state replaces them
        quantized = _convert(float_model, settings["mode"], settings["backend"], example_input(float_model), None,
                             in_place=True, recipe=recipe)
    quantized.shrinkflow_spec = {**require_spec(float_model), "quantization": settings}
    return quantized


def set_engine(model: nn.Module) -> None:
    """Quantized kernels dispatch on a process-wide engine; make it the one the model was built for."""
    settings = quantization_info(model)
    if settings:
        torch.backends.quantized.engine = settings["backend"]
