"""int8 quantization and ONNX export of a model trained on real Fashion-MNIST (a few seconds)."""

import pytest
import torch

from compression import CompressionError
from compression.checkpoint import load_model, save_model
from compression.data import load_dataset
from compression.export import cached_export, export_onnx, parity, session
from compression.measure import count_macs, count_nonzero_params, evaluate_classifier
from compression.models import build_model
from compression.quantization import quantize, supported_backends
from compression.training import TrainConfig, fit, predict
from compression.trimming import trim


@pytest.fixture(scope="module")
def trained():
    """A trimmed ResNet-18 after one epoch on three Fashion-MNIST classes, and its data."""
    torch.manual_seed(0)
    bundle = load_dataset(classes=[0, 1, 7], train_per_class=150, val_per_class=50, test_per_class=100, seed=0,
                          download=False)
    model = trim(build_model("resnet18", 3, 1, 28), 1)
    fit(model, bundle.batches("train", 32, train=True), bundle.batches("val", 256),
        TrainConfig(epochs=1, batch_size=32))
    calibration = [x for x, _ in bundle.batches("train", 64, train=True)][:4]
    return model.eval(), bundle, calibration


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_quantized_accuracy_close_to_float_and_file_round_trips(trained, mode, tmp_path):
    model, bundle, calibration = trained
    example = calibration[0][:1]
    q = quantize(model, mode, example, calibration)
    test = bundle.batches("test", 256)
    float_acc = evaluate_classifier(model, test)["accuracy"]
    q_acc = evaluate_classifier(q, test)["accuracy"]
    assert float_acc > 0.7  # a model worth quantizing
    assert abs(q_acc - float_acc) <= 0.02
    assert (count_nonzero_params(q) == count_nonzero_params(model)
            and count_macs(q, example) == count_macs(model, example))
    save_model(q, tmp_path / "q.pt")
    save_model(model, tmp_path / "f.pt")
    reloaded = load_model(tmp_path / "q.pt")
    logits, _ = predict(q, test)
    assert torch.equal(predict(reloaded, test)[0], logits)
    if mode == "static":  # int8 conv weights: about a quarter of the float file
        assert (tmp_path / "q.pt").stat().st_size < 0.3 * (tmp_path / "f.pt").stat().st_size
        assert any("quantized" in type(m).__module__ for m in reloaded.modules())


def test_onnx_export_agrees_with_pytorch_and_a_damaged_cached_export_is_made_again(trained, tmp_path):
    model, bundle, _ = trained
    images = next(iter(bundle.batches("test", 300)))[0]
    path, reused = cached_export(model, images, tmp_path, "m")
    check = parity(model, session(path), images)  # batch of 300: the batch dimension is dynamic
    assert not reused and check["max_abs_diff"] < 1e-3 and check["top1_agreement"] == 1.0
    assert cached_export(model, images, tmp_path, "m") == (path, True)
    path.write_bytes(path.read_bytes()[:4096])  # cut short, as by a full disk or a copy that stopped
    again, reused = cached_export(model, images, tmp_path, "m")
    assert again == path and not reused and parity(model, session(path), images)["top1_agreement"] == 1.0
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_quantization_settings_fail_clearly(trained, tmp_path):
    model, _, calibration = trained
    example = calibration[0][:1]
    with pytest.raises(CompressionError, match="static quantization needs calibration images"):
        quantize(model, "static", example, [])
    with pytest.raises(CompressionError, match="backend 'tpu' is not supported by this torch build"):
        quantize(model, "static", example, calibration, backend="tpu")
    with pytest.raises(CompressionError, match="unknown quantization mode 'int4'"):
        quantize(model, "int4", example, calibration)
    q = quantize(model, "dynamic", example)
    with pytest.raises(CompressionError, match="already quantized"):
        quantize(q, "static", example, calibration)
    with pytest.raises(CompressionError, match="quantized models cannot be exported to ONNX"):
        export_onnx(q, example, tmp_path / "q.onnx")
    assert "x86" in supported_backends()

