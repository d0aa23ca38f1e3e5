"""Post-training int8 quantization for CPU inference.

Two modes:
- "dynamic": Linear layers get int8 weights, activations are quantized on the fly (`quantize_dynamic`).
  For a CNN this touches only the classifier head, so expect little change.
- "static": every conv and linear gets int8 weights and int8 activations with scales calibrated on a few
  hundred training images; conv+bn+relu are fused first (FX graph mode).

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
from compression.models import check_supported, example_input, layer_sizes, quantization_info, require_spec

MODES = ("static", "dynamic")


def supported_backends() -> list[str]:
    return [b for b in torch.backends.quantized.supported_engines if b != "none"]


@contextmanager
def _quiet_deprecation():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", module=r"torch\.ao\..*")
        yield


def check_settings(mode: str, backend: str) -> None:
    if mode not in MODES:
        raise CompressionError(f"unknown quantization mode {mode!r}; use one of {', '.join(MODES)}")
    check_backend(backend)


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
             calibration: Iterable[torch.Tensor] | None, in_place: bool = False) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping, quantize_dynamic
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = backend
    model = (model if in_place else copy.deepcopy(model)).cpu().eval()
    if mode == "dynamic":
        return quantize_dynamic(model, _dynamic_targets(model), dtype=torch.qint8)
    prepared = prepare_fx(model, get_default_qconfig_mapping(backend), (example[:1].cpu().contiguous(),))
    with torch.no_grad():
        for images in calibration or ():
            # Grey images expanded to RGB have a zero channel stride; observers want a plain layout.
            prepared(images.cpu().contiguous())
    return _pool_instead_of_mean(convert_fx(prepared))


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
             backend: str = "x86", in_place: bool = False) -> nn.Module:
    """An int8 copy of `model` (left unchanged unless `in_place`: then it is converted, saving a copy of the
    weights for the largest models). Static mode runs `calibration` batches through observers.

    The copy's `shrinkflow_spec["quantization"]` records how to rebuild it (mode, backend, the float layer
    shapes) and the float model's weight count and MACs: int8 kernels hold the same weights and do the same
    multiply-accumulates, but quantized modules expose no parameters and torch's flop counter cannot see
    inside quantized ops.
    """
    check_settings(mode, backend)
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
        quantized = _convert(model, mode, backend, example, calibration, in_place)
    spec["quantization"] = {"mode": mode, "backend": backend, "float_layout": _float_layout(model),
                            "float_params": params, "float_nonzero_params": nonzero, "float_macs": macs}
    quantized.shrinkflow_spec = spec
    return quantized


def skeleton(float_model: nn.Module, settings: dict) -> nn.Module:
    """The quantized structure for `settings` with placeholder scales, ready for load_state_dict.
    `float_model` is used up (converted in place)."""
    with _quiet_deprecation():  # uncalibrated observers give placeholder scales; the loaded state replaces them
        quantized = _convert(float_model, settings["mode"], settings["backend"], example_input(float_model), None,
                             in_place=True)
    quantized.shrinkflow_spec = {**require_spec(float_model), "quantization": settings}
    return quantized


def set_engine(model: nn.Module) -> None:
    """Quantized kernels dispatch on a process-wide engine; make it the one the model was built for."""
    settings = quantization_info(model)
    if settings:
        torch.backends.quantized.engine = settings["backend"]
