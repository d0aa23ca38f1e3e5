"""The CUDA code paths: mixed precision, channels_last, pinned streamed batches normalised on the GPU, NCCL.

Skipped on a machine without a GPU; `pytest -m gpu` runs them unchanged on one that has it."""

import copy
import math

import pytest
import torch

from compression.data import load_dataset
from compression.fit_plan import FitPlan, train_on
from compression.models import build_model
from compression.train_config import TrainConfig
from compression.training import precision_for
from tests.test_image_folder import write_folder

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _small():
    return load_dataset(classes=[5, 7, 9], train_per_class=32, val_per_class=10, test_per_class=10, download=False)


def test_mixed_precision_channels_last_and_the_teacher_follows_the_student():
    cuda = torch.device("cuda")
    precision = precision_for(cuda)
    assert precision.channels_last and precision.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported()
                                                           else torch.float16)
    assert precision.scaled == (precision.dtype == torch.float16)
    assert precision_for(torch.device("cpu")).dtype is None  # CPU trains in float32
    torch.manual_seed(0)
    student = build_model("resnet18", 3, 1, 28)
    teacher = copy.deepcopy(student)
    cfg = TrainConfig(epochs=2, batch_size=16, optimizer="adamw", lr=1e-3, device="cuda", augment=True)
    result = train_on(student, _small(), cfg, FitPlan(loss="kd"), teacher=teacher)
    assert all(math.isfinite(row["train_loss"]) for row in result.history)
    assert next(student.parameters()).device.type == "cpu"  # back where it came from: the stage saves it
    assert next(teacher.parameters()).device.type == "cuda"
    assert student.conv1.weight.is_contiguous()


def test_streamed_batches_are_pinned_and_normalised_on_the_gpu(tmp_path):
    root = write_folder(tmp_path / "images", per_class=6)
    bundle = load_dataset("image-folder", data_dir=str(root), image_size=64, val_per_class=1, loader_workers=2)
    batches = bundle.batches("train", 4, train=True, augment=True)
    batches.device = torch.device("cuda")
    x, y = next(iter(batches))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float32 and x.shape == (4, 3, 64, 64)
    assert batches._loader.pin_memory
    cpu = bundle.batches("train", 4, train=True, augment=True)
    assert torch.allclose(next(iter(cpu))[0], x.cpu(), atol=1e-6)  # the same samples, normalised on the GPU


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_nccl_processes_train_as_one_process(tmp_path):
    from tasks.config import DistributedConfig
    from tasks.distributed import fit_distributed

    bundle = _small()
    torch.manual_seed(0)
    model = build_model("resnet18", 3, 1, 28)
    cfg = TrainConfig(epochs=1, batch_size=16, optimizer="sgd", lr=0.05, freeze_norm=True, amp=False)
    alone, together = copy.deepcopy(model), copy.deepcopy(model)
    train_on(alone, bundle, cfg, FitPlan())
    fit_distributed(DistributedConfig(processes_per_node=2, backend="nccl"), None, together, bundle, cfg, FitPlan(),
                    None, "train", tmp_path / "checkpoints", "nccl", "")
    largest = max((a - b).abs().max().item()
                  for a, b in zip(alone.state_dict().values(), together.state_dict().values())
                  if a.is_floating_point())
    assert largest < 1e-4  # GPU kernels may sum in another order
