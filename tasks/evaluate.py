"""evaluate: every candidate on the test split, with the same measurements. The test logits are kept in a
file beside the results, which the fidelity stage reads instead of running every model over the split again."""

from __future__ import annotations

from pathlib import Path

import torch

from compression.checkpoint import file_sha256
from compression.comparison import evaluation_row
from compression.fileio import torch_save_atomic
from compression.measure import classification_metrics, file_size, interleaved_speed, profile
from compression.models import example_input, input_channels
from compression.training import predict
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
    rows, models, examples, test_logits = [], {}, {}, {}
    timing = dict(threads=settings.threads, repeats=settings.latency_repeats,
                  throughput_batch=settings.throughput_batch, min_seconds=settings.throughput_seconds)
    for name, ref in candidates.items():
        model = models[name] = load(ref)
        example = examples[name] = example_input(model, settings.throughput_batch, size=bundle.input_size)
        logits, labels = predict(model, bundle.batches("test", cfg.data.eval_batch_size,
                                                       channels=input_channels(model)))
        metrics = classification_metrics(logits, labels, logits.shape[1])
        test_logits[name] = logits
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
    return Evaluated(rows, test_logits=save_logits(workdir / "test_logits.pt", test_logits, labels))


def save_logits(path: Path, logits: dict[str, torch.Tensor], labels: torch.Tensor) -> dict:
    """The logits of every candidate and the labels in one file; its path and sha256, like a model ref's."""
    torch_save_atomic({"logits": logits, "labels": labels}, path)
    return {"path": str(path), "sha256": file_sha256(path)}


def load_logits(ref: dict | None, names) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
    """({name: logits}, labels) of `names` from a file save_logits wrote; None without one, or when it lacks
    one of them or changed since (then the caller runs the models)."""
    if not ref or not Path(ref["path"]).is_file() or file_sha256(ref["path"]) != ref["sha256"]:
        return None
    stored = torch.load(ref["path"], weights_only=True)
    if not set(names) <= set(stored["logits"]):
        return None
    return {name: stored["logits"][name] for name in names}, stored["labels"]

