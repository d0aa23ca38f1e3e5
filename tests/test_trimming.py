import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from compression import CompressionError
from compression.checkpoint import load_model, save_model
from compression.models import build_model, count_params
from compression.pruning import prune_structured
from compression.trimming import apply_trim, check_trimmable_arch, find_stages, plan_trim, trim


def test_resnet18_to_one_block_per_stage_is_resnet10():
    teacher = build_model("resnet18", 10, 1, 28)
    student = trim(teacher, 1)
    reference = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    reference.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    assert [len(getattr(student, s)) for s in ("layer1", "layer2", "layer3", "layer4")] == [1, 1, 1, 1]
    assert count_params(student) == count_params(reference)
    assert ([tuple(v.shape) for v in student.state_dict().values()]
            == [tuple(v.shape) for v in reference.state_dict().values()])
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


def test_a_resnet_model_file_trimmed_by_the_old_code_still_loads(tmp_path):
    """Before other families, trimming rebuilt each stage as nn.Sequential(*kept_blocks): blocks renumbered."""
    model = build_model("resnet50", 4, 1, 28).eval()
    old_plan = {"layer1": [0], "layer2": [0, 2], "layer3": [0, 1, 3, 5], "layer4": [0, 2]}
    for stage, kept in old_plan.items():
        blocks = getattr(model, stage)
        setattr(model, stage, nn.Sequential(*[blocks[i] for i in kept]))
    model.shrinkflow_spec["trim"] = old_plan
    save_model(model, tmp_path / "old.pt")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "old.pt")(x), model(x))


@pytest.mark.parametrize("arch, reason", [
    ("densenet121", "dense layers concatenate"),
    ("shufflenet_v2_x0_5", "shuffle channels"),
    ("vgg11", "no skip connections"),
    ("squeezenet1_0", "no skip connection"),
])
def test_families_without_removable_blocks_are_refused_naming_arch_and_stage(arch, reason):
    model = build_model(arch, 10, 1, 28)
    for attempt in (lambda: trim(model, 1), lambda: plan_trim(model, 1), lambda: apply_trim(model, {"features": [0]})):
        with pytest.raises(CompressionError, match=f"^{arch}: trim is not supported: .*{reason}"):
            attempt()


def test_an_architecture_name_is_checked_without_building_the_adapted_model():
    check_trimmable_arch("mobilenet_v3_small")  # no refusal: returns quietly
    with pytest.raises(CompressionError, match="^densenet121: trim is not supported: its dense layers"):
        check_trimmable_arch("densenet121")


def test_bad_keep_values():
    model = build_model("resnet18", 10, 1, 28)
    with pytest.raises(CompressionError, match="keep_per_stage"):
        plan_trim(model, [1, 1])
    with pytest.raises(CompressionError, match="keep_per_stage"):
        plan_trim(model, 0)
    with pytest.raises(CompressionError,
                       match=r"7 of them \(mobilenet_v2 has 7 stages of 1, 2, 3, 4, 3, 3, 1 blocks\)"):
        plan_trim(build_model("mobilenet_v2", 10, 1, 28), [1, 1, 1, 1])


def test_a_plan_may_not_drop_a_block_that_changes_the_shape():
    model = build_model("mobilenet_v3_small", 10, 1, 28)  # features.4 goes from 24 to 40 channels
    kept = [i for i in range(len(model.features)) if i != 4]
    with pytest.raises(CompressionError, match=r"drops children \[4\], which change the shape"):
        apply_trim(model, {"features": kept})
    with pytest.raises(CompressionError, match="not a block container"):
        apply_trim(model, {"classifier": [0]})


def test_mobilenet_stages_are_runs_of_one_output_shape_and_spread_picks_across_them():
    model = build_model("mobilenet_v2", 10, 1, 28)
    stages = find_stages(model)
    # features.1 .. features.17; each stage starts with the block that changes the shape
    assert [s.fixed for s in stages] == [[1], [2], [4], [7], [11], [14], [17]]
    assert stages[3].free == [8, 9, 10]
    plan = plan_trim(model, [1, 2, 2, 3, 3, 1, 1], "spread")["features"]
    assert plan == [0, 1, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 17, 18]
    twice = trim(trim(model, [1, 2, 2, 3, 3, 1, 1], "spread"), 2, "first")
    assert twice.shrinkflow_spec["trim"]["features"] == [0, 1, 2, 3, 4, 5, 7, 8, 11, 12, 14, 17, 18]


# arch, input size, blocks per stage (from the architecture's definition), keep_per_stage
FAST = [
    ("mobilenet_v2", 28, [1, 2, 3, 4, 3, 3, 1], 2),
    ("mobilenet_v3_small", 28, [1, 2, 3, 2, 3], 1),
    ("mobilenet_v3_large", 28, [1, 2, 3, 4, 2, 3], [1, 1, 2, 2, 1, 2]),
    ("mnasnet0_5", 28, [3, 3, 3, 2, 4, 1], 1),
    ("efficientnet_b0", 28, [1, 2, 2, 3, 3, 4, 1], 2),
    ("regnet_x_400mf", 28, [1, 2, 7, 12], 1),
    ("regnet_y_400mf", 28, [1, 3, 6, 6], 2),
]
SLOW = [
    ("efficientnet_v2_s", 28, [2, 4, 4, 6, 9, 15], 2),
    ("convnext_tiny", 28, [3, 3, 9, 3], 1),
    ("swin_t", 28, [2, 2, 6, 2], 1),
    ("swin_v2_t", 28, [2, 2, 6, 2], [1, 1, 3, 1]),
    ("vit_b_16", 28, [12], 3),  # 28x28 padded to a 2x2 grid of 16x16 patches (compression.models)
]
CASES = FAST + [pytest.param(*case, marks=pytest.mark.slow) for case in SLOW]


def _kept_blocks_equal(teacher: nn.Module, student: nn.Module) -> None:
    for path, kept in student.shrinkflow_spec["trim"].items():
        original = list(teacher.get_submodule(path).children())
        trimmed = list(student.get_submodule(path).children())
        assert len(trimmed) == len(kept)
        for position, index in enumerate(kept):
            teacher_state, student_state = original[index].state_dict(), trimmed[position].state_dict()
            assert teacher_state.keys() == student_state.keys()
            assert all(torch.equal(teacher_state[k], student_state[k]) for k in teacher_state), (path, index)


@pytest.mark.parametrize("arch, size, stage_sizes, keep", CASES, ids=[c[0] for c in FAST + SLOW])
def test_family_trims_keeps_weights_reloads_and_prunes(arch, size, stage_sizes, keep, tmp_path):
    torch.manual_seed(0)
    teacher = build_model(arch, 3, 1, size).eval()
    assert [s.size for s in find_stages(teacher)] == stage_sizes
    student = trim(teacher, keep, "spread").eval()
    counts = [keep] * len(stage_sizes) if isinstance(keep, int) else keep
    assert [s.size for s in find_stages(student)] == [min(k, n) for k, n in zip(counts, stage_sizes)]
    assert count_params(student) < count_params(teacher)
    _kept_blocks_equal(teacher, student)

    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        out = student(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    save_model(student, tmp_path / "trimmed.pt")
    reloaded = load_model(tmp_path / "trimmed.pt")
    assert reloaded.shrinkflow_spec["trim"] == student.shrinkflow_spec["trim"]
    with torch.no_grad():
        assert torch.equal(reloaded(x), out)

    params = count_params(student)
    prune_structured(student, x[:1], ratio=0.5, round_to=8)
    student.eval()
    assert count_params(student) < params
    with torch.no_grad():
        pruned_out = student(x)
    save_model(student, tmp_path / "pruned.pt")
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "pruned.pt")(x), pruned_out)
