"""export: ONNX files of the final float model and the teacher, each checked against PyTorch on the test
split (max abs logit difference, top-1 agreement), scored on it, and timed in onnxruntime like `evaluate`
times PyTorch. With a static int8 candidate, also its int8 ONNX made by onnxruntime's own quantizer (QDQ)
from the float ONNX of the same model, calibrated on the same training images as the torch int8 model and
gated like it: further than quantize.max_accuracy_drop below the float ONNX on the val split, it is
rejected.

An export that misses its gate is logged but not marked usable, so the registered model never claims an
ONNX file it does not have.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from compression.accuracy import agreement as top1_agreement
from compression.budget import int8_rejection
from compression.checkpoint import file_sha256
from compression.comparison import EvaluationRow
from compression.export import cached_export, onnx_latency, parity, run_onnx, session
from compression.fileio import atomic_write
from compression.measure import file_size
from compression.models import example_input, input_channels
from compression.onnx_runtime import onnx_accuracy, quantize_onnx_static
from tasks.config import PipelineConfig
from tasks.data import get_bundle
from tasks.outputs import Exported, OnnxExport
from tasks.quantize import calibration_batches
from tasks.stage import stage_task
from tasks.training import load

log = logging.getLogger("shrinkflow")


def _measure(cfg: PipelineConfig, bundle, path: Path, channels: int, size_of) -> tuple:
    """An onnxruntime session on the file, its test accuracy and its speed."""
    sess = session(path, cfg.evaluate.threads)
    accuracy = onnx_accuracy(sess, bundle.batches("test", cfg.data.eval_batch_size, channels=channels))
    speed = onnx_latency(sess, example_input(size_of, cfg.evaluate.throughput_batch, size=bundle.input_size),
                         cfg.evaluate.latency_repeats, cfg.evaluate.throughput_batch, cfg.evaluate.throughput_seconds)
    return sess, {"accuracy": accuracy, **speed, "size_bytes": file_size(path)}


def _onnx_file(model, images: torch.Tensor, ref: dict, workdir: Path, name: str, opset: int) -> Path:
    """`<name>.onnx` in this run's workdir, exported once per model file, input shape, opset and torch version:
    torch.export takes seconds per model, and the teacher's file is the same in every run that changed only
    what follows it. A file made before is checked against PyTorch like a new one (_float_export)."""
    shape = "x".join(str(d) for d in images.shape[1:])
    key = f"{ref['sha256'][:24]}-{shape}-opset{opset}-torch{torch.__version__}"
    made, reused = cached_export(model, images, workdir.parent / "by-model", key, opset)
    if reused:
        log.info("[export] %s: reusing %s, exported from the same model file before", name, made.name)
    path = workdir / f"{name}.onnx"
    atomic_write(path, lambda tmp: shutil.copyfile(made, tmp))
    return path


def _float_export(cfg: PipelineConfig, bundle, workdir: Path, name: str, ref: dict) -> OnnxExport:
    model = load(ref)
    channels = input_channels(model)
    images = next(iter(bundle.batches("test", cfg.data.eval_batch_size, channels=channels)))[0]
    path = _onnx_file(model, images, ref, workdir, name, cfg.export.opset)
    sess, info = _measure(cfg, bundle, path, channels, model)
    check = parity(model, sess, images)
    ok = check["max_abs_diff"] <= cfg.export.parity_atol and check["top1_agreement"] == 1.0
    if not ok:
        log.warning("[export] %s: ONNX differs from PyTorch (max abs diff %.2e, top-1 agreement %.4f)",
                    name, check["max_abs_diff"], check["top1_agreement"])
    return {"candidate": name, "path": str(path), "sha256": file_sha256(path), "ok": ok, "format": "float",
            "source_sha256": ref["sha256"], **check, **info, "parity_ok": int(ok)}


def _int8_export(cfg: PipelineConfig, bundle, workdir: Path, name: str, ref: dict,
                 float_export: OnnxExport) -> OnnxExport:
    """onnxruntime's int8 of the float ONNX; usable when its val accuracy is within the quantize gate."""
    model = load(ref)  # the torch int8 model: top-1 agreement with it is reported, not gated
    channels = input_channels(model)
    path = quantize_onnx_static(float_export["path"], calibration_batches(cfg, bundle, channels),
                                workdir / f"{name}.onnx")
    sess, info = _measure(cfg, bundle, path, channels, model)
    float_sess = session(float_export["path"], cfg.evaluate.threads)
    val = lambda: bundle.batches("val", cfg.data.eval_batch_size, channels=channels)  # noqa: E731 - a fresh val iterator per call
    float_accuracy, val_accuracy = onnx_accuracy(float_sess, val()), onnx_accuracy(sess, val())
    drop = float_accuracy - val_accuracy
    images = next(iter(bundle.batches("test", cfg.data.eval_batch_size, channels=channels)))[0]
    with torch.no_grad():
        agreement = top1_agreement(model(images), run_onnx(sess, images))
    ok = int8_rejection(float_accuracy, val_accuracy, cfg.quantize.max_accuracy_drop) is None
    if not ok:
        log.warning("[export] %s: onnxruntime int8 loses %.2f points on val (limit %.2f): not used",
                    name, 100 * drop, 100 * cfg.quantize.max_accuracy_drop)
    return {"candidate": name, "path": str(path), "sha256": file_sha256(path), "ok": ok, "format": "int8-qdq",
            "source_sha256": float_export["sha256"], "val_accuracy": val_accuracy, "val_accuracy_drop": drop,
            "top1_agreement_torch_int8": agreement, **info}


@stage_task("export", sections=("export", "evaluate", "quantize"))
def export(cfg: PipelineConfig, ctx, run, workdir, data: dict, models: dict, int8: dict | None = None) -> Exported:
    """`models`: float candidates to export; `int8`: the static int8 candidate, whose int8 ONNX is made from
    the float export of the model it was quantized from (one of `models`)."""
    bundle = get_bundle(cfg, data)
    exports = {name: _float_export(cfg, bundle, workdir, name, ref) for name, ref in models.items()}
    for name, ref in (int8 or {}).items():
        source = next((e for e in exports.values() if e["source_sha256"] == ref.get("source_sha256")), None)
        if source is None:
            raise RuntimeError(f"int8 candidate {name} was not quantized from any exported model")
        exports[name] = _int8_export(cfg, bundle, workdir, name, ref, source)
    for name, info in exports.items():
        run.log_metrics({k: float(v) for k, v in info.items() if isinstance(v, (int, float))}, prefix=f"{name}.onnx.")
        run.log_artifact(info["path"], "onnx")
        if not info["ok"]:
            run.set_tags({f"{name}.onnx.rejected": "true"})
    run.log_dict({"exports": exports}, "exports.json")
    return Exported(exports)


def with_onnx(rows: list[EvaluationRow], exports: dict[str, OnnxExport]) -> list[EvaluationRow]:
    """Evaluation rows with the onnxruntime speed, accuracy and ONNX file of candidates that have a usable
    export."""
    merged = []
    for row in rows:
        found = exports.get(row["candidate"])
        if found and found["ok"]:
            row = {**row, "onnx_latency_p50_ms": found["latency_p50_ms"],
                   "onnx_throughput_ips": found["throughput_ips"], "onnx_accuracy": found["accuracy"],
                   "onnx_path": found["path"], "onnx_format": found["format"]}
        merged.append(row)
    return merged
