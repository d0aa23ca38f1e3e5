import pytest
import torch
from torch import nn

from compression import CompressionError
from compression.models import (
    adapt_input_channels,
    build_model,
    example_input,
    head,
    input_channels,
    model_spec,
    quantization_info,
    replace_head,
    update_spec,
)

# The large builds take seconds each: they run with the slow tests (make test-slow, CI), not in make test.
ARCHS = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "regnet_y_400mf"] + [
    pytest.param(arch, marks=pytest.mark.slow) for arch in ("resnet50", "efficientnet_b0", "densenet121", "vgg11",
                                                             "convnext_tiny")]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_family_takes_small_grey_input(arch):
    model = build_model(arch, num_classes=7, in_channels=1, input_size=28).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert head(model).out_features == 7
    spec = dict(model.shrinkflow_spec)
    # Families whose downsampling would run a 28x28 map to nothing record how their stem was shrunk.
    assert spec.pop("adaptations", ["shrink-stem"])[0] == "shrink-stem"
    assert spec == {"arch": arch, "num_classes": 7, "in_channels": 1, "input_size": 28, "trim": None}


def test_unknown_architecture_suggests_names():
    with pytest.raises(CompressionError, match=r"unknown architecture 'resnet81'.*resnet18"):
        build_model("resnet81", 10)


def test_grey_stem_sums_rgb_filters():
    model = build_model("resnet18", 10, in_channels=3, input_size=28)
    rgb = model.conv1.weight.detach().clone()
    adapt_input_channels(model, 1)
    assert model.conv1.in_channels == 1
    assert torch.allclose(model.conv1.weight, rgb.sum(1, keepdim=True))
    # a grey image repeated over RGB gives the same stem output as the summed filter on one channel
    x = torch.randn(1, 1, 28, 28)
    expected = nn.functional.conv2d(x.expand(-1, 3, -1, -1), rgb, stride=2, padding=3)
    assert torch.allclose(model.conv1(x), expected, atol=1e-5)


def test_replace_head_keeps_backbone():
    model = build_model("mobilenet_v2", 10, 1, 28)
    backbone = model.features[0][0].weight.clone()
    replace_head(model, 3)
    assert head(model).out_features == 3 and model.shrinkflow_spec["num_classes"] == 3
    assert torch.equal(model.features[0][0].weight, backbone)


def test_bad_num_classes_and_weights():
    with pytest.raises(CompressionError, match="num_classes"):
        build_model("resnet18", 1)
    with pytest.raises(CompressionError, match="unknown weights 'IMAGENET9'"):
        build_model("resnet18", 10, weights="IMAGENET9")


def test_example_input_follows_the_spec():
    model = build_model("resnet18", 4, in_channels=1, input_size=28)
    example = example_input(model)
    assert example.shape == (1, 1, 28, 28) and not example.any()
    assert example_input(model, batch=8, size=32).shape == (8, 1, 32, 32)
    assert input_channels(model) == 1 and quantization_info(model) is None
    with pytest.raises(CompressionError, match="model has no shrinkflow_spec"):
        example_input(nn.Linear(2, 2))


def test_spec_updates_only_touch_models_that_have_one():
    model = build_model("resnet18", 4, 1, 28)
    update_spec(model, pruned=True)
    assert model_spec(model)["pruned"] is True and list(model_spec(model))[-1] == "pruned"
    plain = nn.Linear(2, 2)
    update_spec(plain, pruned=True)
    assert model_spec(plain) == {} and not hasattr(plain, "shrinkflow_spec")


@pytest.mark.parametrize("stem, side", [("torchvision", 7), ("no-pool", 14), ("full-res", 28)])
def test_a_resnet_stem_sets_the_first_blocks_resolution_and_survives_trim_prune_and_a_file(tmp_path, stem, side):
    from compression.checkpoint import load_model, save_model
    from compression.pruning import prune_structured
    from compression.trimming import trim

    model = build_model("resnet18", num_classes=10, in_channels=1, input_size=28, stem=stem)
    sides = []
    model.layer1.register_forward_hook(lambda module, inputs, out: sides.append(out.shape[-1]))  # returns None
    model.eval()(torch.zeros(1, 1, 28, 28))
    assert sides == [side]
    assert model.shrinkflow_spec.get("stem") == (None if stem == "torchvision" else stem)  # old specs unchanged
    trim(model, keep_per_stage=1)
    prune_structured(model, torch.zeros(1, 1, 28, 28), ratio=0.5, round_to=8)
    save_model(model, tmp_path / "student.pt")
    loaded = load_model(tmp_path / "student.pt").eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_a_stem_other_than_torchvisions_is_for_the_resnet_family_only():
    with pytest.raises(CompressionError, match="mobilenet_v2: stem 'no-pool' applies to the ResNet family"):
        build_model("mobilenet_v2", num_classes=10, in_channels=1, input_size=28, stem="no-pool")
    with pytest.raises(CompressionError, match="unknown stem 'tiny'"):
        build_model("resnet18", num_classes=10, in_channels=1, input_size=28, stem="tiny")
