"""Serving: request checks and image reading (fast), then the session's smoke champion through MLflow's
real scoring server (`mlflow models serve` as README prints it), the int8 ONNX candidate, onnxruntime
against torch, and the predict flow on a folder of real Fashion-MNIST images."""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from compression import CompressionError
from compression.data import load_dataset
from compression.images import ImageTransform
from compression.inference import BadImages, as_images, image_files, read_images, true_labels
from tests.conftest import PROJECT_ROOT, free_port, readme_commands

BIN = PROJECT_ROOT / ".venv" / "bin"
# The session's smoke pipeline is shared with tests/test_pipeline.py: one xdist worker runs both.
pytestmark = pytest.mark.xdist_group("smoke")
SMOKE_CLASSES = {5: "Sandal", 7: "Sneaker", 9: "Ankle boot"}


# ---------------------------------------------------------------- fast: requests and image files

def test_uint8_pixels_and_float_images_mean_the_same():
    pixels = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 1, 28, 28) % 256
    as_uint8 = as_images(pixels.astype(np.uint8), channels=1, size=28)
    assert torch.equal(as_uint8, as_images(pixels, channels=1, size=28))  # JSON integers arrive as int64
    assert torch.allclose(as_uint8, as_images(pixels / 255.0, channels=1, size=28))
    assert as_images(pixels[:, 0].astype(np.uint8), channels=3, size=28).shape == (2, 1, 28, 28)  # [N, H, W] grey


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 3), np.float32), "got shape [2, 3]"),
    (np.zeros((1, 3, 28, 28), np.float32), "got shape [1, 3, 28, 28]"),
    (np.zeros((1, 1, 32, 32), np.uint8), "got shape [1, 1, 32, 32]"),
    (np.zeros((0, 1, 28, 28), np.uint8), "got shape [0, 1, 28, 28]"),
    (np.array([["a", "b"]]), "must be numbers"),
    (np.full((1, 1, 28, 28), np.nan, np.float32), "NaN or infinite"),
    ([[1, 2], [3]], "numeric array"),
    (np.full((1, 1, 28, 28), 200.0, np.float32), "0-1 floats, got 200 to 200 as floats"),
    (np.full((1, 1, 28, 28), 300, np.int64), "0-255 integers or 0-1 floats, got 300 to 300 as integers"),
])
def test_images_that_do_not_fit_get_one_line(images, message):
    with pytest.raises(BadImages) as err:
        as_images(images, channels=1, size=28)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_image_folder_labels_by_class_name_or_id(tmp_path):
    for rel in ("Sandal/a.png", "9/b.png", "c.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (28, 28)).save(tmp_path / rel)
    found = image_files(tmp_path)
    assert [Path(p).name for p, _ in found] == ["b.png", "a.png", "c.png"]
    assert true_labels([f for _, f in found], [5, 7, 9], ["Sandal", "Sneaker", "Ankle boot"]) == [9, 5, None]
    with pytest.raises(CompressionError, match="class folder\\(s\\) Boot match none of the model's classes"):
        true_labels(["Boot"], [5, 7, 9], ["Sandal", "Sneaker", "Ankle boot"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompressionError, match="no images"):
        image_files(tmp_path / "empty")
    with pytest.raises(CompressionError, match="does not exist"):
        image_files(tmp_path / "missing")


def test_read_images_converts_and_resizes(tmp_path, fmnist):
    _, test = fmnist
    small = ImageTransform.for_input(28, mode="L")  # what a Fashion-MNIST model file records
    grey = test.images[0, 0].numpy()
    Image.fromarray(grey).save(tmp_path / "same.png")
    Image.fromarray(grey).convert("RGB").resize((56, 56)).save(tmp_path / "rgb-big.png")
    pixels, bad = read_images([str(tmp_path / "same.png"), str(tmp_path / "rgb-big.png")], small, channels=1)
    assert pixels.dtype == np.uint8 and pixels.shape == (2, 1, 28, 28) and bad == []
    assert np.array_equal(pixels[0, 0], grey)  # PNG is lossless: the very pixels evaluate saw
    assert np.abs(pixels[1, 0].astype(int) - grey).mean() < 12  # resized back, close to the original
    # Not square: the short side resized and the centre cropped, as evaluation on an image folder reads it;
    # squashing it to 28x28 would show the model other pixels.
    wide = np.zeros((28, 56), dtype=np.uint8)
    wide[:, 14:42] = grey
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert np.array_equal(read_images([str(tmp_path / "wide.png")], small, channels=1)[0][0, 0], grey)
    (tmp_path / "broken.png").write_text("not an image")
    with pytest.raises(CompressionError, match="cannot read image .*broken.png"):
        read_images([str(tmp_path / "broken.png")], small, channels=1)
    pixels, bad = read_images([str(tmp_path / "broken.png"), str(tmp_path / "same.png")], small, 1, "skip")
    assert len(pixels) == 1 and np.array_equal(pixels[0, 0], grey) and [i for i, _ in bad] == [0]


def test_reference_models_read_files_with_the_evaluation_transform(tmp_path):
    """A 224 px model reads a file as torchvision's reference evaluation does: short side to 256, centre 224."""
    reference = ImageTransform.for_input(224)
    assert (reference.kind, reference.resize) == ("reference", 256)
    yy, xx = np.mgrid[0:300, 0:400]
    photo = np.stack([xx * 255 // 400, yy * 255 // 300, (xx + yy) * 255 // 700], axis=-1).astype(np.uint8)
    photo[100:110, 150:160] = 255  # a mark off centre, so a shifted crop would show
    Image.fromarray(photo).save(tmp_path / "photo.png")
    pixels, _ = read_images([str(tmp_path / "photo.png")], reference, channels=3)
    expected = Image.fromarray(photo).resize((341, 256), Image.Resampling.BILINEAR)  # short side 256
    left, top = (341 - 224) // 2, (256 - 224) // 2
    expected = np.asarray(expected.crop((left, top, left + 224, top + 224))).transpose(2, 0, 1)
    assert pixels.shape == (1, 3, 224, 224)
    assert np.abs(pixels[0].astype(int) - expected).mean() < 1  # one resampling instead of two: close, not equal


# ---------------------------------------------------------------- the smoke champion

def _smoke_test_split():
    bundle = load_dataset(classes=list(SMOKE_CLASSES), train_per_class=40, val_per_class=20, test_per_class=40,
                          seed=0, download=False)
    return bundle.test.images.numpy(), np.array(list(SMOKE_CLASSES))[bundle.test.labels.numpy()]


def _readme_serve_commands(model_uri: str, tracking_uri: str, port: int) -> tuple[str, str]:
    """README's serve and curl lines, on the test's store, model and port (everything else as printed)."""
    lines = readme_commands("Serve the model")
    serve = next(line for line in lines if "mlflow models serve" in line)
    curl = next(line for line in lines if line.startswith("curl"))
    serve = (serve.replace("models:/fmnist-sandals-to-boots@champion", model_uri)
             .replace("sqlite:///mlflow.db", tracking_uri).replace("5001", str(port)))
    return serve, curl.replace("5001", str(port))


@pytest.fixture(scope="module")
def served(smoke_run, smoke_store, tmp_path_factory):
    """The smoke champion (onnxruntime, int8) behind `mlflow models serve`, started as README says."""
    port = free_port()
    uri = f"models:/smoke-model/{smoke_run['registered']['version']}"
    serve, curl = _readme_serve_commands(uri, smoke_store["tracking.uri"], port)
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", "-c", serve], cwd=PROJECT_ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while time.time() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            pytest.fail("scoring server did not start:\n" + log.read_text()[-3000:])
        yield {"url": url, "curl": curl}
    finally:
        try:
            os.killpg(proc.pid, 15)  # bash, mlflow and its uvicorn: one process group
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def _invoke(url: str, body) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(f"{url}/invocations", content=content, headers={"Content-Type": "application/json"},
                      timeout=60)


def test_scoring_server_answers_with_dataset_labels_names_and_probabilities(served, smoke_run, smoke_store):
    images, labels = _smoke_test_split()
    answer = _invoke(served["url"], {"inputs": images.tolist()})  # uint8 pixels, as a client has them
    assert answer.status_code == 200, answer.text
    rows = answer.json()["predictions"]
    assert len(rows) == len(images)
    assert {r["name"] for r in rows} <= set(SMOKE_CLASSES.values())
    assert all(SMOKE_CLASSES[r["label"]] == r["name"] for r in rows)  # the dataset's own ids: 5, 7, 9
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 and r["probability"] == max(r["probabilities"].values())
               for r in rows)
    accuracy = float(np.mean([r["label"] == y for r, y in zip(rows, labels)]))
    version = MlflowClient(smoke_store["tracking.uri"]).get_model_version("smoke-model",
                                                                          smoke_run["registered"]["version"])
    assert abs(accuracy - float(version.tags["served_accuracy"])) <= 0.01
    as_floats = _invoke(served["url"], {"inputs": (images[:8] / 255.0).tolist()}).json()["predictions"]
    assert [r["label"] for r in as_floats] == [r["label"] for r in rows[:8]]


def test_readme_curl_example_as_printed(served):
    result = subprocess.run(served["curl"], shell=True, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["predictions"]
    assert len(rows) == 2 and {r["name"] for r in rows} <= set(SMOKE_CLASSES.values())


@pytest.mark.parametrize("body, message", [
    ({"inputs": [[1, 2, 3]]}, "got shape [1, 3]"),
    ({"inputs": np.zeros((1, 3, 28, 28)).tolist()}, "got shape [1, 3, 28, 28]"),
    ({"inputs": [["a", "b"]]}, "must be numbers"),
])
def test_scoring_server_refuses_malformed_requests_in_one_line(served, body, message):
    answer = _invoke(served["url"], body)
    assert answer.status_code == 400
    error = answer.json()
    assert message in error["message"] and "\n" not in error["message"] and "stack_trace" not in error


def test_int8_onnx_candidate_is_gated_and_registered(smoke_run, smoke_store):
    client = MlflowClient(smoke_store["tracking.uri"])
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id],
                              f"tags.mlflow.parentRunId = '{smoke_run['run_id']}' "
                              "and tags.`shrinkflow.stage` = 'export'")
    metrics = runs[0].data.metrics
    assert metrics["quantized_static.onnx.val_accuracy_drop"] <= 0.05  # configs/smoke.yaml quantize.max_accuracy_drop
    assert metrics["quantized_static.onnx.top1_agreement_torch_int8"] >= 0.9
    assert metrics["quantized_static.onnx.size_bytes"] < 0.4 * metrics["pruned.onnx.size_bytes"]  # int8 weights
    assert "onnx/quantized_static.onnx" in {a.path for a in client.list_artifacts(runs[0].info.run_id, "onnx")}
    row = {r["candidate"]: r for r in smoke_run["table"]}["quantized_static"]
    assert row["onnx_accuracy"] == metrics["quantized_static.onnx.accuracy"]


def test_onnxruntime_and_torch_pyfuncs_agree(smoke_run, smoke_store, prefect):
    """The same champion registered for torch (only register runs again): top-1 agreement with the
    onnxruntime version on the test split, and its served accuracy is evaluate's."""
    import mlflow.pyfunc

    from flows.compress import compress

    on_torch = compress("configs/smoke.yaml", {**smoke_store, "register.runtime": "torch"})
    assert on_torch["executed"] == ["load_data", "fetch_pretrained", "report", "register"]
    assert on_torch["registered"]["runtime"] == "torch"
    assert on_torch["registered"]["version"] != smoke_run["registered"]["version"]
    mlflow.set_tracking_uri(smoke_store["tracking.uri"])
    images, labels = _smoke_test_split()
    ort = mlflow.pyfunc.load_model(f"models:/smoke-model/{smoke_run['registered']['version']}").predict(images)
    eager = mlflow.pyfunc.load_model(f"models:/smoke-model/{on_torch['registered']['version']}").predict(images)
    assert (ort["label"] == eager["label"]).mean() >= 0.99
    row = {r["candidate"]: r for r in smoke_run["table"]}["quantized_static"]
    assert (eager["label"].to_numpy() == labels).mean() == pytest.approx(row["accuracy"], abs=1e-6)


def test_predict_an_image_folder_writes_one_row_per_image(smoke_run, smoke_store, tmp_path, capsys):
    from cli.main import main
    from tests.test_image_folder import _bomb_png

    images, labels = _smoke_test_split()
    folder_names = {5: "Sandal", 7: "7", 9: "Ankle boot"}  # class folders by name or by dataset label id
    for i, (pixels, label) in enumerate(zip(images, labels)):
        (tmp_path / "images" / folder_names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[0]).save(tmp_path / "images" / folder_names[label] / f"{i:03d}.png")
    _bomb_png(tmp_path / "images" / "Sandal" / "huge.png")  # left out under the default policy, and counted
    out = tmp_path / "predictions.csv"
    code = main(["predict", f"models:/smoke-model/{smoke_run['registered']['version']}", "--images",
                 str(tmp_path / "images"), "--tracking-uri", smoke_store["tracking.uri"], "--output", str(out)])
    assert code == 0
    table = pd.read_csv(out)
    assert len(table) == len(images) and list(table.columns) == ["file", "label", "name", "probability",
                                                                 "true_label", "correct"]
    accuracy = table["correct"].mean()
    row = {r["candidate"]: r for r in smoke_run["table"]}["quantized_static"]
    assert abs(accuracy - row["onnx_accuracy"]) <= 0.005  # the served file, evaluated in the pipeline
    printed = capsys.readouterr().out
    assert f"accuracy: {accuracy:.4f}" in printed and f"{len(images)} images (1 unreadable skipped)" in printed
    client = MlflowClient(smoke_store["tracking.uri"])
    run = client.search_runs([client.get_experiment_by_name("shrinkflow-predictions").experiment_id],
                             "tags.`shrinkflow.kind` = 'predict'")[0]
    assert run.info.status == "FINISHED" and run.data.metrics["accuracy"] == pytest.approx(accuracy)
    assert run.data.metrics["skipped_images"] == 1
    assert "predictions.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}


PREDICT_BAD_INPUTS = [
    (["models:/smoke-model/99", "--images", "docs/examples"], "not found"),
    (["models:/no-such-model@champion", "--config", "configs/smoke.yaml"], "not found"),
    (["models:/smoke-model/1", "--images", "no/such/folder"], "does not exist"),
    (["models:/smoke-model/1"], "one of the arguments --images --config is required"),
    (["models:/smoke-model/1", "--images", "docs/examples", "--output", "docs"], "output docs is a directory"),
    (["models:/smoke-model/1", "--images", "{bombs}", "--bad-images", "fail"],
     "bomb.png: 1600000000 pixels exceed PIL's decompression-bomb limit"),
]


@pytest.mark.parametrize("args, message", PREDICT_BAD_INPUTS)
def test_predict_bad_input_is_one_line_exit_2(smoke_run, smoke_store, args, message, capsys, tmp_path):
    """In this process (each case but the image file's is answered before Prefect starts); the installed
    command once, below."""
    from cli.main import main
    from tests.test_image_folder import _bomb_png

    (tmp_path / "bombs").mkdir()
    _bomb_png(tmp_path / "bombs" / "bomb.png")
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "bombs" / "fine.png")
    args = [a.replace("{bombs}", str(tmp_path / "bombs")) for a in args]

    try:
        code = main(["predict", *args, "--tracking-uri", smoke_store["tracking.uri"]])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_predict_bad_input_through_the_installed_command(smoke_run, smoke_store):
    args, message = PREDICT_BAD_INPUTS[0]
    env = {**os.environ, "MLFLOW_TRACKING_URI": smoke_store["tracking.uri"]}
    result = subprocess.run([str(BIN / "shrinkflow"), "predict", *args], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_no_mlflow_warning_about_pickling_or_type_hints(smoke_run):
    noisy = [w for w in smoke_run["_warnings"] if re.search(r"pickl|type hint|type_hint", w, re.I)]
    assert not noisy, noisy
