"""ONNX export of a float model, its parity with PyTorch, and its onnxruntime CPU latency.

Quantized (torch.ao) models do not export: torch.export cannot trace their packed int8 ops, and the
legacy TorchScript exporter is gone. `export_onnx` says so instead of writing a file that is not the model.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compression import CompressionError
from compression.accuracy import agreement
from compression.checkpoint import file_sha256
from compression.fileio import atomic_write
from compression.measure import latency_inputs, timed_calls
from compression.models import arch_name, check_supported, quantization_info

log = logging.getLogger("shrinkflow")

ONNX_FILE_LIMIT_BYTES = 2**31  # protobuf's message limit; larger models need external data files


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, opset: int = 18) -> Path:
    """Write `model` as ONNX with a dynamic batch dimension (atomically: a failed export leaves no file)."""
    if quantization_info(model):
        raise CompressionError("quantized models cannot be exported to ONNX here (torch.export does not trace "
                               "torch.ao int8 ops); export the float model")
    check_supported(arch_name(model), "export")
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if weight_bytes >= ONNX_FILE_LIMIT_BYTES:
        raise CompressionError(f"{arch_name(model)}: export is not supported: its {weight_bytes / 2**30:.1f} GiB of "
                               "weights exceed the 2 GiB limit of a single-file ONNX model")
    model = model.eval().cpu()
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # The exporter reports progress with print(); keep it out of our logs.
        logging.getLogger("torch.onnx").setLevel(logging.WARNING)
        # Trace with two images: with one, torch.export specialises the batch dimension together with the 1x1
        # feature maps of small inputs (ConvNeXt at 28x28) and the dynamic batch fails its constraint check.
        sample = example[:2].cpu() if len(example) >= 2 else example[:1].cpu().expand(2, -1, -1, -1)
        program = torch.onnx.export(model, (sample.contiguous(),), dynamo=True, opset_version=opset,
                                    dynamic_shapes=({0: batch},), input_names=["images"], output_names=["logits"],
                                    verbose=False, report=False)
        atomic_write(path, lambda tmp: program.save(str(tmp), external_data=False))
    return Path(path)


def cached_export(model: nn.Module, example: torch.Tensor, cache_dir: str | os.PathLike, key: str,
                  opset: int = 18) -> tuple[Path, bool]:
    """`model`'s ONNX file in `cache_dir` under `key` (which must name everything the file depends on: the model
    file's digest, input shape, opset, torch version), and whether it was reused. A file is reused only while it
    matches the sha256 recorded beside it when it was exported: a damaged or truncated one is exported again.
    Concurrent exports of one key are safe: a digest that does not match the file only causes another export."""
    path = Path(cache_dir) / f"{key}.onnx"
    digest = path.with_name(path.name + ".sha256")
    if path.exists() and digest.exists() and digest.read_text().strip() == file_sha256(path):
        return path, True
    if path.exists():
        why = "does not match the sha256 recorded when it was exported" if digest.exists() else "has no recorded sha256"
        log.warning("[export] %s %s: exporting again", path.name, why)
    export_onnx(model, example, path, opset)
    atomic_write(digest, lambda tmp: tmp.write_text(file_sha256(path)))
    return path, False


def session(path: str | os.PathLike, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(sess, images: torch.Tensor) -> np.ndarray:
    return sess.run(None, {sess.get_inputs()[0].name: images.cpu().numpy().astype(np.float32)})[0]


@torch.no_grad()
def parity(model: nn.Module, sess, images: torch.Tensor) -> dict:
    """How far the ONNX logits are from PyTorch's on `images`: max abs difference and top-1 agreement."""
    reference = model.eval()(images).numpy()
    logits = run_onnx(sess, images)
    return {"max_abs_diff": float(np.abs(logits - reference).max()),
            "top1_agreement": agreement(reference, logits)}


def onnx_latency(sess, example: torch.Tensor, repeats: int = 30, throughput_batch: int = 64,
                 min_seconds: float = 0.25) -> dict:
    """onnxruntime speed measured as measure.cpu_latency measures PyTorch (threads are set on the session)."""
    return timed_calls(lambda x: run_onnx(sess, x), *latency_inputs(example, throughput_batch), repeats=repeats,
                       min_seconds=min_seconds)
