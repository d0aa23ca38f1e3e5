"""Faults: a pipeline killed with SIGKILL mid-distillation resumes; its orphaned MLflow runs end FAILED."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow


def _command(tmp_path: Path, uri: str) -> list[str]:
    return [sys.executable, "-m", "cli", "run", "configs/smoke.yaml",
            "--set", f"tracking.uri={uri}", "--set", f"output_dir={tmp_path / 'outputs'}",
            "--set", "distill.train.epochs=4", "--set", "distill.train.checkpoint_seconds=0",
            "--set", "tracking.experiment=crash", "--set", "name=crash",
            "--set", "quantize.enabled=false", "--set", "export.onnx=false"]


def test_kill_9_during_distillation_then_resume(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(_command(tmp_path, uri), cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.time() + 400
    checkpoint = None
    try:
        while time.time() < deadline and first.poll() is None:
            found = list((tmp_path / "outputs" / "distill").glob("*/checkpoints-kd/last.pt"))
            if found:
                checkpoint = found[0]
                break
            time.sleep(0.2)
        assert checkpoint is not None, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the CLI and the Prefect server it started
        first.wait()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("crash")
    running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    assert {r.data.tags.get("shrinkflow.stage", "pipeline") for r in running} >= {"pipeline", "distill"}

    second = subprocess.run(_command(tmp_path, uri), cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming after epoch" in second.stdout  # distillation went on from its last completed epoch
    assert "cached: finetune, trim" in second.stdout
    for run in running:
        after = client.get_run(run.info.run_id)
        assert after.info.status == "FAILED" and after.data.tags["shrinkflow.orphaned"] == "true"
    assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")


def _smoke(tmp_path: Path, home: str, store: str) -> subprocess.CompletedProcess:
    """The smoke pipeline through the CLI with Prefect home `home` and MLflow store `store`, one output dir."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / home)}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "cli", "run", "configs/smoke.yaml", "--set", f"output_dir={tmp_path / 'outputs'}",
               "--set", f"tracking.uri=sqlite:///{tmp_path / store}", "--set", "tracking.experiment=stores",
               "--set", "quantize.enabled=false", "--set", "export.onnx=false"]
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout[-3000:]
    return done


def _stage_runs(uri: str) -> dict[str, str]:
    """{stage: status} of the newest pipeline run's stages, looked up in `uri` by the ids its tags name."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("stores")
    parent = client.search_runs([experiment.experiment_id], "tags.`shrinkflow.kind` = 'pipeline'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    ids = {k.split(".")[1]: v for k, v in parent.data.tags.items() if k.startswith("stage.") and k.endswith(".run_id")}
    return {stage: client.get_run(run_id).info.status for stage, run_id in ids.items()}


def test_cache_across_prefect_homes_and_tracking_stores(tmp_path):
    """Home A + store X, then home B + store Y, then B + Y again: the second run is complete in Y (nothing
    points at X), the third is cached."""
    _smoke(tmp_path, "home-a", "x.db")
    second = _smoke(tmp_path, "home-b", "y.db")
    assert "cache record not used, running the stage again: its runs were logged to another tracking store" in second.stdout
    assert "cached:" not in second.stdout
    store_y = f"sqlite:///{tmp_path / 'y.db'}"
    statuses = _stage_runs(store_y)
    assert len(statuses) == 9 and set(statuses.values()) == {"FINISHED"}
    client = MlflowClient(store_y)
    finetune = client.search_runs([client.get_experiment_by_name("stores").experiment_id],
                                  "tags.`shrinkflow.stage` = 'finetune'")[0]
    assert finetune.data.tags["shrinkflow.resumed_from_epoch"] == "1"  # trained once, while logging to X
    assert [m.step for m in client.get_metric_history(finetune.info.run_id, "val_acc")] == [1]  # replayed
    third = _smoke(tmp_path, "home-b", "y.db")
    assert "cached: finetune, trim, distill, prune, evaluate" in third.stdout
    assert set(_stage_runs(store_y).values()) == {"FINISHED"}
