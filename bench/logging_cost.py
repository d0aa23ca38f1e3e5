"""Logging cost: what one MLflow call costs from a stage, on a local sqlite store and on an MLflow server
(`mlflow server` on 127.0.0.1 with a sqlite backend): one log_batch of every epoch metric, waited for
and queued asynchronously as the training stages do (then the wait for the queue at the stage's end),
and a per-step log_metric, which shrinkflow does not do, for comparison.
bench/report.py sets the per-epoch cost beside measured epoch times.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import PYTHON, QUICK, WORK, free_port, save, say, use_prefect_env

CALLS = 20 if QUICK else 100
EPOCH_ROW = {"train_loss": 0.5, "train_accuracy": 0.8, "val_loss": 0.6, "val_accuracy": 0.78, "lr": 0.001,
             "epoch_time": 4.2, "images_per_s": 110.0, "best_val_accuracy": 0.78}


def measure(uri: str) -> dict:
    from tasks.mlflow_store import make_client
    from tasks.tracking import StageRun

    client = make_client(uri)
    experiment = client.get_experiment_by_name("logging") or client.get_experiment(client.create_experiment("logging"))
    run = StageRun(client, client.create_run(experiment.experiment_id).info.run_id, "bench")
    per_epoch, per_epoch_async, per_step = [], [], []
    for i in range(CALLS):
        t = time.perf_counter()
        run.log_metrics(EPOCH_ROW, step=i)
        per_epoch.append((time.perf_counter() - t) * 1000)
    logger = run.epoch_logger("async.")  # what training calls: queued, confirmed when the stage ends
    for i in range(CALLS):
        t = time.perf_counter()
        logger({"epoch": i, **EPOCH_ROW})
        per_epoch_async.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    run.flush()
    flush_ms = (time.perf_counter() - t) * 1000
    logged = len(client.get_metric_history(run.run_id, "async.val_accuracy"))
    for i in range(CALLS):
        t = time.perf_counter()
        client.log_metric(run.run_id, "step_loss", 0.5, step=i)
        per_step.append((time.perf_counter() - t) * 1000)
    client.set_terminated(run.run_id)
    return {"per_epoch_log_batch_ms": statistics.median(per_epoch),
            "per_epoch_p95_ms": statistics.quantiles(per_epoch, n=20)[18],
            "per_epoch_async_ms": statistics.median(per_epoch_async),
            "per_epoch_async_p95_ms": statistics.quantiles(per_epoch_async, n=20)[18],
            "async_flush_ms": flush_ms, "async_epochs_confirmed": logged,
            "per_step_log_metric_ms": statistics.median(per_step),
            "per_step_p95_ms": statistics.quantiles(per_step, n=20)[18],
            "metrics_per_epoch_call": len(EPOCH_ROW), "calls": CALLS}


def stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group; SIGKILL after 30 s (on a busy machine it can take longer to stop)."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def main() -> None:
    use_prefect_env("logging")
    import requests

    results = {}
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        say("logging cost: local sqlite store")
        results["sqlite"] = measure(f"sqlite:///{tmp}/local.db")
        port = free_port()
        say(f"logging cost: starting mlflow server on 127.0.0.1:{port}")
        server = subprocess.Popen(
            [str(Path(PYTHON).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{tmp}/server.db", "--artifacts-destination", f"{tmp}/artifacts",
             "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy(),
            start_new_session=True)  # its own process group: the server and the workers it starts stop together
        try:
            deadline = time.time() + 300  # ~20 s here; minutes while other work loads the machine
            while time.time() < deadline:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                        break
                except requests.RequestException:
                    time.sleep(0.5)
            else:
                sys.exit("mlflow server did not start in 300 s")
            say("logging cost: mlflow server")
            results["server"] = measure(f"http://127.0.0.1:{port}")
        finally:
            stop(server)
    save("logging_cost", {"backends": results, "command": "python bench/logging_cost.py"})


if __name__ == "__main__":
    main()
