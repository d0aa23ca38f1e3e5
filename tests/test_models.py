import pytest
import torch
from torch import nn

from compression import CompressionError
from compression.models import adapt_input_channels, build_model, head, replace_head

ARCHS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "densenet121",
         "vgg11", "regnet_y_400mf", "convnext_tiny"]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_family_takes_small_grey_input(arch):
    model = build_model(arch, num_classes=7, in_channels=1, input_size=28).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert head(model).out_features == 7
    assert model.shrinkflow_spec == {"arch": arch, "num_classes": 7, "in_channels": 1, "input_size": 28, "trim": None}


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
