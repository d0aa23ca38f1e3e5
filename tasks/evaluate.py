"""evaluate: every candidate on the test split, with the same measurements."""

from __future__ import annotations

from compression.comparison import evaluation_row
from compression.measure import evaluate_classifier, file_size, interleaved_speed, profile
from compression.models import example_input, input_channels
from tasks import plots
from tasks.config import PipelineConfig
from tasks.data import get_bundle
from tasks.outputs import Evaluated
from tasks.stage import stage_task
from tasks.training import load


@stage_task("evaluate", sections=("evaluate",))
def evaluate(cfg: PipelineConfig, ctx, run, workdir, data: dict, candidates: dict) -> Evaluated:
    bundle = get_bundle(cfg, data)
    settings = cfg.evaluate
    rows, models, examples = [], {}, {}
    timing = dict(threads=settings.threads, repeats=settings.latency_repeats,
                  throughput_batch=settings.throughput_batch, min_seconds=settings.throughput_seconds)
    for name, ref in candidates.items():
        model = models[name] = load(ref)
        example = examples[name] = example_input(model, settings.throughput_batch, size=bundle.input_size)
        metrics = evaluate_classifier(model, bundle.batches("test", cfg.data.eval_batch_size,
                                                            channels=input_channels(model)))
        costs = profile(model, example, **timing)
        costs["size_bytes"] = file_size(ref["path"])
        rows.append(evaluation_row(name, metrics["accuracy"], costs, sha256=ref["sha256"], path=ref["path"],
                                   stage_run_id=ref["run_id"], source_sha256=ref.get("source_sha256")))
        run.log_metrics({f"class_{i}": acc for i, acc in enumerate(metrics["per_class_accuracy"])},
                        prefix=f"{name}.per_class.")
        fig = plots.confusion_matrix(metrics["confusion"], bundle.classes,
                                     f"{name}: test accuracy {metrics['accuracy']:.4f}")
        run.log_figure(fig, f"confusion/{name}.png")
        plots.close(fig)
    speeds = interleaved_speed(models, examples, settings.speed_rounds,
                               measured={row["candidate"]: row for row in rows}, **timing)
    for row in rows:
        row.update(speeds[row["candidate"]])
        run.log_metrics({k: v for k, v in row.items() if k not in ("candidate", "threads")},
                        prefix=f"{row['candidate']}.")
    run.log_dict({"rows": rows}, "evaluation.json")
    return Evaluated(rows)

