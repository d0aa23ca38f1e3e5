"""End-to-end runs of the real flows: Prefect's test harness (one per session), MLflow on temporary sqlite."""

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from compression.checkpoint import file_sha256
from compression.data import load_dataset
from flows.chain import chain_links, planned_stages
from tasks.config import PROJECT_ROOT, load_config

# `make test`'s integration tests: every stage on a few hundred images, on real Prefect and MLflow. The session's
# smoke pipeline is shared with tests/test_serving.py, and the whole of both modules runs on one xdist worker:
# spreading the tests that do not read it over both workers was faster here (119 s against 146 s), but slower
# with a quarter of the CPU (473 s against 395 s, bench/suite.py): a second Prefect test server, and pipelines
# that no longer find the smoke pipeline's cached stages.
pytestmark = pytest.mark.xdist_group("smoke")

# The stages of the smoke pipeline, in order, as the chain (flows/chain.py) plans them for its config.
STAGES = planned_stages(load_config(PROJECT_ROOT / "configs" / "smoke.yaml"))


@pytest.fixture(scope="module")
def store(smoke_store):
    return smoke_store


@pytest.fixture(scope="module")
def first_run(smoke_run):
    return smoke_run


def _children(client, run):
    runs = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    return {r.data.tags["shrinkflow.stage"]: r for r in runs}


def test_run_tree_params_metrics_artifacts(first_run, store):
    client = MlflowClient(store["tracking.uri"])
    parent = client.get_run(first_run["run_id"])
    assert parent.info.status == "FINISHED"
    children = _children(client, parent)
    assert STAGES == [link.name for link in chain_links()]  # the smoke config runs every stage of the chain
    assert sorted(children) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" for r in children.values())
    # provenance on the parent
    tags, params = parent.data.tags, parent.data.params
    for key in ("git_commit", "git_dirty", "shrinkflow.config_hash", "version.torch", "version.mlflow",
                "prefect_flow_run_id", "seed"):
        assert tags.get(key), key
    assert params["prune.ratio"] == "0.5" and params["data.classes"] == "[5, 7, 9]"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.yaml", "environment.json", "comparison.csv", "comparison.md", "pareto_macs.png",
            "pareto_latency_p50_ms.png"} <= artifacts
    assert "kd_gain" in parent.data.metrics and "student_kd.accuracy" in parent.data.metrics
    # per-epoch metrics with the epoch as step
    finetune = children["finetune"]
    history = client.get_metric_history(finetune.info.run_id, "train_loss")
    assert [m.step for m in history] == [1]
    assert {"val_accuracy", "lr", "epoch_time", "images_per_s"} <= set(finetune.data.metrics)
    assert "training_curves.png" in {a.path for a in client.list_artifacts(finetune.info.run_id)}
    distill = children["distill"].data.metrics
    assert {"val_accuracy", "baseline.val_accuracy", "kd_gain_val_accuracy"} <= set(distill)
    prune_steps = client.get_metric_history(children["prune"].info.run_id, "params")
    assert [m.step for m in prune_steps] == [1, 2] and prune_steps[0].value > prune_steps[1].value
    evaluate = children["evaluate"]
    for name in ("teacher", "student_kd", "student_plain", "pruned"):
        for metric in ("accuracy", "params", "macs", "size_bytes", "latency_p50_ms", "latency_p95_ms",
                       "throughput_ips"):
            assert f"{name}.{metric}" in evaluate.data.metrics
    assert "confusion/pruned.png" in {a.path for a in client.list_artifacts(evaluate.info.run_id, "confusion")}
    for name in ("quantized_static", "quantized_dynamic"):
        assert f"{name}.accuracy" in evaluate.data.metrics and f"{name}.latency_p50_ms" in evaluate.data.metrics
    # datasets with digests
    inputs = children["load_data"].inputs.dataset_inputs
    assert sorted(i.dataset.name for i in inputs) == ["fashion-mnist-test", "fashion-mnist-train", "fashion-mnist-val"]
    assert all(len(i.dataset.digest) == 16 for i in inputs)


def test_quantized_candidates_stay_within_tolerance_and_are_smaller(first_run, store):
    client = MlflowClient(store["tracking.uri"])
    quantize = _children(client, client.get_run(first_run["run_id"]))["quantize"]
    metrics, tolerance = quantize.data.metrics, 0.05  # configs/smoke.yaml quantize.max_accuracy_drop
    assert metrics["calibration_images"] == 64
    rows = {r["candidate"]: r for r in first_run["table"]}
    for mode in ("static", "dynamic"):
        assert metrics[f"{mode}.val_accuracy_drop"] <= tolerance
        assert rows[f"quantized_{mode}"]["accuracy"] >= rows["pruned"]["accuracy"] - tolerance
        # the same weights and arithmetic as the float model they were made from
        assert rows[f"quantized_{mode}"]["params"] == rows["pruned"]["params"]
        assert rows[f"quantized_{mode}"]["macs"] == rows["pruned"]["macs"]
    # int8 conv and linear weights: the file is well under half the float one
    assert rows["quantized_static"]["size_bytes"] < 0.35 * rows["pruned"]["size_bytes"]
    assert "model/quantized_static.pt" in {a.path for a in client.list_artifacts(quantize.info.run_id, "model")}


def test_onnx_exports_agree_with_pytorch(first_run, store):
    client = MlflowClient(store["tracking.uri"])
    export = _children(client, client.get_run(first_run["run_id"]))["export"]
    metrics = export.data.metrics
    for name in ("teacher", "pruned"):  # the teacher and the last float model
        assert metrics[f"{name}.onnx.parity_ok"] == 1
        assert metrics[f"{name}.onnx.max_abs_diff"] < 1e-3 and metrics[f"{name}.onnx.top1_agreement"] == 1.0
        assert metrics[f"{name}.onnx.latency_p50_ms"] > 0
    assert {"onnx/teacher.onnx", "onnx/pruned.onnx"} <= {a.path
                                                         for a in client.list_artifacts(export.info.run_id, "onnx")}
    rows = {r["candidate"]: r for r in first_run["table"]}
    assert rows["pruned"]["onnx_latency_p50_ms"] > 0 and "onnx_latency_p50_ms" in rows["teacher"]
    assert "| onnx_latency_p50_ms" in first_run["markdown"]
    assert "- quantized_static against pruned (the float model it was made from): " in first_run["markdown"]


def test_registered_model_reproduces_its_accuracy(first_run, store):
    import mlflow.pyfunc

    registered = first_run["registered"]
    assert registered["alias"] == "champion"  # smoke budget: any accuracy drop is accepted
    assert registered["candidate"] == "quantized_static" and registered["runtime"] == "onnxruntime"  # objective: size
    client = MlflowClient(store["tracking.uri"])
    version = client.get_model_version("smoke-model", registered["version"])
    assert version.tags["quantization"] == "static" and version.tags["shrinkflow.runtime"] == "onnxruntime"
    assert version.tags["formats"] == "shrinkflow-pt,mlflow-pyfunc,onnx-int8"  # onnxruntime's int8 of the pruned model
    assert version.tags["parent_run_id"] == first_run["run_id"]
    assert version.tags["dataset_digest_test"] and version.tags["source"] == "scratch:resnet18"
    mlflow.set_tracking_uri(store["tracking.uri"])
    model = mlflow.pyfunc.load_model(f"models:/smoke-model/{registered['version']}")
    bundle = load_dataset(classes=[5, 7, 9], train_per_class=40, val_per_class=20, test_per_class=40, seed=0,
                          download=False)
    images = (bundle.test.images.float() / 255).numpy()  # float 0-1 and uint8 0-255 give the same answers
    predictions = model.predict(images)
    assert predictions["label"].tolist() == model.predict(bundle.test.images.numpy())["label"].tolist()
    original_labels = np.array([5, 7, 9])[bundle.test.labels.numpy()]
    accuracy = float((predictions["label"].to_numpy() == original_labels).mean())
    row = next(r for r in first_run["table"] if r["candidate"] == registered["candidate"])
    assert accuracy == pytest.approx(row["onnx_accuracy"], abs=1e-6)
    assert float(version.tags["served_accuracy"]) == pytest.approx(accuracy, abs=1e-6)
    assert set(predictions["name"]) <= {"Sandal", "Sneaker", "Ankle boot"}


def test_prefect_artifacts(first_run, store, prefect):
    import httpx
    from prefect.settings import PREFECT_API_URL

    # Other smoke pipelines of the session log artifacts of the same keys to the same server: this run's only.
    flow_run_id = MlflowClient(store["tracking.uri"]).get_run(first_run["run_id"]).data.tags["prefect_flow_run_id"]
    body = {"artifacts": {"key": {"any_": ["smoke-comparison", "smoke-mlflow-run"]}},
            "flow_runs": {"id": {"any_": [flow_run_id]}},
            "task_runs": {}, "limit": 10, "offset": 0, "sort": "CREATED_DESC"}
    found = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body).raise_for_status().json()
    by_key = {a["key"]: a for a in found}
    assert by_key["smoke-comparison"]["type"] == "table" and "student_kd" in str(by_key["smoke-comparison"]["data"])
    assert first_run["run_id"] in str(by_key["smoke-mlflow-run"]["data"])


def test_cache_skips_completed_stages_and_reruns_only_what_changed(first_run, store):
    from flows.compress import compress

    again = compress("configs/smoke.yaml", dict(store))
    assert again["cached"] == ["finetune", "trim", "distill", "prune", "quantize", "evaluate", "fidelity", "export"]
    assert again["registered"]["version"] == first_run["registered"]["version"]  # same model, no new version
    assert again["table"] == first_run["table"]
    teacher_sha = next(r["sha256"] for r in first_run["table"] if r["candidate"] == "teacher")
    teacher_onnx = next((Path(store["output_dir"]) / "export" / "by-model").glob(f"{teacher_sha[:24]}-*.onnx"))
    exported_at = teacher_onnx.stat().st_mtime_ns
    changed = compress("configs/smoke.yaml", {**store, "prune.ratio": 0.6, "quantize.enabled": False})
    assert changed["cached"] == ["finetune", "trim", "distill"]
    # the teacher's ONNX file was not exported again, and passed the parity check of this run's export
    teacher = next(r for r in changed["table"] if r["candidate"] == "teacher")
    assert teacher_onnx.stat().st_mtime_ns == exported_at and teacher["onnx_accuracy"] is not None
    assert {"prune", "evaluate", "fidelity", "export", "report", "register"} <= set(changed["executed"])
    params = {r["candidate"]: r["params"] for r in changed["table"]}
    assert params["pruned"] < {r["candidate"]: r["params"] for r in first_run["table"]}["pruned"]
    # without int8 candidates the smallest file is the pruned float model, registered with its ONNX export
    assert changed["registered"]["candidate"] == "pruned"
    version = MlflowClient(store["tracking.uri"]).get_model_version("smoke-model", changed["registered"]["version"])
    assert version.tags["formats"] == "shrinkflow-pt,mlflow-pyfunc,onnx" and version.tags["quantization"] == "none"
    assert version.tags["shrinkflow.runtime"] == "onnxruntime"


def test_failing_stage_marks_child_and_parent_failed_and_registers_nothing(prefect, store):
    from flows.compress import compress

    # Two counts for resnet18's four stages: only the trim stage can tell, after the teacher is fine-tuned.
    overrides = {**store, "trim.keep_per_stage": [1, 1], "register.model_name": "never-registered", "name": "failing"}
    with pytest.raises(Exception, match=r"keep_per_stage must be a number >= 1 or 4 of them \(resnet18 has 4 stages"):
        compress("configs/smoke.yaml", overrides)
    client = MlflowClient(store["tracking.uri"])
    experiment = client.get_experiment_by_name("smoke")
    parent = client.search_runs([experiment.experiment_id], "tags.`mlflow.runName` = 'failing-compress'")[0]
    assert parent.info.status == "FAILED"
    children = _children(client, parent)
    assert children["trim"].info.status == "FAILED"
    assert all(r.info.status in ("FINISHED", "FAILED") for r in children.values())
    assert "register" not in children
    assert not client.search_registered_models("name='never-registered'")


def test_compare_cli_lists_pipeline_runs(first_run, store, tmp_path, capsys):
    from cli.main import main

    out = tmp_path / "runs.csv"
    assert main(["compare", "--experiment", "smoke", "--tracking-uri", store["tracking.uri"], "--csv", str(out)]) == 0
    import pandas as pd

    table = pd.read_csv(out)
    assert first_run["run_id"] in set(table.run_id)
    assert {"teacher.accuracy", "pruned.accuracy", "kd_gain", "config_hash"} <= set(table.columns)
    for missing in ("0" * 32, "ab'c"):
        assert main(["compare", "--experiment", "smoke", "--tracking-uri", store["tracking.uri"], "--search",
                     missing]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"shrinkflow: error: search run {missing} not found in experiment 'smoke'"]
    # a CSV path that is a directory is the user's mistake too: one line, exit 2
    assert main(["compare", "--experiment", "smoke", "--tracking-uri", store["tracking.uri"],
                 "--csv", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shrinkflow: error: ") and "Is a directory" in err[0], err


@pytest.mark.parametrize("source, message", [
    ("file:/nonexistent/model.pt", "model file /nonexistent/model.pt does not exist"),
    ("models:/no-such-model@champion", "registered model 'no-such-model' not found"),
    ("torchvision:resnet81", "unknown architecture 'resnet81'"),
])
def test_unknown_or_unreachable_sources(prefect, store, source, message):
    from flows.compress import compress

    with pytest.raises(Exception, match=message):
        compress("configs/smoke.yaml", {**store, "source": source, "name": "bad-source"})


def test_registry_alias_missing(first_run, store):
    from flows.compress import compress

    with pytest.raises(Exception, match="registered model 'smoke-model' has no alias 'gold'"):
        compress("configs/smoke.yaml", {**store, "source": "models:/smoke-model@gold", "name": "bad-alias"})


def test_stage_flows_run_one_stage_on_given_models(first_run, store):
    from flows.stages import distill_flow, prune_flow, quantize_flow

    teacher = next(r for r in first_run["table"] if r["candidate"] == "teacher")
    result = distill_flow("configs/smoke.yaml", teacher=f"file:{teacher['path']}",
                          overrides={**store, "name": "distill-only", "distill.student": "mobilenet_v3_small",
                                     "export.onnx": False, "fidelity.enabled": False})  # quantize_flow's covers it
    assert [r["candidate"] for r in result["table"]] == ["teacher", "student_kd", "student_plain"]
    assert "distill" in result["executed"] and result["registered"] is None
    kd = next(r for r in result["table"] if r["candidate"] == "student_kd")
    assert kd["params"] < 2_000_000  # a mobilenet_v3_small student, not the resnet teacher
    pruned = prune_flow("configs/smoke.yaml", student=f"file:{kd['path']}",
                        overrides={**store, "name": "prune-only", "prune.kd": False, "export.onnx": False,
                                   "fidelity.enabled": False})
    rows = {r["candidate"]: r for r in pruned["table"]}
    assert rows["pruned"]["params"] < rows["unpruned"]["params"]
    resnet = next(r for r in first_run["table"] if r["candidate"] == "pruned")
    quantized = quantize_flow("configs/smoke.yaml", model=f"file:{resnet['path']}",
                              overrides={**store, "name": "quantize-only", "export.onnx": False,
                                         "quantize.modes": ["static"]})
    rows = {r["candidate"]: r for r in quantized["table"]}
    assert list(rows) == ["float", "quantized_static"]
    assert quantized["executed"][-4:] == ["quantize", "evaluate", "fidelity", "report"]
    assert rows["quantized_static"]["size_bytes"] < rows["float"]["size_bytes"] / 2


def test_reproduce_gives_the_same_metrics(first_run, store, tmp_path, capsys, monkeypatch):
    import tempfile

    from cli.main import main

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    code = main(["reproduce", first_run["run_id"], "--tracking-uri", store["tracking.uri"],
                 "--output-dir", str(tmp_path / "again")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert not list(scratch.glob("shrinkflow-reproduce-*"))  # the downloaded config is not left behind
    assert "identical" in out and "stages run: load_data, fetch_pretrained, finetune, trim, distill, prune" in out
    assert "(the original's)" in out  # same experiment, same config_hash: `compare` groups the two runs
    # recomputed from scratch in a fresh output directory: byte-identical model files, the int8 ones too
    for row in first_run["table"]:
        again = tmp_path / "again" / Path(row["path"]).relative_to(store["output_dir"])
        assert file_sha256(again) == row["sha256"], row["candidate"]


def _bad_inputs(tmp_path):
    """(name, --set overrides or a config path, expected message) for the bad-input catalogue."""
    import torch

    from compression.checkpoint import save_model
    from compression.models import build_model

    five = tmp_path / "five-classes.pt"
    save_model(build_model("resnet18", 5, 1, 28), five)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(five.read_bytes()[:100_000])
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("source: scratch:resnet18\nprune: {ratio: 0.5\n")
    one_class = tmp_path / "one-class" / "cats"
    one_class.mkdir(parents=True)
    from PIL import Image
    for i in range(3):
        Image.new("RGB", (8, 8)).save(one_class / f"{i}.png")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    not_utf8 = tmp_path / "latin1.yaml"
    not_utf8.write_bytes("name: caf\xe9\nsource: scratch:resnet18\n".encode("latin-1"))
    two_classes = tmp_path / "two-classes"
    for name in ("cats", "dogs"):
        (two_classes / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8)).save(two_classes / name / f"{i}.png")
    with_bad = tmp_path / "with-bad"
    for name in ("a", "b"):
        (with_bad / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8)).save(with_bad / name / f"{i}.png")
    (with_bad / "a" / "notes.jpg").write_text("not an image")
    del torch
    return [
        ("unknown architecture", ["source=scratch:resnet81"], "unknown architecture 'resnet81'"),
        ("unknown source", ["source=hub:resnet18"], "source: unknown source 'hub:resnet18'"),
        ("registry model missing", ["source=models:/no-such-model@champion"],
         "registered model 'no-such-model' not found"),
        ("registry alias missing", ["source=models:/smoke-model@gold"], "has no alias 'gold'"),
        ("truncated checkpoint", [f"source=file:{truncated}"], "cannot read model file"),
        ("checkpoint for other classes", [f"source=file:{five}", "finetune.enabled=false"],
         "has 5 classes, the data has 3"),
        ("yaml syntax error", bad_yaml, "YAML syntax error at line"),
        ("unknown key", ["prune.ratoi=0.5"], "prune.ratoi: unknown key"),
        ("negative epochs", ["finetune.train.epochs=-1"], "invalid training setting epochs=-1"),
        ("prune ratio 1.5", ["prune.ratio=1.5"], "prune.ratio: Input should be less than 1"),
        ("temperature 0", ["distill.temperature=0"], "distill.temperature: Input should be greater than 0"),
        ("alpha outside [0, 1]", ["distill.alpha=1.5"], "distill.alpha"),
        ("empty class subset", ["data.classes=[]"], "class subset is empty"),
        ("class out of range", ["data.classes=[3, 12]"], "class subset [12] out of range 0..9"),
        ("missing dataset directory", ["data.data_dir=/nonexistent/fmnist"],
         "data directory /nonexistent/fmnist does not exist"),
        ("image folder with one class", ["data.name=image-folder", f"data.data_dir={one_class.parent}"],
         "1 class folder"),
        ("unreachable tracking server", ["tracking.uri=http://127.0.0.1:9"], "is unreachable"),
        ("output directory not writable", [f"output_dir={a_file}/outputs"], "is not writable"),
        ("calibration size 0", ["quantize.calibration_size=0"],
         "quantize.calibration_size: calibration size must be at least 1"),
        ("unsupported quantization backend", ["quantize.backend=tpu"],
         "quantize.backend: backend 'tpu' is not supported"),
        ("config not UTF-8", not_utf8, "not a UTF-8 text file"),
        ("unknown tracking URI scheme", ["tracking.uri=mlflow+foo://host/x"], "unknown scheme 'mlflow'"),
        ("infinite learning rate", ["distill.train.lr=inf"], "distill.train: lr must be a finite number, got inf"),
        ("nan prune ratio", ["prune.ratio=nan"], "prune.ratio: Input should be a finite number"),
        ("zero distillation epochs", ["distill.train.epochs=0"], "train.epochs must be at least 1 while distill"),
        ("trim keeps no block", ["trim.keep_per_stage=0"], "every stage keeps at least 1 block"),
        ("model file missing", ["source=file:/nonexistent/model.pt"], "model file /nonexistent/model.pt"),
        ("class outside an image folder", ["data.name=image-folder", f"data.data_dir={two_classes}",
                                           "data.classes=[0, 5]"], "class subset [5] out of range 0..1"),
        ("unreadable image under the fail policy", ["data.name=image-folder", f"data.data_dir={with_bad}",
                                                    "data.bad_images=fail", "data.val_per_class=1"],
         "notes.jpg: not a readable image (UnidentifiedImageError) (data.bad_images: fail"),
        ("training processes beyond the cores", ["distributed.processes_per_node=64"],
         "distributed.processes_per_node: 64 training processes on CPU need a core each"),
        ("batch not divisible by the processes", ["distributed.processes_per_node=2", "finetune.train.batch_size=33"],
         "batch_size 33 cannot be split evenly over 2 training processes"),
    ]


CATALOGUE = ["unknown architecture", "unknown source", "registry model missing", "registry alias missing",
             "truncated checkpoint", "checkpoint for other classes", "yaml syntax error", "unknown key",
             "negative epochs", "prune ratio 1.5", "temperature 0", "alpha outside [0, 1]", "empty class subset",
             "class out of range", "missing dataset directory", "image folder with one class",
             "unreachable tracking server", "output directory not writable", "calibration size 0",
             "unsupported quantization backend", "config not UTF-8", "unknown tracking URI scheme",
             "infinite learning rate", "nan prune ratio", "zero distillation epochs", "trim keeps no block",
             "model file missing", "class outside an image folder", "unreadable image under the fail policy",
             "training processes beyond the cores", "batch not divisible by the processes"]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    cases = {name: (case, message) for name, case, message in _bad_inputs(tmp_path_factory.mktemp("bad"))}
    assert sorted(cases) == sorted(CATALOGUE)
    return cases


@pytest.mark.parametrize("name", CATALOGUE)
def test_bad_input_catalogue(name, bad_inputs, first_run, store, capsys):
    """Exit 2, exactly one line on stderr naming the problem (no traceback, also when a task finds it), no
    MLflow run left RUNNING, nothing new registered."""
    from cli.main import main

    client = MlflowClient(store["tracking.uri"])

    def versions():
        return {(m.name, v.version) for m in client.search_registered_models()
                for v in client.search_model_versions(f"name='{m.name}'")}

    registered_before = versions()
    case, message = bad_inputs[name]
    base = [f"{k}={v}" for k, v in store.items()] + ["name=bad-input"]
    if isinstance(case, list):
        args = ["run", "configs/smoke.yaml"] + [x for item in base + case for x in ("--set", item)]
    else:
        args = ["run", str(case)]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("shrinkflow: error:") and message in err[0], err
    experiment = client.get_experiment_by_name("smoke")
    assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    assert versions() == registered_before


def test_unexpected_failure_is_one_line_with_the_log_file(prefect, store, tmp_path, capsys):
    """Not bad input (a tracking database that is not a database): exit 1, one line naming the log file,
    and the log file holds the traceback."""
    from cli.main import main

    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not an sqlite database" * 100)
    code = main(["run", "configs/smoke.yaml", "--set", f"tracking.uri=sqlite:///{broken}",
                 "--set", f"output_dir={store['output_dir']}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("shrinkflow: run failed: "), err
    log_file = err[0].rsplit("(traceback in ", 1)[1].rstrip(")")
    assert "Traceback (most recent call last)" in open(log_file).read()


def test_transient_fetch_failure_is_retried(prefect, store, tmp_path, monkeypatch):
    """torchvision weights missing at the first attempt (no network here), present at the retry."""
    import shutil
    import threading

    import torch
    import torchvision

    from flows.compress import compress

    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    staged = tmp_path / "staged.pth"
    torch.save(torchvision.models.resnet18().state_dict(), staged)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    client = MlflowClient(store["tracking.uri"])
    stop = threading.Event()

    def restore_after_first_failure():
        experiment = None
        while not stop.is_set():
            experiment = experiment or client.get_experiment_by_name("retry")
            if experiment and client.search_runs([experiment.experiment_id],
                                                 "tags.`shrinkflow.stage` = 'fetch_pretrained' "
                                                 "and attributes.status = 'FAILED'"):
                cache.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(staged, cache / weights.url.rsplit("/", 1)[1])
                return
            stop.wait(0.05)

    helper = threading.Thread(target=restore_after_first_failure)
    helper.start()
    try:
        result = compress("configs/smoke.yaml", {**store, "source": "torchvision:resnet18:IMAGENET1K_V1",
                                                 "tracking.experiment": "retry", "name": "retry",
                                                 "trim.enabled": False, "distill.enabled": False,
                                                 "prune.enabled": False, "quantize.enabled": False,
                                                 "export.onnx": False, "register.enabled": False})
    finally:
        stop.set()
        helper.join()
    fetches = client.search_runs([client.get_experiment_by_name("retry").experiment_id],
                                 "tags.`shrinkflow.stage` = 'fetch_pretrained'")
    assert sorted(r.info.status for r in fetches) == ["FAILED", "FINISHED"]
    assert client.get_run(result["run_id"]).info.status == "FINISHED"
