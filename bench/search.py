"""Search benchmark, on the demo's task (configs/search-quickstart.yaml: classes 5-9, 100 labels per class)
with a MACs budget of 10% of the fine-tuned teacher and at most 1 point of val accuracy lost:

(a) the TPE search with N trials against the dense grid over the same space, at the same fidelity: best
    feasible val accuracy, and the trial-seconds each spent;
(c) the same search on 2 Dask workers against 1 (in fresh outputs, so that no trial is cached): trials
    per hour of the trial phase;
(d) hit rate: the share of completed trials within the MACs budget (every run above);
(e) the found model beside the hand-tuned configs/quickstart.yaml result on the same teacher.

Everything runs in one Prefect home and one sqlite MLflow store under bench/.work/search; the upstream
model is pretrained there first (configs/pretrain.yaml) and the teacher is fine-tuned once (cached).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import QUICK, QUICK_PIPELINE, Timer, fresh_store, machine, save, say, use_prefect_env

# Depth x KD temperature: 2 x 6 = 12 grid points; the search gets 5 trials. int8 is not a knob here: the
# config quantizes every trial's pruned model (seconds, against minutes of training) and keeps the int8 model
# when it loses at most quantize.max_accuracy_drop. As a knob it made grid points that differ only in int8,
# which share distillation and pruning through the stage cache, so the grid's cost hung on which twin ran first.
SPACE = {"trim.keep_per_stage": {"choices": [1, 2]}, "distill.temperature": {"low": 1.0, "high": 8.0}}
# BENCH_QUICK=1: a 2 x 2 grid, two trials per search (one per worker), one epoch per trial.
GRID_POINTS = 2 if QUICK else 6
SEARCH_TRIALS = 2 if QUICK else 5
WORKER_TRIALS = 2 if QUICK else 6  # (c): an even count, so that the 2-worker run does not end on one trial alone


def trial_times(uri: str, parent_run_id: str) -> dict:
    """Trial-seconds (the sum of the trial runs' durations) and the trial phase's wall time."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                              "tags.`shrinkflow.stage` = 'trial'", max_results=1000)
    spans = [(r.info.start_time / 1000, r.info.end_time / 1000) for r in runs if r.info.end_time]
    return {"trial_seconds": sum(end - start for start, end in spans), "trials_timed": len(spans),
            "phase_seconds": max(end for _, end in spans) - min(start for start, _ in spans)}


def summary(result: dict, uri: str) -> dict:
    plan = result["plan"]
    limit = plan["targets"][0]["limit"]  # this benchmark's searches have one target
    completed = [t for t in result["trials"] if t["state"] == "COMPLETE"]
    feasible = [t for t in completed if t["macs"] <= limit
                and t["accuracy"] >= plan["teacher"]["val_accuracy"] - 0.01 - 1e-9]
    return {"run_id": result["run_id"], "plan": plan, "trials": result["trials"], "table": result["table"],
            "registered": result["registered"], "completed": len(completed),
            "within_budget": sum(t["macs"] <= limit for t in completed),
            "best_feasible_val_accuracy": max((t["accuracy"] for t in feasible), default=None),
            **trial_times(uri, result["run_id"])}


def main() -> None:
    work = use_prefect_env("search")
    from flows.compress import compress
    from flows.pretrain import pretrain
    from flows.search import search

    uri = fresh_store(work)
    store = {"tracking.uri": uri, "output_dir": str(work / "outputs"), **(QUICK_PIPELINE if QUICK else {})}
    common = {**store, "search.space": json.dumps(SPACE), "search.budget.max": "10%", "quantize.enabled": True,
              **({"search.trial_epochs": 1} if QUICK else {})}
    results = {"machine": machine(), "space": SPACE, "grid_points": GRID_POINTS, "int8_every_trial": True}
    say("search: pretraining the upstream model (configs/pretrain.yaml)")
    pretrain("configs/pretrain.yaml", store)
    say("search: the hand-tuned demo compression (configs/quickstart.yaml)")
    results["quickstart"] = {"table": compress("configs/quickstart.yaml", store)["table"]}
    runs = {"search": {"search.trials": SEARCH_TRIALS, "search.parallel": 2, "search.top_k": 1},
            "grid": {"search.sampler": "grid", "search.grid_points": GRID_POINTS, "search.trials": 2 * GRID_POINTS,
                     "search.parallel": 2, "search.top_k": 0, "register.enabled": False},
            # (c): the same search (seed 1) on 1 and on 2 workers, each in outputs of its own so that no trial
            # comes from the cache; only the trial phase is timed.
            "search_1_worker": {"search.trials": WORKER_TRIALS, "search.parallel": 1, "search.seed": 1,
                                "search.top_k": 0, "register.enabled": False, "output_dir": str(work / "outputs-1w")},
            "search_2_workers": {"search.trials": WORKER_TRIALS, "search.parallel": 2, "search.seed": 1,
                                 "search.top_k": 0, "register.enabled": False, "output_dir": str(work / "outputs-2w")}}
    for name, overrides in runs.items():
        say(f"search: {name}")
        with Timer() as t:
            result = search("configs/search-quickstart.yaml", {**common, **overrides})
        results[name] = {**summary(result, uri), "seconds": t.seconds, "overrides": overrides}
        say(f"search: {name} took {t.seconds / 60:.1f} min; best feasible val accuracy "
            f"{results[name]['best_feasible_val_accuracy']}")
        save("search", {**results, "command": "python bench/search.py", "tracking_uri": uri})  # after each run


if __name__ == "__main__":
    main()
