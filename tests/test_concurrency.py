"""Four pipelines at once (smoke config, different seeds) into one MLflow sqlite store."""

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_concurrent_pipelines

pytestmark = pytest.mark.slow


def test_four_concurrent_pipelines_into_one_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_concurrent_pipelines(tmp_path, uri, "concurrent")
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
