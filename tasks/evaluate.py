"""evaluate: every candidate on the test split, with the same measurements."""

from __future__ import annotations

import os

import torch

from compression.measure import evaluate_classifier, profile
from tasks import plots
from tasks.config import PipelineConfig
from tasks.data import get_bundle
from tasks.stage import stage_task
from tasks.training import load


@stage_task("evaluate", sections=("evaluate",))
def evaluate(cfg: PipelineConfig, ctx, run, workdir, data: dict, candidates: dict) -> dict:
    bundle = get_bundle(cfg, data)
    settings = cfg.evaluate
    rows = []
    for name, ref in candidates.items():
        model = load(ref)
        channels = model.shrinkflow_spec["in_channels"]
        metrics = evaluate_classifier(model, bundle.batches("test", cfg.data.eval_batch_size, channels=channels))
        example = torch.zeros(settings.throughput_batch, channels, bundle.input_size, bundle.input_size)
        costs = profile(model, example, threads=settings.threads, repeats=settings.latency_repeats)
        costs["size_bytes"] = os.path.getsize(ref["path"])  # the model file as shipped
        row = {"candidate": name, "accuracy": metrics["accuracy"], **costs, "sha256": ref["sha256"],
               "path": ref["path"], "stage_run_id": ref["run_id"]}
        rows.append(row)
        run.log_metrics({k: v for k, v in row.items() if k not in ("candidate", "threads")}, prefix=f"{name}.")
        run.log_metrics({f"class_{i}": acc for i, acc in enumerate(metrics["per_class_accuracy"])},
                        prefix=f"{name}.per_class.")
        fig = plots.confusion_matrix(metrics["confusion"], bundle.classes, f"{name}: test accuracy {metrics['accuracy']:.4f}")
        run.log_figure(fig, f"confusion/{name}.png")
        plots.close(fig)
    run.log_dict({"rows": rows}, "evaluation.json")
    return {"rows": rows}
