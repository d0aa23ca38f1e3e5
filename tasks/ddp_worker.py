"""One training process of a distributed stage; `torch.distributed.run` starts it (tasks/distributed.py on the
pipeline's machine, `shrinkflow node` on the others).

It joins the process group, receives the job from the leader (the lowest rank started with the job file:
model, teacher, data settings and manifests, training settings, the stage's MLflow run), builds its data and
trains on its shard of every batch. The leader alone logs each epoch to the stage's run, checkpoints, and
writes the trained model and the result; the other processes need nothing but the data at the same path.

    python -m tasks.ddp_worker JOB.json      (a process of the pipeline's machine)
    python -m tasks.ddp_worker --follow      (a process of another machine)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path

import torch

from compression import CompressionError, first_line
from compression.checkpoint import model_from_payload, read_model_file, save_model
from compression.data import DataBundle, load_dataset
from compression.distributed import Cluster, elect_leader, join, pick_backend
from compression.errors import is_bad_input
from compression.fit_plan import FitPlan, train_on
from compression.loader import default_workers
from compression.manifest import Manifest
from compression.train_config import TrainConfig

log = logging.getLogger("shrinkflow")


def read_job(path: str) -> dict:
    """The job file and everything it names, loaded, so that it can travel to processes on other machines."""
    job = json.loads(Path(path).read_text())
    job["model_payload"] = read_model_file(job["model"])
    job["teacher_payload"] = read_model_file(job["teacher"]) if job.get("teacher") else None
    job["manifest_objects"] = {name: Manifest.load(p) for name, p in (job.get("manifests") or {}).items()}
    return job


def local_resources(job: dict, local_world: int) -> tuple[int, int]:
    """(torch threads, loader workers) for one process of this machine: its cores shared by its processes."""
    cores = os.cpu_count() or 1
    threads = max(1, cores // local_world)
    requested = job["data"].get("loader_workers")
    workers = default_workers() if requested is None else min(requested, cores)
    return threads, (max(1, workers // local_world) if workers else 0)


def build_bundle(job: dict, workers: int) -> DataBundle:
    """The stage's data, as the pipeline's machine listed it; it must be the very data the stage recorded."""
    settings = {**job["data"], "loader_workers": workers, "crop_scale": tuple(job["data"]["crop_scale"])}
    bundle = load_dataset(**settings, manifests=job["manifest_objects"] or None)
    if bundle.digests != job["digests"]:
        raise CompressionError(f"the data under {settings.get('data_dir') or 'the data directory'} on this machine "
                               "is not the data the stage recorded (digests differ)")
    return bundle


def epoch_logger(job: dict):
    """The leader's per-epoch logging into the stage's MLflow run (the same call a local stage makes)."""
    from tasks.mlflow_store import make_client
    from tasks.tracking import StageRun

    tracking = job["tracking"]
    run = StageRun(make_client(tracking["uri"]), tracking["run_id"], tracking["stage"])
    return run, run.epoch_logger(tracking["prefix"])


def train(cluster: Cluster, job: dict) -> None:
    threads, workers = local_resources(job, cluster.local_world)
    torch.set_num_threads(threads)
    bundle = build_bundle(job, workers)
    model = model_from_payload(job["model_payload"], job["model"])
    teacher = model_from_payload(job["teacher_payload"], job["teacher"]) if job["teacher_payload"] else None
    run, on_epoch_end = epoch_logger(job) if cluster.is_leader and job.get("tracking") else (None, None)
    result = train_on(model, bundle, TrainConfig(**job["train"]), FitPlan(**job["plan"]), teacher=teacher,
                      split=job["split"], checkpoint_dir=job["checkpoint_dir"],  # read and written by the leader only
                      name=job["name"], on_epoch_end=on_epoch_end, cluster=cluster)
    if cluster.is_leader:
        if run is not None:
            run.flush()
        save_model(model, job["output"], meta=job["model_payload"]["meta"])
        Path(job["result"]).write_text(json.dumps({
            "history": result.history, "best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early, "resumed_from_epoch": result.resumed_from_epoch}))
    cluster.barrier()


def _record_failure(job_path: str | None, rank: int, exc: BaseException) -> None:
    """An error file beside the job, read by the launcher: bad input stays bad input (exit 2)."""
    if job_path:
        error = {"rank": rank, "type": type(exc).__name__, "bad_input": is_bad_input(exc),
                 "message": first_line(exc), "traceback": traceback.format_exc()}
        Path(job_path).with_name(f"error-rank{rank}.json").write_text(json.dumps(error))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.ddp_worker")
    parser.add_argument("job", nargs="?", help="the job file (processes of the pipeline's machine)")
    parser.add_argument("--follow", action="store_true", help="join a job another machine holds")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    cluster = join(pick_backend(args.backend, "auto"), args.timeout)
    try:
        cluster = elect_leader(cluster, holds_job=args.job is not None)
        job = cluster.share(read_job(args.job) if cluster.is_leader else None)
        train(cluster, job)
    except BaseException as exc:
        _record_failure(args.job, cluster.rank, exc)
        raise
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
