import pytest
import torch

from compression import CompressionError
from compression.checkpoint import load_model, save_model
from compression.measure import count_macs
from compression.models import build_model, count_params
from compression.pruning import prune_structured, prune_unstructured
from compression.trimming import trim


def test_structured_half_ratio_cuts_resnet18_macs_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 3, 28)
    x = torch.randn(4, 3, 28, 28)
    macs_before = count_macs(model, x[:1])
    report = prune_structured(model, x[:1], ratio=0.5, importance="l2")
    macs_after = count_macs(model, x[:1])
    assert macs_after <= 0.4 * macs_before
    assert report["param_ratio"] > 3.5
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (4, 10)
    save_model(model, tmp_path / "pruned.pt")
    reloaded = load_model(tmp_path / "pruned.pt")
    with torch.no_grad():
        assert torch.equal(reloaded(x), out)
    assert count_params(reloaded) == count_params(model)


@pytest.mark.parametrize("importance", ["l1", "bn-scale", "taylor"])
def test_importances_and_iterative_steps_on_a_trimmed_student(importance, tmp_path):
    torch.manual_seed(0)
    student = trim(build_model("resnet18", 5, 1, 28), 1)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 5, (8,))
    steps = []
    prune_structured(student, x[:1], ratio=0.6, importance=importance, iterative_steps=3, round_to=8,
                     gradient_batches=[(x, y)], after_step=lambda step, m: steps.append(count_params(m)))
    assert len(steps) == 3 and steps[0] > steps[1] > steps[2]
    assert all(m.out_channels % 8 == 0 for m in student.modules() if isinstance(m, torch.nn.Conv2d))
    assert student.fc.out_features == 5  # the classifier is never pruned
    save_model(student, tmp_path / "s.pt")
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "s.pt")(x), student.eval()(x))


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.2])
def test_ratio_outside_open_unit_interval(ratio):
    model = build_model("resnet18", 10, 1, 28)
    with pytest.raises(CompressionError, match="prune ratio must be in \\(0, 1\\)"):
        prune_structured(model, torch.randn(1, 1, 28, 28), ratio)
    with pytest.raises(CompressionError, match="prune ratio"):
        prune_unstructured(model, ratio)


def test_unknown_importance():
    with pytest.raises(CompressionError, match="unknown pruning importance 'l3'"):
        prune_structured(build_model("resnet18", 10, 1, 28), torch.randn(1, 1, 28, 28), 0.5, importance="l3")


def test_unstructured_reports_requested_sparsity_and_same_macs():
    model = build_model("resnet18", 10, 1, 28)
    x = torch.randn(1, 1, 28, 28)
    macs = count_macs(model, x)
    report = prune_unstructured(model, 0.7)
    assert report["weight_sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert report["params"] == count_params(model)
    assert report["nonzero_params"] < 0.35 * report["params"]
    assert count_macs(model, x) == macs  # dense MACs do not change
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())  # made permanent
