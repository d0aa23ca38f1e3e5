"""export: ONNX files of the final float model and the teacher, each checked against PyTorch on the test
split (max abs logit difference, top-1 agreement) and timed in onnxruntime like `evaluate` times PyTorch.

An export that misses export.parity_atol is logged but not marked usable, so the registered model never
claims an ONNX format it does not have.
"""

from __future__ import annotations

import logging

from compression.checkpoint import file_sha256
from compression.export import export_onnx, onnx_latency, parity, session
from compression.models import example_input, input_channels
from tasks.config import PipelineConfig
from tasks.data import get_bundle
from tasks.stage import stage_task
from tasks.training import load

log = logging.getLogger("shrinkflow")

# Candidates in the order the pipeline makes them; the last float one present is "the final model".
FLOAT_ORDER = ("teacher", "student_kd", "pruned")


def export_targets(candidates: dict) -> dict:
    """The teacher and the last float model of the chain (they may be the same)."""
    present = [name for name in FLOAT_ORDER if candidates.get(name)]
    return {name: candidates[name] for name in dict.fromkeys(["teacher", present[-1]]) if name in present}


@stage_task("export", sections=("export", "evaluate"))
def export(cfg: PipelineConfig, ctx, run, workdir, data: dict, models: dict) -> dict:
    bundle = get_bundle(cfg, data)
    settings = cfg.export
    exports = {}
    for name, ref in models.items():
        model = load(ref)
        images = next(iter(bundle.batches("test", cfg.data.eval_batch_size, channels=input_channels(model))))[0]
        path = export_onnx(model, images, workdir / f"{name}.onnx", settings.opset)
        sess = session(path, cfg.evaluate.threads)
        check = parity(model, sess, images)
        example = example_input(model, cfg.evaluate.throughput_batch, size=bundle.input_size)
        speed = onnx_latency(sess, example, cfg.evaluate.latency_repeats, cfg.evaluate.throughput_batch,
                             cfg.evaluate.throughput_seconds)
        ok = check["max_abs_diff"] <= settings.parity_atol and check["top1_agreement"] == 1.0
        if not ok:
            log.warning("[export] %s: ONNX differs from PyTorch (max abs diff %.2e, top-1 agreement %.4f)",
                        name, check["max_abs_diff"], check["top1_agreement"])
        info = {**check, **speed, "size_bytes": path.stat().st_size, "parity_ok": int(ok)}
        run.log_metrics(info, prefix=f"{name}.onnx.")
        run.log_artifact(path, "onnx")
        exports[name] = {"candidate": name, "path": str(path), "sha256": file_sha256(path), "ok": ok, **info}
    run.log_dict({"exports": exports}, "exports.json")
    return {"exports": exports}


def with_onnx(rows: list[dict], exports: dict) -> list[dict]:
    """Evaluation rows with the onnxruntime speed and ONNX file of candidates that have a usable export."""
    merged = []
    for row in rows:
        found = exports.get(row["candidate"])
        if found and found["ok"]:
            row = {**row, "onnx_latency_p50_ms": found["latency_p50_ms"], "onnx_throughput_ips": found["throughput_ips"],
                   "onnx_path": found["path"]}
        merged.append(row)
    return merged
