import pytest
import torch
from torchvision.models.resnet import BasicBlock, ResNet

from compression import CompressionError
from compression.models import build_model, count_params
from compression.trimming import plan_trim, trim


def test_resnet18_to_one_block_per_stage_is_resnet10():
    teacher = build_model("resnet18", 10, 1, 28)
    student = trim(teacher, 1)
    reference = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    reference.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    assert [len(getattr(student, s)) for s in ("layer1", "layer2", "layer3", "layer4")] == [1, 1, 1, 1]
    assert count_params(student) == count_params(reference)
    assert [tuple(v.shape) for v in student.state_dict().values()] == [tuple(v.shape) for v in reference.state_dict().values()]
    # initialised from the teacher, which itself is untouched
    assert torch.equal(student.layer3[0].conv1.weight, teacher.layer3[0].conv1.weight)
    assert len(teacher.layer1) == 2
    assert student.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert student.shrinkflow_spec["trim"] == {"layer1": [0], "layer2": [0], "layer3": [0], "layer4": [0]}


def test_spread_strategy_and_bottleneck_blocks():
    model = build_model("resnet50", 10, 1, 28)  # stages of 3, 4, 6, 3 blocks; block 0 has a downsample branch
    assert plan_trim(model, 1) == {"layer1": [0], "layer2": [0], "layer3": [0], "layer4": [0]}
    assert plan_trim(model, 3, "spread")["layer3"] == [0, 1, 5]
    assert plan_trim(model, [1, 1, 3, 1])["layer3"] == [0, 1, 2]


def test_trimming_twice_records_indices_of_the_original():
    model = build_model("resnet50", 10, 1, 28)
    once = trim(model, 4, "spread")  # layer3 keeps [0, 1, 3, 5]
    twice = trim(once, 2, "spread")
    assert once.shrinkflow_spec["trim"]["layer3"] == [0, 1, 3, 5]
    assert twice.shrinkflow_spec["trim"]["layer3"] == [0, 1]
    assert twice.shrinkflow_spec["trim"]["layer2"] == [0, 1]


def test_unsupported_architecture():
    with pytest.raises(CompressionError, match="ResNet-family models only, not mobilenet_v2"):
        trim(build_model("mobilenet_v2", 10, 1, 28), 1)


def test_bad_keep_values():
    model = build_model("resnet18", 10, 1, 28)
    with pytest.raises(CompressionError, match="keep_per_stage"):
        plan_trim(model, [1, 1])
    with pytest.raises(CompressionError, match="keep_per_stage"):
        plan_trim(model, 0)
