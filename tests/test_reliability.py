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


def test_kill_9_during_distillation_then_resume(prefect, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": prefect}
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
        os.killpg(first.pid, signal.SIGKILL)
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

