"""The shrinkflow model file: architecture spec + tensors, loadable with torch.load(weights_only=True).

Trimmed and pruned models no longer match their torchvision class, so instead of pickling modules we store
how to rebuild the architecture (`shrinkflow_spec`) and the sizes of every conv, norm and linear layer;
loading rebuilds, resizes those layers and loads the tensors strictly.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from compression import CompressionError
from compression.fileio import torch_save_atomic
from compression.models import build_model, layer_sizes, require_spec, skip_random_init
from compression.quantization import is_quantized, set_engine, skeleton
from compression.trimming import apply_trim

FORMAT = "shrinkflow-model/1"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cpu(value):
    # Quantized linear layers keep (weight, bias) tuples and a dtype in their state_dict.
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, tuple):
        return tuple(_cpu(v) for v in value)
    return value


def _portable_state(model: nn.Module) -> OrderedDict:
    state = model.state_dict()
    portable = OrderedDict((k, _cpu(v)) for k, v in state.items())
    # Per-module format versions: quantized modules read their state differently without them.
    portable._metadata = getattr(state, "_metadata", None)
    return portable


def save_model(model: nn.Module, path: str | os.PathLike, meta: dict | None = None) -> str:
    """Write the model file atomically; returns its sha256."""
    payload = {
        "format": FORMAT,
        "spec": dict(require_spec(model)),
        "layer_sizes": layer_sizes(model) if not is_quantized(model) else {},
        "state_dict": _portable_state(model),
        "meta": meta or {},
    }
    torch_save_atomic(payload, path)
    return file_sha256(path)


def _resize_layers(model: nn.Module, sizes: dict[str, dict], state: dict) -> None:
    """Set the recorded size attributes, then give every parameter and buffer the shape it has in `state`
    (pruning also resizes tensors that belong to no sized layer: ConvNeXt's layer_scale, ViT's class token and
    position embedding)."""
    for name, attrs in sizes.items():
        module = model.get_submodule(name)
        for attr, value in attrs.items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for pname, param in list(module.named_parameters(recurse=False)):
            key = prefix + pname
            if key in state and state[key].shape != param.shape:
                setattr(module, pname, nn.Parameter(torch.empty_like(state[key], dtype=param.dtype)))
        for bname, buf in list(module.named_buffers(recurse=False)):
            key = prefix + bname
            if buf is not None and key in state and state[key].shape != buf.shape:
                module.register_buffer(bname, torch.empty_like(state[key], dtype=buf.dtype))


def rebuild(spec: dict, random_init: bool = True) -> nn.Module:
    """The float architecture a spec describes, before any pruning: built, adapted and trimmed as recorded.
    `random_init=False` leaves the weights uninitialised, for a caller that loads all of them."""
    with nullcontext() if random_init else skip_random_init():
        model = build_model(spec["arch"], spec["num_classes"], spec["in_channels"], spec["input_size"],
                            stem=spec.get("stem", "torchvision"))
    rebuilt = model.shrinkflow_spec.get("adaptations")
    if rebuilt != spec.get("adaptations"):
        raise CompressionError(f"{spec['arch']} at {spec['input_size']}x{spec['input_size']} now builds with "
                               f"adaptations {rebuilt}, the file was made with {spec.get('adaptations')}")
    if spec.get("trim"):
        apply_trim(model, spec["trim"])
    model.shrinkflow_spec = {k: v for k, v in spec.items() if k != "quantization"}
    return model


def load_state(model: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """load_state_dict with one readable line when the checkpoint was made for another model."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in state and isinstance(v, torch.Tensor) and isinstance(state[k], torch.Tensor)
                  and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        detail = (f"shape {mismatched[0]}" if mismatched else f"missing {missing[0]}" if missing
                  else f"unexpected {unexpected[0]}")
        raise CompressionError(f"{source} does not match the model ({len(missing)} missing, {len(unexpected)} "
                               f"unexpected, {len(mismatched)} mismatched keys; first: {detail})")
    model.load_state_dict(state)


def read_model_file(path: str | os.PathLike, expected_sha256: str | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CompressionError(f"model file {path} does not exist")
    if expected_sha256 and file_sha256(path) != expected_sha256:
        raise CompressionError(f"model file {path} does not match its recorded sha256; refusing to load it")
    try:
        # int8 tensors are rebuilt through torch's deprecated TypedStorage and quantized-tensor constructors;
        # that is torch.load's business, not a problem with the file.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a bad file fails torch.load in many unrelated types; all are refused
        raise CompressionError(f"cannot read model file {path}: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:120]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CompressionError(f"{path} is not a shrinkflow model file (format {FORMAT})")
    return payload


def load_model(path: str | os.PathLike, expected_sha256: str | None = None) -> nn.Module:
    """Rebuild and load a model written by save_model (trimmed and pruned ones included), in eval mode."""
    return model_from_payload(read_model_file(path, expected_sha256), str(path))


def model_from_payload(payload: dict, source: str) -> nn.Module:
    """The model of a model file already read (read_model_file), e.g. by a caller that also needs its meta."""
    spec = payload["spec"]
    model = rebuild(spec, random_init=False)
    quantization = spec.get("quantization")
    if quantization:
        # Rebuild the float model it was made from, then the same int8 structure, then load the int8 state.
        layout = quantization["float_layout"]
        _resize_layers(model, layout["layer_sizes"], {k: torch.empty(s) for k, s in layout["shapes"].items()})
        model = skeleton(model.eval(), quantization)
        set_engine(model)
    else:
        _resize_layers(model, payload["layer_sizes"], payload["state_dict"])
    load_state(model, payload["state_dict"], source)
    return model.eval()


def model_meta(path: str | os.PathLike) -> dict:
    return read_model_file(path)["meta"]
