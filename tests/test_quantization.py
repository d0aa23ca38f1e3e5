"""int8 quantization and ONNX export of a model trained on real Fashion-MNIST (a few seconds)."""

import pytest
import torch
from torch import nn

from compression import CompressionError
from compression.checkpoint import load_model, save_model
from compression.data import load_dataset
from compression.export import cached_export, export_onnx, parity, session
from compression.measure import count_macs, count_nonzero_params, evaluate_classifier
from compression.models import build_model, example_input
from compression.quantization import LEGACY_RECIPE, RECIPE, float_tail, quantize, supported_backends
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


def _int8_convs(q) -> dict:
    return {name: m for name, m in q.named_modules()
            if "quantized" in type(m).__module__ and "Conv" in type(m).__name__}


def test_static_recipe_keeps_the_head_float_and_activations_at_8_bits(trained):
    model, _, calibration = trained
    q = quantize(model, "static", calibration[0][:1], calibration)
    legacy = quantize(model, "static", calibration[0][:1], calibration, recipe=LEGACY_RECIPE)
    assert q.shrinkflow_spec["quantization"]["recipe"] == RECIPE
    assert type(q.fc) is nn.Linear and "quantized" in type(legacy.fc).__module__
    # 8-bit activations with 7-bit weights (pairs of uint8 x int8 products stay within int16), where torch's
    # default has 7-bit activations with 8-bit weights: about half the output step over the same range.
    convs, legacy_convs = _int8_convs(q), _int8_convs(legacy)
    assert convs.keys() == legacy_convs.keys() and len(convs) > 5
    for name, conv in convs.items():
        assert int(conv.weight().int_repr().abs().max()) <= 64 < int(legacy_convs[name].weight().int_repr().abs().max())
        assert conv.scale < 0.75 * legacy_convs[name].scale, name


def test_a_model_saved_without_a_recipe_loads_with_the_legacy_recipe(trained, tmp_path):
    model, bundle, calibration = trained
    images = next(iter(bundle.batches("test", 64)))[0]
    legacy = quantize(model, "static", calibration[0][:1], calibration, recipe=LEGACY_RECIPE)
    settings = {k: v for k, v in legacy.shrinkflow_spec["quantization"].items() if k != "recipe"}
    legacy.shrinkflow_spec = {**legacy.shrinkflow_spec, "quantization": settings}  # as files were written before
    save_model(legacy, tmp_path / "old.pt")
    reloaded = load_model(tmp_path / "old.pt")
    with torch.no_grad():
        assert torch.equal(reloaded(images), legacy(images))
    assert "quantized" in type(reloaded.fc).__module__
    settings["recipe"] = "int4-someday"  # written by a later version
    save_model(legacy, tmp_path / "new.pt")
    with pytest.raises(CompressionError, match="unknown static int8 recipe 'int4-someday'"):
        load_model(tmp_path / "new.pt")


def test_the_float_tail_is_the_head_and_what_follows_it(tmp_path):
    torch.manual_seed(0)
    squeeze = build_model("squeezenet1_1", 5, 1, 28).eval()
    # The conv head with its ReLU and pooling: were they int8, the logits would be again.
    assert float_tail(squeeze) == ["classifier.1", "classifier.2", "classifier.3"]
    assert float_tail(build_model("mobilenet_v3_small", 5, 1, 28)) == ["classifier.3"]
    q = quantize(squeeze, "static", example_input(squeeze), [torch.randn(8, 1, 28, 28)])
    assert not any("quantized" in type(q.get_submodule(name)).__module__ for name in ("classifier.1", "classifier.3"))
    assert "quantize_per_tensor" not in q.code.split("classifier")[-1]  # nor rounded to int8 on the way out
    save_model(q, tmp_path / "int8.pt")
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "int8.pt")(x), q(x))


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
    with pytest.raises(CompressionError, match="unknown static int8 recipe 'best'"):
        quantize(model, "static", example, calibration, recipe="best")
    q = quantize(model, "dynamic", example)
    with pytest.raises(CompressionError, match="already quantized"):
        quantize(q, "static", example, calibration)
    with pytest.raises(CompressionError, match="quantized models cannot be exported to ONNX"):
        export_onnx(q, example, tmp_path / "q.onnx")
    assert "x86" in supported_backends()

