"""Every torchvision family through build, structured prune + reload, int8 + reload and ONNX parity, on tiny
inputs (the smallest member of each family). The cheap ones run in `make test`; the rest are slow (`make test-slow`)."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from compression import CompressionError
from compression.checkpoint import load_model, read_model_file, save_model
from compression.export import export_onnx, parity, session
from compression.measure import count_macs
from compression.models import (
    build_model,
    check_supported,
    count_params,
    example_input,
    family,
    head,
    head_classes,
    list_architectures,
    refusal,
    replace_head,
)
from compression.pruning import prune_structured
from compression.quantization import quantize
from tasks.config import PROJECT_ROOT

# The smallest member of each family; which stages are cheap enough (about a second) for make test.
FAMILY_ARCHS = {
    "resnet18": {"build"}, "resnext50_32x4d": set(), "wide_resnet50_2": set(), "mobilenet_v2": set(),
    "mobilenet_v3_small": {"build"}, "efficientnet_b0": set(), "efficientnet_v2_s": set(), "regnet_x_400mf": set(),
    "regnet_y_400mf": set(), "convnext_tiny": set(), "densenet121": set(), "shufflenet_v2_x0_5": {"build", "prune"},
    "mnasnet0_5": {"build", "int8"}, "squeezenet1_1": {"build", "prune"}, "vgg11": set(), "alexnet": set(),
    "googlenet": set(), "inception_v3": set(), "vit_b_16": set(), "swin_t": set(), "swin_v2_t": set(),
}


# ONNX export costs 3-18 s per model (torch.export's tracing): not repeated here for the families whose export
# another test checks against PyTorch. ResNet-18 and MobileNetV3: the smoke pipelines of test_pipeline.py and
# test_families_pipeline.py (the export stage's parity gate); MNASNet and SqueezeNet: the matrix script's subset.
ONNX_TESTED_ELSEWHERE = {"resnet18", "mobilenet_v3_small", "mnasnet0_5", "squeezenet1_1"}


def _params(stage: str):
    archs = [a for a in FAMILY_ARCHS if not (stage == "onnx" and a in ONNX_TESTED_ELSEWHERE)]
    return [pytest.param(arch, marks=() if stage in FAMILY_ARCHS[arch] else pytest.mark.slow) for arch in archs]


def _model(arch: str, channels: int = 1, size: int = 28) -> nn.Module:
    torch.manual_seed(0)
    return build_model(arch, 5, channels, size).eval()


def test_every_family_is_represented():
    families = {family(a) for a in list_architectures()}
    assert families - {family(a) for a in FAMILY_ARCHS} == {"maxvit"}  # refused at build, tested below


@pytest.mark.parametrize("arch", _params("build"))
def test_builds_for_small_grey_input(arch):
    model = _model(arch)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    assert head_classes(model) == 5
    model.train()  # no auxiliary outputs (GoogLeNet, Inception): training takes plain logits
    out = model(torch.randn(2, 1, 28, 28))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)


@pytest.mark.parametrize("arch", _params("prune"))
def test_structured_prune_shrinks_and_reloads_identically(arch, tmp_path):
    model = _model(arch)
    example = example_input(model)
    macs = count_macs(model, example)
    classifier_shape = head(model).weight.shape[0]
    report = prune_structured(model, example, 0.5)
    assert report["param_ratio"] > 1.4 and count_macs(model, example) < macs
    assert head(model).weight.shape[0] == classifier_shape == 5  # the classifier keeps every class
    save_model(model, tmp_path / "pruned.pt")
    reloaded = load_model(tmp_path / "pruned.pt")
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model.eval()(x))
    assert count_params(reloaded) == count_params(model)


@pytest.mark.parametrize("arch", _params("int8"))
def test_static_int8_runs_and_reloads_identically(arch, tmp_path):
    model = _model(arch)
    # Grey images expanded to three channels, as the pipeline feeds an RGB model: a zero channel stride.
    rgb = build_model(arch, 5, 3, 28).eval() if arch == "mnasnet0_5" else None
    for float_model, channels in ((model, 1), (rgb, 3)) if rgb is not None else ((model, 1),):
        calibration = [torch.randn(8, 1, 28, 28).expand(-1, channels, -1, -1) for _ in range(2)]
        quantized = quantize(float_model, "static", example_input(float_model), calibration)
        save_model(quantized, tmp_path / "int8.pt")
        reloaded = load_model(tmp_path / "int8.pt")
        x = torch.randn(3, channels, 28, 28)
        with torch.no_grad():
            out = quantized(x)
            assert out.shape == (3, 5) and torch.equal(reloaded(x), out)


@pytest.mark.parametrize("arch", _params("onnx"))
def test_onnx_export_matches_pytorch(arch, tmp_path):
    model = _model(arch)
    x = torch.randn(4, 1, 28, 28)
    path = export_onnx(model, x, tmp_path / "model.onnx")
    check = parity(model, session(path), x)
    with torch.no_grad():
        scale = max(1.0, float(model(x).abs().max()))
    assert check["top1_agreement"] == 1.0 and check["max_abs_diff"] <= 1e-4 * scale


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["swin_t", "vit_b_32"])
def test_transformers_dynamic_int8_and_pruned_reload(arch, tmp_path):
    model = _model(arch)
    pruned = build_model(arch, 5, 1, 28).eval()
    prune_structured(pruned, example_input(pruned), 0.5)
    for candidate, name in ((quantize(model, "dynamic", example_input(model)), "dyn"), (pruned, "pruned")):
        save_model(candidate, tmp_path / f"{name}.pt")
        x = torch.randn(2, 1, 28, 28)
        with torch.no_grad():
            assert torch.equal(load_model(tmp_path / f"{name}.pt")(x), candidate(x))


@pytest.mark.slow
def test_vit_input_size_is_recorded_and_rebuilt(tmp_path):
    model = build_model("vit_b_32", 5, 1, 28).eval()
    spec = model.shrinkflow_spec
    assert spec["adaptations"] == ["vit-image-size-32"] and model.conv_proj.padding == (2, 2)
    save_model(model, tmp_path / "vit.pt")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "vit.pt")(x), model(x))
    payload = read_model_file(tmp_path / "vit.pt")
    payload["spec"]["adaptations"] = ["vit-image-size-64"]
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(CompressionError, match=r"vit_b_32 at 28x28 now builds with adaptations"):
        load_model(tmp_path / "other.pt")


def test_squeezenet_conv_head_is_replaced_and_never_pruned():
    model = build_model("squeezenet1_1", 10, 1, 28)
    assert isinstance(head(model), nn.Conv2d) and head(model).out_channels == 10
    backbone = model.features[0].weight.clone()
    replace_head(model, 3)
    assert head(model).out_channels == 3 and head(model).kernel_size == (1, 1)
    assert model.shrinkflow_spec["num_classes"] == 3 and torch.equal(model.features[0].weight, backbone)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 3)


def test_known_refusals_name_the_architecture_and_stage_before_any_work():
    with pytest.raises(CompressionError, match=r"^maxvit_t: build is not supported: MaxViT"):
        build_model("maxvit_t", 5, 1, 28)
    squeeze = build_model("squeezenet1_1", 5, 1, 28)
    with pytest.raises(CompressionError, match=r"^squeezenet1_1: quantize-dynamic is not supported"):
        quantize(squeeze, "dynamic", example_input(squeeze))
    assert refusal("resnet18", "prune") is None
    check_supported("vit_b_16", "export")  # no refusal: returns quietly


@pytest.mark.slow
def test_matrix_script_on_a_subset(tmp_path):
    """How CI runs bench/architectures.py: a few families into a temporary page, every cell yes or a reason."""
    out = tmp_path / "architectures.md"
    archs = ["mnasnet0_5", "squeezenet1_1", "maxvit_t"]  # every cell yes; two refusals; refused at build
    proc = subprocess.run([sys.executable, "bench/architectures.py", "--arch", *archs, "--out", str(out),
                           "--workdir", str(tmp_path / "work")], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    progress = [line.split(":")[0] for line in proc.stdout.splitlines() if line.startswith("[")]
    assert progress == [f"[{i}/3] {a}" for i, a in enumerate(archs, 1)]
    rows = {line.split(" | ")[0].lstrip("| "): line.strip("|").split(" | ") for line in out.read_text().splitlines()
            if line.startswith("| ") and line.split(" | ")[0].lstrip("| ") in archs}
    assert set(rows) == set(archs)
    cells = {arch: [c.strip() for c in row[3:13]] for arch, row in rows.items()}
    assert all(c.startswith("yes") for c in cells["mnasnet0_5"]), cells
    assert cells["squeezenet1_1"][8].startswith("squeezenet1_1: quantize-dynamic is not supported")
    assert cells["maxvit_t"][0].startswith("maxvit_t: build is not supported")
    assert not any("FAILS" in c or "not measured" in c for row in cells.values() for c in row)


def test_the_cli_preflight_refuses_a_planned_stage_before_any_run(tmp_path):
    from flows.chain import refusable_stages
    from tasks.config import load_config
    from tasks.preflight import preflight

    overrides = {"source": "scratch:squeezenet1_1", "trim.enabled": False, "output_dir": str(tmp_path / "out"),
                 "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    cfg = load_config(PROJECT_ROOT / "configs" / "smoke.yaml", overrides)
    assert refusable_stages(cfg) == ["prune", "quantize-static", "quantize-dynamic", "export"]
    with pytest.raises(CompressionError, match=r"^squeezenet1_1: quantize-dynamic is not supported"):
        preflight(cfg, refusable_stages(cfg))
    assert not (tmp_path / "mlflow.db").exists()  # refused before the tracking store was touched
    static_only = load_config(PROJECT_ROOT / "configs" / "smoke.yaml", {**overrides, "quantize.modes": ["static"]})
    preflight(static_only, refusable_stages(static_only))


def test_the_preflight_refuses_a_stem_the_family_has_not_before_any_run(tmp_path):
    from flows.chain import refusable_stages
    from tasks.config import ConfigError, load_config
    from tasks.preflight import preflight

    overrides = {"source": "scratch:mobilenet_v2", "model.stem": "no-pool", "output_dir": str(tmp_path / "out"),
                 "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    cfg = load_config(PROJECT_ROOT / "configs" / "smoke.yaml", overrides)
    with pytest.raises(ConfigError, match=r"^model.stem: mobilenet_v2: stem 'no-pool' applies to the ResNet family"):
        preflight(cfg, refusable_stages(cfg))
    assert not (tmp_path / "mlflow.db").exists()
