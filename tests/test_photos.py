"""Photos at 224 px: configs/imagenet-resnet18.yaml on a folder of real JPEG and PNG files written here,
through every stage, registered, predicted and served at the evaluation transform."""

import json
import os
import subprocess
import time

import httpx
import numpy as np
import pytest
import torch
import torchvision
from mlflow.tracking import MlflowClient
from PIL import Image

from compression.checkpoint import read_model_file
from compression.images import ImageTransform, decode
from tests.conftest import PROJECT_ROOT, free_port

# A minute on 2 cores: with the service and concurrency checks in `make test-slow` (CI runs both).
pytestmark = pytest.mark.slow

CLASSES = ["circles", "squares", "stripes"]


def _photos(root, per_class: int = 12):
    """Colour-coded photos of 240 x 320 (JPEG) and 256 x 256 (PNG) px: the class is the dominant channel."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            height, width = (240, 320) if i % 2 else (256, 256)
            pixels = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
            pixels[:, :, c] += 140
            Image.fromarray(pixels).save(root / name / (f"{i}.jpg" if i % 2 else f"{i}.png"), quality=90)
    return root


@pytest.fixture(scope="module")
def photos_run(prefect, tmp_path_factory):
    """The pipeline at 224 px, torchvision's ImageNet weights read from $TORCH_HOME (none downloaded)."""
    tmp_path = tmp_path_factory.mktemp("photos")
    torch_home = tmp_path / "torch"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), torch_home / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1])
    os.environ["TORCH_HOME"] = str(torch_home)
    store = {"tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "output_dir": str(tmp_path / "outputs")}
    from flows.compress import compress

    try:
        result = compress("configs/imagenet-resnet18.yaml", {
            **store, "data.data_dir": str(_photos(tmp_path / "images")), "data.val_per_class": 2,
            "finetune.freeze_epochs": 1, "finetune.train.epochs": 2, "finetune.train.batch_size": 8,
            "distill.train.epochs": 1, "distill.train.batch_size": 8, "prune.train.epochs": 1,
            "prune.train.batch_size": 8, "prune.iterative_steps": 1, "quantize.enabled": True,
            "quantize.calibration_size": 8, "quantize.max_accuracy_drop": 1.0, "export.onnx": True,
            "evaluate.latency_repeats": 5, "evaluate.speed_rounds": 1, "evaluate.throughput_batch": 2,
            "evaluate.throughput_seconds": 0.05, "register.max_accuracy_drop": 1.0,
            # occlusion is a forward pass per patch position: one image and one per class under corruption
            "fidelity.attribution_images": 1, "fidelity.corruption_images": 3})
    finally:
        os.environ.pop("TORCH_HOME")
    return {**result, "store": store, "images": tmp_path / "images", "reference": reference}


def test_every_stage_runs_at_224_px_and_the_model_records_its_evaluation_transform(photos_run):
    assert [r["candidate"] for r in photos_run["table"]][:4] == ["teacher", "student_kd", "student_plain", "pruned"]
    client = MlflowClient(photos_run["store"]["tracking.uri"])
    parent = client.get_run(photos_run["run_id"])
    fetch = client.get_run(parent.data.tags["stage.fetch_pretrained.run_id"])
    assert fetch.data.tags["source"] == "torchvision:resnet18:IMAGENET1K_V1"
    state = read_model_file(fetch.data.tags["shrinkflow.workdir"] + "/pretrained.pt")["state_dict"]
    for key in ("conv1.weight", "layer1.0.conv1.weight", "fc.weight"):  # from the torch cache, stem unchanged
        assert torch.equal(state[key], photos_run["reference"].state_dict()[key])
    load = client.get_run(parent.data.tags["stage.load_data.run_id"])
    assert {a.path for a in client.list_artifacts(load.info.run_id, "manifest")} == {"manifest/manifest-train.csv.gz"}
    assert load.data.metrics["images_listed"] == 36 and load.data.metrics["bad_images_skipped"] == 0
    finetune = client.get_run(parent.data.tags["stage.finetune.run_id"])
    assert "loader_share" in finetune.data.metrics
    teacher = next(r for r in photos_run["table"] if r["candidate"] == "teacher")
    meta = read_model_file(teacher["path"])["meta"]
    assert meta["transform"] == {"kind": "reference", "size": 224, "resize": 256, "mode": "RGB"}
    assert photos_run["registered"]["uri"].startswith("models:/imagenet-resnet18-compressed@")


def test_predict_reads_the_folder_as_evaluation_did(photos_run):
    from flows.predict import predict

    result = predict(model=photos_run["registered"]["uri"], images=str(photos_run["images"]),
                     tracking_uri=photos_run["store"]["tracking.uri"])
    assert result["images"] == 36 and result["skipped"] == 0 and set(result["counts"]) <= set(CLASSES)


def test_the_scoring_server_answers_for_evaluation_sized_pixels(photos_run, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env.update(MLFLOW_TRACKING_URI=photos_run["store"]["tracking.uri"],
               PATH=f"{PROJECT_ROOT / '.venv' / 'bin'}:{env['PATH']}")
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(["mlflow", "models", "serve", "-m", photos_run["registered"]["uri"], "--env-manager",
                               "local", "-h", "127.0.0.1", "-p", str(port)], cwd=PROJECT_ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        image = decode(str(photos_run["images"] / "stripes" / "1.jpg"), ImageTransform.for_input(224))
        answer = httpx.post(f"http://127.0.0.1:{port}/invocations", content=json.dumps({"inputs": [image.tolist()]}),
                            headers={"Content-Type": "application/json"}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["name"] in CLASSES
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
