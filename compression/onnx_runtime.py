"""onnxruntime's side of a model: int8 by onnxruntime's own static quantizer, and accuracy of an ONNX file.

The int8 ONNX is QDQ format (QuantizeLinear/DequantizeLinear pairs around int8 weights, per-channel), its
activation ranges calibrated (MinMax) on the images the torch int8 model was calibrated on. onnxruntime
fuses the QDQ pairs into int8 kernels when it loads the file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from compression import CompressionError
from compression.accuracy import hits_count, ratio
from compression.export import run_onnx
from compression.fileio import atomic_write

log = logging.getLogger("shrinkflow")


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over in-memory batches."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self.input_name, self.batches = input_name, iter(batches)

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:  # the MinMax calibrator reads once; kept for the protocol
        pass


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def _preprocessed(src: Path, workdir: Path) -> Path:
    """Shape inference and graph optimisation first, as onnxruntime's quantization guide recommends;
    the float file itself when that step cannot handle the graph."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = workdir / "preprocessed.onnx"
    try:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
        return out
    except Exception as exc:  # noqa: BLE001 - optional step; the quantizer works on the plain file too
        log.info("onnx int8: pre-processing skipped (%s: %s)", type(exc).__name__, str(exc)[:120])
        return src


def quantize_onnx_static(float_path: str | os.PathLike, calibration: Iterable[torch.Tensor],
                         out_path: str | os.PathLike) -> Path:
    """Write the int8 (QDQ, per-channel weights) copy of the float ONNX file, calibrated on `calibration`
    batches of model input (normalised, the model's channels); atomic like every model file."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    batches = [x.cpu().numpy().astype(np.float32) for x in calibration if len(x)]
    if not batches:
        raise CompressionError("int8 ONNX needs calibration images; got none")
    float_path = Path(float_path)
    with tempfile.TemporaryDirectory(prefix="shrinkflow-ort-") as tmp:
        source = _preprocessed(float_path, Path(tmp))
        reader = _Calibration(_input_name(source), batches)

        def write(target: Path) -> None:
            quantize_static(str(source), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)

        atomic_write(out_path, write)
    return Path(out_path)


def onnx_accuracy(sess, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy of an onnxruntime session on (images, labels) batches."""
    correct = total = 0
    for x, y in batches:
        correct += hits_count(run_onnx(sess, x), y.cpu())
        total += len(y)
    return ratio(correct, total)
