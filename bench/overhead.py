"""Overhead: the same training work as (a) a bare PyTorch loop, (b) the shrinkflow tasks with MLflow logging
(called as plain functions), (c) the same tasks in a Prefect flow. Work: load Fashion-MNIST (10 classes),
build ResNet-18, train E epochs with a validation pass per epoch, save the model. Each variant runs in a
fresh process; rounds interleave a, b, c so that machine noise hits all three alike. Prefect's start-up
(ephemeral server) is timed on its own, before the flow.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import PROJECT_ROOT, PYTHON, QUICK, WORK, Timer, prefect_env, save, say

ROUNDS = 1 if QUICK else 5
EPOCHS = 1 if QUICK else 4
PER_CLASS = 20 if QUICK else 200
BATCH = 64


def config(output_dir: Path, tracking_uri: str) -> dict:
    return {
        "name": "overhead", "seed": 0, "source": "scratch:resnet18", "output_dir": str(output_dir),
        "data": {"train_per_class": PER_CLASS, "val_per_class": 50, "test_per_class": 20, "download": False},
        "finetune": {"freeze_epochs": 0, "train": {"epochs": EPOCHS, "batch_size": BATCH, "optimizer": "adamw",
                                                   "lr": 0.002, "augment": False, "progress_seconds": 1e9}},
        "trim": {"enabled": False}, "distill": {"enabled": False}, "prune": {"enabled": False},
        "register": {"enabled": False}, "tracking": {"uri": tracking_uri, "experiment": "overhead"},
    }


def bare(cfg: dict, out: Path) -> dict:
    import torch
    from torch import nn

    from compression.data import load_dataset
    from compression.models import build_model

    with Timer() as t:
        d = cfg["data"]
        bundle = load_dataset(train_per_class=d["train_per_class"], val_per_class=d["val_per_class"],
                              test_per_class=d["test_per_class"], download=False, seed=0)
        torch.manual_seed(0)
        model = build_model("resnet18", 10, 1, 28)
        mean, std = bundle.mean[0], bundle.std[0]
        x = (bundle.train.images.float() / 255 - mean) / std
        y = bundle.train.labels
        xv = (bundle.val.images.float() / 255 - mean) / std
        opt = torch.optim.AdamW(model.parameters(), lr=0.002)
        loss_fn = nn.CrossEntropyLoss()
        epoch_times = []
        for _ in range(EPOCHS):
            epoch_start = time.perf_counter()
            model.train()
            order = torch.randperm(len(x))
            for i in range(len(x) // BATCH):
                idx = order[i * BATCH:(i + 1) * BATCH]
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x[idx]), y[idx]).backward()
                opt.step()
            epoch_times.append(time.perf_counter() - epoch_start)
            model.eval()
            with torch.no_grad():
                val_acc = (torch.cat([model(xv[i:i + 256]) for i in range(0, len(xv), 256)]).argmax(1)
                           == bundle.val.labels).float().mean().item()
        torch.save(model.state_dict(), out / "bare.pt")
    return {"seconds": t.seconds, "val_acc": val_acc, "epoch_times": epoch_times}


def task(cfg: dict, out: Path) -> dict:
    from tasks.config import config_from_dict
    from tasks.data import load_data
    from tasks.fetch import fetch_pretrained
    from tasks.finetune import finetune
    from tasks.mlflow_store import make_client
    from tasks.tracking import pipeline_run

    pc = config_from_dict(cfg)
    make_client(pc.tracking.uri)  # a new sqlite store is created and migrated once; not part of the work
    with Timer() as t:
        with pipeline_run(pc.tracking.uri, "overhead", "task", {}, {}) as (ctx, _):
            data = load_data.fn(pc, ctx)
            base = fetch_pretrained.fn(pc, ctx, data=data)
            teacher = finetune.fn(pc, ctx, data=data, base=base)
    return {"seconds": t.seconds, "val_acc": teacher["val_accuracy"],
            "epoch_times": finetune_epoch_times(pc.tracking.uri)}


def finetune_epoch_times(uri: str) -> list[float]:
    """Training seconds per epoch of the newest finetune run (as the stage logged them)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("overhead")
    run = client.search_runs([experiment.experiment_id], "tags.`shrinkflow.stage` = 'finetune'",
                             order_by=["attributes.start_time DESC"], max_results=1)[0]
    return [m.value for m in sorted(client.get_metric_history(run.info.run_id, "epoch_time"), key=lambda m: m.step)]


def flow(cfg: dict, out: Path) -> dict:
    from prefect import flow as prefect_flow

    from flows.pipeline import tracked_pipeline
    from tasks.config import config_from_dict
    from tasks.data import load_data
    from tasks.fetch import fetch_pretrained
    from tasks.finetune import finetune
    from tasks.mlflow_store import make_client

    make_client(cfg["tracking"]["uri"])

    @prefect_flow(name="noop")
    def noop() -> None:
        return None

    @prefect_flow(name="overhead-finetune")
    def finetune_only(raw: dict) -> dict:
        pc = config_from_dict(raw)
        with tracked_pipeline(pc, "overhead") as run:
            data = run(load_data)
            return run(finetune, data=data, base=run(fetch_pretrained, data=data))

    with Timer() as startup:
        noop()
    with Timer() as t:
        teacher = finetune_only(cfg)
    return {"seconds": t.seconds, "startup_seconds": startup.seconds, "val_acc": teacher["val_accuracy"],
            "epoch_times": finetune_epoch_times(cfg["tracking"]["uri"])}


VARIANTS = {"bare": bare, "task": task, "flow": flow}


def child(variant: str, round_: int) -> None:
    out = WORK / "overhead" / f"{variant}-{round_}"
    out.mkdir(parents=True, exist_ok=True)
    cfg = config(out / "outputs", f"sqlite:///{WORK / 'overhead' / 'mlflow.db'}")
    result = VARIANTS[variant](cfg, out)
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    import os

    runs = {v: [] for v in VARIANTS}
    env = {**os.environ, **prefect_env("overhead")}
    env.pop("PREFECT_API_URL", None)
    for round_ in range(ROUNDS):
        for variant in VARIANTS:
            say(f"overhead: {variant}, round {round_ + 1}/{ROUNDS}")
            proc = subprocess.run([PYTHON, __file__, "--variant", variant, "--round", str(round_)], cwd=PROJECT_ROOT,
                                  env=env, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"overhead {variant} failed:\n{proc.stderr[-3000:]}")
            runs[variant].append(json.loads(lines[-1][7:]))
    workload = {"model": "resnet18", "classes": 10, "train_images": 10 * PER_CLASS, "val_images": 500,
                "epochs": EPOCHS, "batch_size": BATCH, "rounds": ROUNDS}
    save("overhead", summarise(runs, workload))


def summarise(runs: dict[str, list[dict]], workload: dict) -> dict:
    med = {v: statistics.median(r["seconds"] for r in rs) for v, rs in runs.items()}
    best = {v: min(r["seconds"] for r in rs) for v, rs in runs.items()}
    # Side by side: each round's variant over that round's bare loop, then the median over rounds.
    round_ratios = {v: [r["seconds"] / b["seconds"] for r, b in zip(runs[v], runs["bare"])] for v in ("task", "flow")}
    train = {v: [sum(r["epoch_times"]) for r in rs] for v, rs in runs.items()}
    outside = {v: [r["seconds"] - t for r, t in zip(rs, train[v])] for v, rs in runs.items()}
    return {
        "workload": workload, "runs": runs, "median_seconds": med, "min_seconds": best,
        "round_ratios": round_ratios,
        "ratio_task_over_bare": statistics.median(round_ratios["task"]),
        "ratio_flow_over_bare": statistics.median(round_ratios["flow"]),
        "min_ratio_task_over_bare": best["task"] / best["bare"],
        "min_ratio_flow_over_bare": best["flow"] / best["bare"],
        "train_ratio": {v: statistics.median(t / b for t, b in zip(train[v], train["bare"])) for v in ("task", "flow")},
        "outside_training_seconds": {v: statistics.median(x) for v, x in outside.items()},
        "prefect_startup_seconds": [r["startup_seconds"] for r in runs["flow"]],
        "command": "python bench/overhead.py",
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=list(VARIANTS))
    parser.add_argument("--round", type=int, default=0)
    args = parser.parse_args()
    if args.variant:
        child(args.variant, args.round)
    else:
        main()
