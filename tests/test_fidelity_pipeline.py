"""The "what compression changed" report in the session's smoke pipeline (real Prefect test server, MLflow sqlite,
Fashion-MNIST subsets): the fidelity stage's figures and artifacts for every candidate, the report's columns and
paragraph, `shrinkflow compare`, a registration gate that leaves @champion unset, and `shrinkflow stability`."""

import csv
import io
import json

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.xdist_group("smoke")  # the session's smoke pipeline and its cache (tests/test_pipeline.py)

FIGURES = ["fidelity.agreement", "fidelity.churn", "fidelity.lost", "fidelity.gained", "fidelity.kl",
           "fidelity.drop_ci_low", "fidelity.drop_ci_high", "fidelity.mcnemar_p", "fidelity.max_class_drop",
           "fidelity.significant_classes", "forgotten.count", "calibration.ece", "calibration.mce", "calibration.nll",
           "calibration.brier", "calibration.temperature", "calibration.ece_scaled", "calibration.mce_scaled",
           "calibration.nll_scaled", "calibration.brier_scaled", "calibration.ece_scaled_reference",
           "robustness.accuracy", "robustness.agreement", "robustness.relative_error", "robustness.jpeg.accuracy",
           "attribution.spearman", "attribution.top10_overlap"]


def _stage_run(client, pipeline_run_id: str, stage: str):
    return client.get_run(client.get_run(pipeline_run_id).data.tags[f"stage.{stage}.run_id"])


def _artifact_text(client, run_id: str, path: str) -> str:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_text()


def test_fidelity_figures_and_artifacts_for_every_candidate(smoke_run, smoke_store):
    client = MlflowClient(smoke_store["tracking.uri"])
    run = _stage_run(client, smoke_run["run_id"], "fidelity")
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    # the same figures on the evaluate stage's run, beside each candidate's accuracy and costs
    evaluation = _stage_run(client, smoke_run["run_id"], "evaluate")
    assert evaluation.info.status == "FINISHED"
    figures = {k: v for k, v in metrics.items() if "." in k}  # `<candidate>.<figure>`: not the stage's own
    assert len(figures) > 100 and {k: evaluation.data.metrics.get(k) for k in figures} == figures
    evaluated = {r["candidate"]: r for r in smoke_run["table"]}
    for name, row in evaluated.items():
        missing = [f for f in FIGURES if f"{name}.{f}" not in metrics]
        assert not missing, (name, missing)
        # from evaluate's own test logits: exactly evaluate's test accuracy
        assert metrics[f"{name}.fidelity.candidate_accuracy"] == row["accuracy"]
        assert metrics[f"{name}.fidelity.drop_ci_low"] <= metrics[f"{name}.fidelity.accuracy_drop"] + 1e-9
        assert metrics[f"{name}.fidelity.accuracy_drop"] <= metrics[f"{name}.fidelity.drop_ci_high"] + 1e-9
        assert metrics[f"{name}.calibration.temperature"] > 0
    assert metrics["test_logits_from_evaluate"] == 1  # it did not run the models over the test split again
    assert metrics["teacher.fidelity.agreement"] == 1.0 and metrics["teacher.robustness.relative_error"] == 1.0
    # int8 models against the float model they were made from too (rows carry source_sha256)
    for name in ("quantized_static", "quantized_dynamic"):
        assert metrics[f"{name}.parent.fidelity.agreement"] >= 0.9
        assert metrics[f"{name}.parent.fidelity.candidate_accuracy"] == pytest.approx(evaluated[name]["accuracy"],
                                                                                      abs=1e-6)
        assert metrics[f"{name}.parent.fidelity.reference_accuracy"] == pytest.approx(evaluated["pruned"]["accuracy"],
                                                                                      abs=1e-6)
    assert "pruned.parent.fidelity.agreement" not in metrics
    artifacts = {a.path for folder in (None, "forgotten") for a in client.list_artifacts(run.info.run_id, folder)}
    for name in set(evaluated) - {"teacher"}:
        assert f"forgotten/{name}.csv" in artifacts, name
        assert (f"forgotten/{name}.png" in artifacts) == (metrics[f"{name}.forgotten.count"] > 0)
    # every candidate's reliability diagram beside the teacher's, and every model's occlusion maps side by side
    assert {"fidelity.json", "reliability.png", "attribution.png"} <= artifacts
    report = json.loads(_artifact_text(client, run.info.run_id, "fidelity.json"))
    assert report["parents"] == {"quantized_static": "pruned", "quantized_dynamic": "pruned"}
    assert "a stratified subset of 15 of the 120 test images" in report["note"] and "occlusion" in report["note"]
    per_class = report["reports"]["pruned"]["reference"]["details"]["per_class"]
    assert [c["class"] for c in per_class] == ["Sandal", "Sneaker", "Ankle boot"]
    forgotten = list(csv.DictReader(io.StringIO(_artifact_text(client, run.info.run_id, "forgotten/pruned.csv"))))
    assert len(forgotten) == metrics["pruned.forgotten.count"]
    confidence = [float(r["reference_confidence"]) for r in forgotten]
    assert confidence == sorted(confidence, reverse=True)  # the teacher's surest first
    assert all(r["reference_prediction"] != r["candidate_prediction"] for r in forgotten)


def test_report_shows_the_figures_and_what_changed(smoke_run, smoke_store, prefect):
    import httpx
    from prefect.settings import PREFECT_API_URL

    markdown = smoke_run["markdown"]
    header = [cell.strip() for cell in markdown.splitlines()[0].split("|")]
    assert header[-10:-1] == ["agreement", "drop_95ci", "lost/gained", "max_class_drop", "ece", "ece_scaled",
                              "corruption_error_x", "attribution_rho", "parent_agreement"]
    paragraph = markdown[markdown.index("What changed: "):]
    assert "pruned agrees with the teacher on " in paragraph and "95% interval" in paragraph
    assert "quantized_static agrees with its float parent (pruned) on " in paragraph
    assert "Robustness: 9 corruptions x 3 severities" in paragraph and "Attribution: occlusion" in paragraph
    rows = {r["candidate"]: r for r in smoke_run["table"]}
    merged = {r["candidate"]: r for r in smoke_run["rows"]}
    assert rows["pruned"]["agreement"] == merged["pruned"]["fidelity.agreement"]
    client = MlflowClient(smoke_store["tracking.uri"])
    parent = client.get_run(smoke_run["run_id"])
    assert parent.data.metrics["pruned.fidelity.agreement"] == rows["pruned"]["agreement"]
    assert "What changed: " in _artifact_text(client, smoke_run["run_id"], "comparison.md")
    flow_run_id = parent.data.tags["prefect_flow_run_id"]
    body = {"artifacts": {"key": {"any_": ["smoke-what-changed"]}}, "flow_runs": {"id": {"any_": [flow_run_id]}},
            "task_runs": {}, "limit": 5, "offset": 0, "sort": "CREATED_DESC"}
    found = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body).raise_for_status().json()
    assert found and found[0]["type"] == "markdown" and "agrees with the teacher" in found[0]["data"]


def test_compare_shows_the_fidelity_columns(smoke_run, smoke_store, tmp_path, capsys):
    import pandas as pd

    from cli.main import main

    out = tmp_path / "runs.csv"
    assert main(["compare", "--experiment", "smoke", "--tracking-uri", smoke_store["tracking.uri"], "--csv",
                 str(out)]) == 0
    table = pd.read_csv(out).set_index("run_id")
    columns = ["quantized_static.fidelity.agreement", "quantized_static.fidelity.drop_ci_high",
               "quantized_static.fidelity.lost", "quantized_static.calibration.ece_scaled",
               "quantized_static.robustness.relative_error", "quantized_static.parent.fidelity.agreement"]
    assert set(columns) <= set(table.columns)
    listed = list(table.columns)
    assert listed.index("quantized_static.accuracy") < listed.index(columns[0]) < listed.index("student_kd.accuracy")
    row = next(r for r in smoke_run["rows"] if r["candidate"] == "quantized_static")
    assert table.loc[smoke_run["run_id"], columns[0]] == pytest.approx(row["fidelity.agreement"])
    assert main(["compare", "--experiment", "smoke", "--tracking-uri", smoke_store["tracking.uri"]]) == 0
    assert "quantized_static.fidelity.agreement" in capsys.readouterr().out


def test_a_gate_the_champion_fails_leaves_champion_unset_and_says_why(smoke_run, smoke_store, capsys):
    from cli.main import main

    lost = next(r for r in smoke_run["rows"] if r["candidate"] == "quantized_static")["fidelity.lost"]
    assert lost > 0  # the smoke champion lost images: a limit of 0 fails it (and every other student)
    store = [x for k, v in smoke_store.items() for x in ("--set", f"{k}={v}")]
    code = main(["run", "configs/smoke.yaml", *store, "--set", "name=gated", "--set", "register.model_name=smoke-gated",
                 "--set", "register.gates.max_images_lost=0", "--set", "register.gates.min_agreement=0.1"])
    out = capsys.readouterr().out
    assert code == 0, out
    why = [line for line in out.splitlines() if "@champion" in line]
    assert len(why) == 1, out
    assert why[0].endswith(f"[register] quantized_static is not @champion: gate max_images_lost failed: test images "
                           f"lost {lost:.0f}, limit 0 (over by {lost:.0f})")
    assert "registered quantized_static as models:/smoke-gated@challenger" in out
    client = MlflowClient(smoke_store["tracking.uri"])
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("smoke-gated", "champion")
    version = client.get_model_version_by_alias("smoke-gated", "challenger")
    assert version.tags["gate.max_images_lost"] == f"failed ({lost:.0f}, limit 0, by {lost:.0f})"
    assert version.tags["gate.min_agreement"].startswith("passed (")
    register = client.search_runs([client.get_experiment_by_name("smoke").experiment_id],
                                  "tags.`mlflow.runName` = 'register' and tags.alias = 'challenger'")[0]
    assert register.data.tags["gate.max_images_lost"].startswith("failed")
    assert register.data.metrics["gate.max_images_lost.passed"] == 0
    assert register.data.metrics["gate.max_images_lost.value"] == lost


def test_stability_over_two_seeds_reuses_the_cached_seed(smoke_run, smoke_store, capsys):
    from cli.main import main

    client = MlflowClient(smoke_store["tracking.uri"])
    versions_before = len(client.search_model_versions("name='smoke-model'"))
    store = [x for k, v in smoke_store.items() for x in ("--set", f"{k}={v}")]
    # Without ONNX export, which no figure here needs: the second seed trains and evaluates only.
    code = main(["stability", "configs/smoke.yaml", "--seeds", "2", *store, "--set", "export.onnx=false"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert ("seed 0: pipeline run " in out
            and "cached: finetune, trim, distill, prune, quantize, evaluate, fidelity" in out)
    assert "Teacher-against-teacher churn between seeds (the floor): " in out and "| quantized_static | " in out
    stability_run = client.get_run(out.split("\nMLflow run ")[-1].split()[0])
    assert stability_run.data.tags["shrinkflow.kind"] == "stability" and stability_run.info.status == "FINISHED"
    metrics = stability_run.data.metrics
    assert 0 <= metrics["stability.churn_floor"] <= 1
    seeds = [client.get_run(line.split("pipeline run ")[1].split(",")[0]) for line in out.splitlines()
             if line.startswith("seed ")]
    assert [r.data.tags["seed"] for r in seeds] == ["0", "1"]
    assert all(r.data.tags["shrinkflow.stability_run_id"] == stability_run.info.run_id for r in seeds)
    accuracy = [r.data.metrics["pruned.accuracy"] for r in seeds]
    assert metrics["pruned.stability.accuracy.mean"] == pytest.approx(sum(accuracy) / 2)
    assert metrics["pruned.stability.accuracy.worst"] == pytest.approx(min(accuracy))
    assert metrics["pruned.stability.fidelity.agreement.mean"] > 0
    report = json.loads(_artifact_text(client, stability_run.data.tags["stage.stability.run_id"], "stability.json"))
    # churn on the first seed's test split, recomputed from the model files: its fidelity report's churn
    first = {r["candidate"]: r for r in smoke_run["rows"]}
    for name in ("student_kd", "pruned", "quantized_static"):
        churn = report["population"]["candidates"][name]["churn_per_seed"][0]
        assert churn == pytest.approx(first[name]["fidelity.churn"], abs=1e-9)
    assert len(client.search_model_versions("name='smoke-model'")) == versions_before  # nothing registered
    stage = stability_run.data.tags["stage.stability.run_id"]
    assert "population_forgotten/pruned.csv" in {a.path for a in client.list_artifacts(stage, "population_forgotten")}
