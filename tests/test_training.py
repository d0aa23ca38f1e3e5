import pytest
import torch

from compression import CompressionError
from compression.data import Batches, Split, load_dataset
from compression.measure import evaluate_classifier, profile, timed_calls
from compression.models import build_model
from compression.training import (
    Progress,
    TrainConfig,
    cross_entropy,
    fit,
    native_bf16,
    precision_for,
    seed_everything,
    train_one_epoch,
)
from compression.transfer import freeze_backbone_for, transfer_param_groups


@pytest.fixture(scope="module")
def small():
    return load_dataset(classes=[0, 1, 7, 9], train_per_class=30, val_per_class=20, test_per_class=25, seed=0)


def _batches(bundle, augment=True):
    train = Batches(bundle.train, 32, bundle.mean, bundle.std, shuffle=True, augment=augment)
    val = Batches(bundle.val, 64, bundle.mean, bundle.std)
    return train, val


def _train(bundle, seed, epochs=2, **kw):
    seed_everything(seed)
    model = build_model("resnet18", 4, 1, 28)
    model.fc = torch.nn.Sequential(torch.nn.Dropout(0.2), model.fc)  # dropout exercises the per-epoch reseeding
    train, val = _batches(bundle)
    result = fit(model, train, val, TrainConfig(epochs=epochs, seed=seed, lr=0.02, checkpoint_seconds=0), **kw)
    return model, result


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_same_seed_gives_identical_weights_and_other_seed_does_not(small):
    a, ra = _train(small, 1)
    b, rb = _train(small, 1)
    c, _ = _train(small, 2)
    timing = {"epoch_time", "images_per_s", "loader_share"}
    assert _same_weights(a, b)
    assert [{k: v for k, v in row.items() if k not in timing} for row in ra.history] == \
        [{k: v for k, v in row.items() if k not in timing} for row in rb.history]
    assert not _same_weights(a, c)


def test_resume_after_crash_matches_an_uninterrupted_run(small, tmp_path):
    reference, _ = _train(small, 5, epochs=3)

    def crash_after_second_epoch(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(small, 5, epochs=3, checkpoint_dir=tmp_path, on_epoch_end=crash_after_second_epoch)
    resumed, result = _train(small, 5, epochs=3, checkpoint_dir=tmp_path)
    assert result.resumed_from_epoch == 1  # zero-based: epochs 1 and 2 were done
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert _same_weights(reference, resumed)


def test_short_epochs_are_checkpointed_by_time_and_the_last_always(small, tmp_path):
    seen = []

    def note(row):
        seen.append((row["epoch"], (tmp_path / "last.pt").exists()))

    seed_everything(0)
    model = build_model("resnet18", 4, 1, 28)
    train, val = _batches(small)
    fit(model, train, val, TrainConfig(epochs=3, lr=0.02, checkpoint_seconds=3600), checkpoint_dir=tmp_path,
        on_epoch_end=note)
    assert seen == [(1, False), (2, False), (3, True)]
    with pytest.raises(CompressionError, match="checkpoint_seconds=-1"):
        TrainConfig(checkpoint_seconds=-1)


def test_checkpoint_of_another_config_is_ignored(small, tmp_path):
    _train(small, 5, epochs=1, checkpoint_dir=tmp_path)
    _, result = _train(small, 6, epochs=1, checkpoint_dir=tmp_path)
    assert result.resumed_from_epoch is None


def test_early_stopping_and_best_weights(small):
    seed_everything(0)
    model = build_model("resnet18", 4, 1, 28)
    train, val = _batches(small)
    rows = []
    result = fit(model, train, val, TrainConfig(epochs=30, lr=0.5, patience=1, scheduler="none"),
                 on_epoch_end=rows.append)
    assert result.stopped_early and len(rows) < 30
    assert evaluate_classifier(model, val)["accuracy"] == pytest.approx(result.best_val_accuracy)


@pytest.mark.parametrize("field, value", [("epochs", -1), ("lr", 0), ("optimizer", "adam"), ("scheduler", "poly"),
                                          ("label_smoothing", 1.0), ("patience", 0), ("amp", "fp16")])
def test_bad_training_settings_name_the_field(field, value):
    with pytest.raises(CompressionError, match=f"{field}={value!r}"):
        TrainConfig(**{field: value})


def test_amp_bf16_is_refused_on_a_device_without_native_bf16():
    assert precision_for(torch.device("cpu")).dtype is None  # amp true: float32 on any CPU
    with pytest.raises(CompressionError, match="amp='bf16': the mps device here has no native bf16"):
        precision_for(torch.device("mps"), "bf16")


@pytest.mark.skipif(not native_bf16(torch.device("cpu")), reason="this CPU has no native bf16")
def test_amp_bf16_trains_in_bf16_on_a_cpu_that_has_it(small):
    seed_everything(0)
    model = build_model("resnet18", 4, 1, 28)
    seen = []
    model.fc.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    train, val = _batches(small, augment=False)
    result = fit(model, train, val, TrainConfig(epochs=3, lr=0.02, amp="bf16", checkpoint_seconds=0))
    assert seen[0] == torch.bfloat16 and all(p.dtype == torch.float32 for p in model.parameters())
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] / 2  # it learned


def test_transfer_freezes_backbone_then_unfreezes(small):
    seed_everything(0)
    model = build_model("resnet18", 4, 1, 28)
    stem = model.conv1.weight.detach().clone()
    bn_mean = model.bn1.running_mean.clone()
    head = model.fc.weight.detach().clone()
    train, val = _batches(small)
    snapshots = []
    cfg = TrainConfig(epochs=2, optimizer="adamw", lr=1e-3, weight_decay=0.01)
    fit(model, train, val, cfg, param_groups=transfer_param_groups(model, 1e-3, 0.1),
        on_epoch_start=freeze_backbone_for(1),
        on_epoch_end=lambda row: snapshots.append((model.conv1.weight.detach().clone(), model.bn1.running_mean.clone(),
                                                   model.fc.weight.detach().clone())))
    after_frozen, after_unfrozen = snapshots
    assert torch.equal(after_frozen[0], stem) and torch.equal(after_frozen[1], bn_mean)
    assert not torch.equal(after_frozen[2], head)
    assert not torch.equal(after_unfrozen[0], stem)


def test_one_epoch_on_real_fashion_mnist_lands_well_above_chance():
    bundle = load_dataset(train_per_class=150, val_per_class=20, test_per_class=100, seed=0)
    seed_everything(0)
    model = build_model("resnet18", 10, 1, 28)
    train, val = _batches(bundle, augment=False)
    fit(model, train, val, TrainConfig(epochs=1, optimizer="adamw", lr=2e-3, weight_decay=0.01))
    accuracy = evaluate_classifier(model, Batches(bundle.test, 256, bundle.mean, bundle.std))["accuracy"]
    assert accuracy > 0.5  # chance is 0.1


def test_profile_reports_costs():
    model = build_model("resnet18", 10, 1, 28)
    figures = profile(model, torch.randn(4, 1, 28, 28), repeats=10)
    assert figures["params"] > 11_000_000 and figures["nonzero_params"] <= figures["params"]
    assert 30e6 < figures["macs"] < 40e6  # ~34M MACs for resnet18 at 28x28
    assert 0 < figures["latency_p50_ms"] <= figures["latency_p95_ms"] and figures["throughput_ips"] > 0


def test_throughput_is_the_median_batch_over_at_least_the_minimum_time():
    batch_sizes = []

    def call(x):
        batch_sizes.append(len(x))
        return x.sum()

    figures = timed_calls(call, torch.ones(1, 4), torch.ones(16, 4), warmup=1, repeats=3, throughput_repeats=4,
                          min_seconds=0.05)
    timed = batch_sizes.count(16) - 2  # two warm-up calls at the batch size
    assert timed >= 4 and figures["throughput_ips"] > 0
    # A call of this size takes microseconds, so reaching 0.05 s takes far more than the 4 required calls.
    assert timed > 40


def test_confusion_and_per_class_accuracy():
    from compression.measure import classification_metrics
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 1])
    m = classification_metrics(logits, labels, 2)
    assert m["accuracy"] == 0.5 and m["confusion"] == [[1, 0], [2, 1]]
    assert m["per_class_accuracy"] == pytest.approx([1.0, 1 / 3])


def test_one_epoch_row_and_progress_lines(caplog):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 2, (40,))
    batches = Batches(Split(images, labels, ["a", "b"]), 8, (0.5,), (0.25,), shuffle=True)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    progress = Progress("tiny", epochs=2, total_batches=2 * len(batches), every_seconds=0)
    with caplog.at_level("INFO", logger="shrinkflow"):
        row = train_one_epoch(model, batches, cross_entropy(), optimizer, torch.device("cpu"), progress=progress,
                              epoch=0, name="tiny")
        progress.epoch_done(row, stopped_early=False)
    assert list(row) == ["epoch", "train_loss", "train_accuracy", "lr", "epoch_time", "images_per_s", "loader_share"]
    assert 0 <= row["loader_share"] < 1
    assert row["epoch"] == 1 and row["lr"] == 0.1 and 0 <= row["train_accuracy"] <= 1 and row["train_loss"] > 0
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("[tiny] epoch 1/2  10%  loss ") and "ETA" in lines[0]
    assert " img/s  loader " in lines[0] and " img/s  loader " in lines[-1]
    assert len(lines) == len(batches) + 1 and lines[-1].startswith("[tiny] epoch 1/2  loss ")
