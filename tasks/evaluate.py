"""evaluate: every candidate on the test split, with the same measurements."""

from __future__ import annotations

import os
import statistics

import torch

from compression.measure import cpu_latency, evaluate_classifier, profile
from tasks import plots
from tasks.config import PipelineConfig
from tasks.data import get_bundle
from tasks.stage import stage_task
from tasks.training import load


SPEED_KEYS = ("latency_p50_ms", "latency_p95_ms", "throughput_ips")


@stage_task("evaluate", sections=("evaluate",))
def evaluate(cfg: PipelineConfig, ctx, run, workdir, data: dict, candidates: dict) -> dict:
    bundle = get_bundle(cfg, data)
    settings = cfg.evaluate
    rows, models = [], {}
    for name, ref in candidates.items():
        model = models[name] = load(ref)
        channels = model.shrinkflow_spec["in_channels"]
        metrics = evaluate_classifier(model, bundle.batches("test", cfg.data.eval_batch_size, channels=channels))
        costs = profile(model, _example(settings, channels, bundle.input_size), threads=settings.threads,
                        repeats=settings.latency_repeats)
        costs["size_bytes"] = os.path.getsize(ref["path"])  # the model file as shipped
        rows.append({"candidate": name, "accuracy": metrics["accuracy"], **costs, "sha256": ref["sha256"],
                     "path": ref["path"], "stage_run_id": ref["run_id"], "source_sha256": ref.get("source_sha256")})
        run.log_metrics({f"class_{i}": acc for i, acc in enumerate(metrics["per_class_accuracy"])},
                        prefix=f"{name}.per_class.")
        fig = plots.confusion_matrix(metrics["confusion"], bundle.classes, f"{name}: test accuracy {metrics['accuracy']:.4f}")
        run.log_figure(fig, f"confusion/{name}.png")
        plots.close(fig)
    _interleaved_speed(rows, models, settings, bundle.input_size)
    for row in rows:
        run.log_metrics({k: v for k, v in row.items() if k not in ("candidate", "threads")}, prefix=f"{row['candidate']}.")
    run.log_dict({"rows": rows}, "evaluation.json")
    return {"rows": rows}


def _example(settings, channels: int, size: int) -> torch.Tensor:
    return torch.zeros(settings.throughput_batch, channels, size, size)


def _interleaved_speed(rows: list[dict], models: dict, settings, size: int) -> None:
    """Time every candidate again in `speed_rounds` rounds that take turns, and keep each one's median:
    a slow patch of a shared machine then hits all candidates alike instead of one of them."""
    samples = {row["candidate"]: [{k: row[k] for k in SPEED_KEYS}] for row in rows}
    for _ in range(settings.speed_rounds - 1):
        for row in rows:
            model = models[row["candidate"]]
            speed = cpu_latency(model, _example(settings, model.shrinkflow_spec["in_channels"], size),
                                settings.threads, repeats=settings.latency_repeats)
            samples[row["candidate"]].append({k: speed[k] for k in SPEED_KEYS})
    for row in rows:
        for key in SPEED_KEYS:
            row[key] = statistics.median(s[key] for s in samples[row["candidate"]])
