"""Pipelines at once into one MLflow sqlite store and one output directory: an identical pair and a third."""

import csv
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_concurrent_pipelines

pytestmark = pytest.mark.slow


def test_concurrent_pipelines_into_one_sqlite_store_register_each_model_file_once(prefect, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_concurrent_pipelines(tmp_path, uri, "concurrent", seeds=(0, 0, 1), prefect_api_url=prefect)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("shrinkflow.kind") == "pipeline"]
    assert sorted(r.data.tags["seed"] for r in parents) == ["0", "0", "1"]
    assert all(r.info.status == "FINISHED" for r in runs)
    for parent in parents:
        assert {"teacher.accuracy", "student_kd.accuracy", "pruned.accuracy", "kd_gain"} <= set(parent.data.metrics)
    # identical pipelines made byte-identical model files, another seed other ones, candidate by candidate
    tables = {}
    for parent in parents:
        table = Path(client.download_artifacts(parent.info.run_id, "comparison.csv", str(tmp_path)))
        rows = csv.DictReader(table.read_text().splitlines())
        tables.setdefault(parent.data.tags["seed"], []).append({r["candidate"]: r["sha256"] for r in rows})
    (same, twin), (other,) = tables["0"], tables["1"]
    assert {"teacher", "student_kd", "student_plain", "pruned"} <= set(same)
    assert same == twin and all(other[name] != sha for name, sha in same.items())
    # and registered them once: one version per seed
    versions = client.search_model_versions("name='concurrent-model'")
    assert len(versions) == 2 and len({v.tags["shrinkflow.checkpoint_sha256"] for v in versions}) == 2
    registered = [int(r.data.metrics["registered_version"]) for r in runs
                  if r.data.tags.get("shrinkflow.stage") == "register"]
    assert sorted(set(registered)) == sorted(int(v.version) for v in versions) and len(registered) == 3
