"""Four pipelines at once (smoke config, different seeds) into one MLflow sqlite store."""

import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow


def test_four_concurrent_pipelines_into_one_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = []
    for seed in range(4):
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / f"prefect-{seed}")}
        env.pop("PREFECT_API_URL", None)
        cmd = [sys.executable, "-m", "flows.cli", "run", "configs/smoke.yaml", "--set", f"seed={seed}",
               "--set", f"tracking.uri={uri}", "--set", f"output_dir={tmp_path / 'outputs'}",
               "--set", "tracking.experiment=concurrent", "--set", f"name=seed{seed}",
               "--set", "register.model_name=concurrent-model"]
        procs.append(subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        assert "database is locked" not in err
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("shrinkflow.kind") == "pipeline"]
    assert sorted(r.data.tags["seed"] for r in parents) == ["0", "1", "2", "3"]
    assert all(r.info.status == "FINISHED" for r in runs) and len(runs) == 4 * 10
    for parent in parents:
        assert {"teacher.accuracy", "student_kd.accuracy", "pruned.accuracy", "kd_gain"} <= set(parent.data.metrics)
    evaluates = [r for r in runs if r.data.tags.get("shrinkflow.stage") == "evaluate"]
    assert all(len([k for k in r.data.metrics if k.endswith(".latency_p50_ms")]) == 4 for r in evaluates)
