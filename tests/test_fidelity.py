"""What compression changed: agreement, significance, forgotten images, calibration, corruptions, occlusion
and stability across seeds, on hand-made inputs with known answers."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from compression import CompressionError
from compression import attribution as attr
from compression import corruptions as cor
from compression import fidelity as fid


def two_class_logits(p_class0: list[float]) -> torch.Tensor:
    """Logits whose softmax gives class 0 probability p and class 1 probability 1 - p."""
    p = torch.tensor(p_class0, dtype=torch.float64)
    return torch.stack([p.log(), (1 - p).log()], 1)


def one_hot_logits(predictions: list[int], k: int, scale: float = 5.0) -> torch.Tensor:
    return nn.functional.one_hot(torch.tensor(predictions), k).float() * scale


# ---------------------------------------------------------------- agreement

def test_agreement_lost_gained_and_kl_against_a_hand_computation():
    labels = torch.tensor([0, 1, 1, 0])
    ref = one_hot_logits([0, 1, 2, 0], 3)  # right, right, wrong, right
    cand = one_hot_logits([0, 2, 1, 1], 3)  # right, wrong, right, wrong
    stats = fid.agreement_stats(ref, cand, labels)
    assert stats["agreement"] == 0.25 and stats["churn"] == 0.75
    assert (stats["lost"], stats["gained"]) == (2, 1)
    assert stats["reference_accuracy"] == 0.75 and stats["candidate_accuracy"] == 0.5
    assert stats["accuracy_drop"] == pytest.approx(0.25)  # reference minus candidate

    ref2 = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    cand2 = torch.tensor([[0.0, 0.0]])  # q = (1/2, 1/2)
    assert fid.mean_kl(ref2, cand2) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-7)
    assert fid.mean_kl(ref2, ref2) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("call", [
    lambda: fid.agreement_stats(torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)),
    lambda: fid.agreement_stats(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)),
    lambda: fid.agreement_stats(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(3, dtype=torch.long)),
    lambda: fid.agreement_stats(torch.zeros(4, 3), torch.zeros(4, 3), torch.full((4,), 3)),
    lambda: fid.agreement_stats(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(4)),
    lambda: fid.paired_bootstrap(torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool)),
    lambda: fid.per_class_changes(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), ["a"]),
    lambda: fid.mcnemar_exact(-1, 2),
    lambda: fid.scaled_calibration(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), 0.0),
    lambda: fid.seed_churn(torch.zeros(1, 5, dtype=torch.long)),
    lambda: fid.spread([]),
    lambda: fid.population_forgotten(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)),
])
def test_bad_arguments_raise_one_clear_error(call):
    with pytest.raises(CompressionError) as info:
        call()
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- is the drop real

def test_mcnemar_exact_against_a_worked_example():
    # lost 10, gained 2: 2 * P(X <= 2 | n = 12, p = 1/2) = 2 * (1 + 12 + 66) / 4096
    assert fid.mcnemar_exact(10, 2) == pytest.approx(2 * 79 / 4096, rel=1e-12)
    assert fid.mcnemar_exact(10, 2) == pytest.approx(0.0386, abs=5e-5)
    assert fid.mcnemar_exact(2, 10) == fid.mcnemar_exact(10, 2)
    assert fid.mcnemar_exact(5, 5) == 1.0 and fid.mcnemar_exact(0, 0) == 1.0
    for lost, gained in [(3000, 2900), (9000, 8950), (7000, 2000)]:  # the exact sum and the log-space tail agree
        exact = fid.mcnemar_exact(lost, gained)
        assert fid._binomial_tail_log_space(lost + gained, min(lost, gained)) * 2 == pytest.approx(exact, rel=1e-9)
    assert 0.0 < fid.mcnemar_exact(60000, 59000) < 0.01  # past the exact limit: no overflow


def test_mcnemar_matches_scipy_binomial_test():
    stats = pytest.importorskip("scipy.stats")
    for lost, gained in [(3, 0), (7, 4), (40, 25), (900, 1000), (3000, 2900), (60000, 59000)]:
        expected = stats.binomtest(gained, lost + gained, 0.5).pvalue
        assert fid.mcnemar_exact(lost, gained) == pytest.approx(expected, rel=1e-9)


def test_holm_bonferroni_on_hand_examples():
    # sorted 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2: stop there
    assert fid.holm_significant([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    # 0.01 <= 0.05/3, 0.02 <= 0.05/2, 0.04 <= 0.05: all rejected (plain Bonferroni keeps only the first)
    assert fid.holm_significant([0.04, 0.01, 0.02]) == [True, True, True]
    assert fid.holm_significant([0.2, 0.001]) == [False, True]
    assert fid.holm_significant([]) == []


def test_paired_bootstrap_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(123)
    n, simulations = 400, 200
    true_difference = -0.8 * 0.06 + 0.2 * 0.10  # P(ref right) * P(lost) vs P(ref wrong) * P(gained)
    covered = 0
    for s in range(simulations):
        ref = rng.random(n) < 0.8
        flip = rng.random(n) < np.where(ref, 0.06, 0.10)
        cand = ref ^ flip
        low, high = fid.paired_bootstrap(torch.from_numpy(ref), torch.from_numpy(cand), resamples=400, seed=s)
        covered += low <= true_difference <= high
    assert 0.89 <= covered / simulations <= 0.99


def test_paired_bootstrap_is_seeded_and_signed_candidate_minus_reference():
    ref = torch.tensor([True] * 90 + [False] * 10)
    cand = torch.tensor([True] * 70 + [False] * 30)
    low, high = fid.paired_bootstrap(ref, cand, resamples=500, seed=7)
    assert (low, high) == fid.paired_bootstrap(ref, cand, resamples=500, seed=7)
    assert low < -0.2 < high < 0  # the candidate is 20 points worse
    assert fid.paired_bootstrap(ref, ref) == (0.0, 0.0)


def test_per_class_changes_and_significance():
    # class 0: 12 images, the candidate loses 10 of them and gains none; class 1: nothing changes
    labels = torch.tensor([0] * 12 + [1] * 6)
    ref = one_hot_logits([0] * 12 + [1] * 6, 2)
    cand = one_hot_logits([1] * 10 + [0] * 2 + [1] * 6, 2)
    rows = fid.per_class_changes(ref, cand, labels, ["cat", "dog"])
    cat, dog = rows
    assert (cat["class"], cat["n"], cat["lost"], cat["gained"]) == ("cat", 12, 10, 0)
    assert cat["drop"] == pytest.approx(10 / 12) and cat["mcnemar_p"] == pytest.approx(2 / 2 ** 10)
    assert cat["significant"] and not dog["significant"]
    assert dog["drop"] == 0.0 and dog["mcnemar_p"] == 1.0


# ---------------------------------------------------------------- forgotten images

def test_forgotten_images_ranked_by_reference_confidence():
    ref = two_class_logits([0.6, 0.99, 0.7, 0.9, 0.99, 0.8])  # all predict class 0
    cand = two_class_logits([0.4, 0.3, 0.8, 0.2, 0.1, 0.9])  # 0, 1, 3, 4 flip to class 1
    labels = torch.tensor([0, 0, 1, 1, 0, 0])
    assert fid.forgotten_images(ref, cand).tolist() == [1, 4, 3, 0]  # 0.99 tie: lower index first
    summary = fid.forgotten_by_class(ref, cand, labels, ["a", "b"])
    assert summary == {"count": 4, "per_class": [3, 1], "share": [0.75, 0.25]}
    rows = fid.forgotten_rows(ref, cand, labels, ["a", "b"], limit=2)
    assert [r["index"] for r in rows] == [1, 4]
    assert rows[0] == {"index": 1, "label": "a", "reference_prediction": "a",
                       "reference_confidence": pytest.approx(0.99), "candidate_prediction": "b",
                       "candidate_confidence": pytest.approx(0.7)}
    assert fid.forgotten_rows(ref, cand, labels)[2]["label"] == 1  # indices without class names


# ---------------------------------------------------------------- calibration

def test_ece_mce_nll_brier_against_a_hand_computation():
    conf = [0.95, 0.95, 0.75, 0.55, 0.55]
    labels = torch.tensor([0, 1, 0, 0, 1])  # every prediction is class 0: right, wrong, right, right, wrong
    logits = two_class_logits(conf)
    # bins of width 1/15: (14/15, 1] acc 1/2 conf 0.95; (11/15, 12/15] acc 1 conf 0.75; (8/15, 9/15] acc 1/2 conf .55
    metrics = fid.calibration_metrics(logits, labels)
    assert metrics["ece"] == pytest.approx(2 / 5 * 0.45 + 1 / 5 * 0.25 + 2 / 5 * 0.05)
    assert metrics["mce"] == pytest.approx(0.45)
    assert metrics["nll"] == pytest.approx(-(math.log(0.95) + math.log(0.05) + math.log(0.75) + math.log(0.55)
                                             + math.log(0.45)) / 5)
    right, wrong = lambda c: 2 * (1 - c) ** 2, lambda c: 2 * c ** 2
    assert metrics["brier"] == pytest.approx((right(0.95) + wrong(0.95) + right(0.75) + right(0.55) + wrong(0.55)) / 5)
    bins = fid.reliability_bins(logits, labels)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 5
    assert bins[14]["count"] == 2 and bins[14]["accuracy"] == 0.5 and bins[14]["confidence"] == pytest.approx(0.95)
    assert bins[0]["count"] == 0 and bins[0]["accuracy"] is None


def test_ece_and_mce_match_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(500, 5, generator=gen) * 3
    labels = torch.randint(0, 5, (500,), generator=gen)
    ours = fid.calibration_metrics(logits, labels)
    probs = logits.double().softmax(1)
    assert ours["ece"] == pytest.approx(tm.multiclass_calibration_error(probs, labels, 5, n_bins=15).item(), abs=1e-6)
    assert ours["mce"] == pytest.approx(tm.multiclass_calibration_error(probs, labels, 5, 15, "max").item(), abs=1e-6)


def test_temperature_scaling_cures_over_confidence_and_keeps_the_argmax():
    gen = torch.Generator().manual_seed(0)

    def split(n):
        calibrated = torch.randn(n, 10, generator=gen) * 2
        labels = torch.multinomial(calibrated.softmax(1), 1, generator=gen).flatten()
        return calibrated * 4, labels  # four times too confident

    (val_logits, val_labels), (test_logits, test_labels) = split(3000), split(3000)
    temperature = fid.fit_temperature(val_logits, val_labels)
    assert temperature == fid.fit_temperature(val_logits, val_labels)  # deterministic
    assert 3.3 < temperature < 4.8
    before = fid.calibration_metrics(test_logits, test_labels)
    after = fid.scaled_calibration(test_logits, test_labels, temperature)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"] / 2
    assert torch.equal((test_logits / temperature).argmax(1), test_logits.argmax(1))


# ---------------------------------------------------------------- stability across seeds

def test_spread_churn_and_modal_labels_on_hand_examples():
    s = fid.spread([0.9, 0.8, 0.85])
    assert s["mean"] == pytest.approx(0.85) and s["std"] == pytest.approx(0.05) and s["worst"] == 0.8
    assert fid.spread([0.9, 0.8], higher_is_better=False)["worst"] == 0.9
    assert fid.spread([0.7])["std"] == 0.0
    teacher = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 0], [1, 1, 2, 3]])
    assert fid.seed_churn(teacher) == pytest.approx((1 / 4 + 1 / 4 + 2 / 4) / 3)
    # column 0: 2, 0, 2, 0 tie -> 0 (smallest); column 1: 1, 1, 3, 3 tie -> 1; column 2: 4, 4, 1, 0 -> 4
    population = torch.tensor([[2, 1, 4], [0, 1, 4], [2, 3, 1], [0, 3, 0]])
    assert fid.modal_labels(population).tolist() == [0, 1, 4]
    reference = torch.tensor([[0, 1, 1], [0, 2, 1], [0, 2, 1]])  # modal 0, 2, 1
    assert fid.population_forgotten(reference, population).tolist() == [1, 2]


# ---------------------------------------------------------------- the report

def _report_case():
    gen = torch.Generator().manual_seed(5)
    labels = torch.arange(300) % 3
    ref = torch.randn(300, 3, generator=gen)
    ref[torch.arange(300), labels] += 3.0
    cand = ref.clone()
    cand[:40, 0] += 8.0  # the first 40 images all become "cat": class 1 and 2 images among them are lost
    return ref, cand, labels, ["cat", "dog", "Shirt"]


def test_fidelity_report_is_flat_json_and_signed_as_a_drop():
    ref, cand, labels, classes = _report_case()
    report = fid.fidelity_report(ref, cand, labels, classes, val_reference_logits=ref * 2,
                                 val_candidate_logits=cand * 2, val_labels=labels, bootstrap=300)
    json.dumps(report)
    metrics = fid.scalar_metrics(report)
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    assert all(k.split(".")[0] in {"fidelity", "forgotten", "calibration"} for k in metrics)
    stats = fid.agreement_stats(ref, cand, labels)
    assert metrics["fidelity.accuracy_drop"] == pytest.approx(stats["reference_accuracy"] - stats["candidate_accuracy"])
    assert metrics["fidelity.accuracy_drop"] > 0 and metrics["fidelity.lost"] > metrics["fidelity.gained"]
    low, high = fid.paired_bootstrap(ref.argmax(1) == labels, cand.argmax(1) == labels, 300, 0)
    assert (metrics["fidelity.drop_ci_low"], metrics["fidelity.drop_ci_high"]) == (-high, -low)
    assert metrics["forgotten.count"] == int((ref.argmax(1) != cand.argmax(1)).sum())
    assert {"calibration.temperature", "calibration.ece_scaled", "calibration.ece_scaled_reference"} <= set(metrics)
    assert metrics["fidelity.max_class_drop"] == max(r["drop"] for r in report["details"]["per_class"])
    without_val = fid.fidelity_report(ref, cand, labels, classes, bootstrap=100)
    assert "calibration.temperature" not in without_val and "calibration.ece" in without_val


def test_what_changed_says_it_in_plain_words():
    ref, cand, labels, classes = _report_case()
    report = fid.fidelity_report(ref, cand, labels, classes, bootstrap=300)
    sentence = fid.what_changed("student_kd", report, "the teacher", classes)
    assert sentence.startswith(f"student_kd agrees with the teacher on {report['fidelity.agreement']:.1%}")
    assert f"lost {report['fidelity.lost']} images the teacher got right" in sentence
    assert "the drop is real" in sentence and f"forgot {report['forgotten.count']} images" in sentence
    same = fid.fidelity_report(ref, ref.clone(), labels, classes, bootstrap=100)
    quiet = fid.what_changed("the int8 model", same, "its float parent", classes)
    assert "100.0%" in quiet and "within noise" in quiet and "forgot" not in quiet
    assert "lost 1 image the teacher got right" in fid.what_changed("x", {**report, "fidelity.lost": 1},
                                                                   "the teacher", classes)


# ---------------------------------------------------------------- corruptions

def _images(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    smooth = nn.functional.interpolate(torch.rand(shape[0], shape[1], 7, 7, generator=gen), size=shape[2:],
                                       mode="bilinear", align_corners=False)
    return (smooth * 200 + 20).round().to(torch.uint8)


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 3, 64, 64)])
def test_corruptions_keep_shape_dtype_and_are_seeded(shape):
    images = _images(shape)
    for name in cor.CORRUPTIONS:
        outputs = {s: cor.corrupt(images, name, s, seed=1) for s in cor.SEVERITIES}
        for out in outputs.values():
            assert out.shape == images.shape and out.dtype == torch.uint8
        assert torch.equal(outputs[1], cor.corrupt(images, name, 1, seed=1)), name
        assert not torch.equal(outputs[1], outputs[3]), name
        change = {s: (o.float() - images.float()).abs().mean().item() for s, o in outputs.items()}
        assert 0 < change[1] < change[3], name
        if name in {"gaussian_noise", "shot_noise", "impulse_noise", "affine"}:
            assert not torch.equal(outputs[2], cor.corrupt(images, name, 2, seed=2)), name


def test_corruptions_do_not_depend_on_batch_boundaries():
    images = _images((5, 3, 32, 32))
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "affine", "jpeg"):
        whole = cor.corrupt(images, name, 2, seed=4)
        parts = torch.cat([cor.corrupt(images[:2], name, 2, seed=4, indices=torch.arange(2)),
                           cor.corrupt(images[2:], name, 2, seed=4, indices=torch.arange(2, 5))])
        assert torch.equal(whole, parts), name


@pytest.mark.parametrize("call", [
    lambda: cor.corrupt(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), "fog", 1),
    lambda: cor.corrupt(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), "contrast", 4),
    lambda: cor.corrupt(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), "contrast", 0),
    lambda: cor.corrupt(torch.zeros(1, 1, 28, 28), "contrast", 1),
    lambda: cor.corrupt(torch.zeros(0, 1, 28, 28, dtype=torch.uint8), "contrast", 1),
    lambda: cor.corrupt(torch.zeros(1, 2, 28, 28, dtype=torch.uint8), "contrast", 1),
    lambda: cor.stratified_subset(torch.tensor([0, 1]), 0),
    lambda: cor.relative_corruption_error({"a": {1: 0.5}}, {"b": {1: 0.5}}),
])
def test_bad_corruption_requests_raise(call):
    with pytest.raises(CompressionError):
        call()


def test_stratified_subset_keeps_classes_balanced_and_is_seeded():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 3)
    subset = cor.stratified_subset(labels, 10, seed=1)
    assert torch.bincount(labels[subset]).tolist() == [10, 10, 3]
    assert subset.tolist() == sorted(set(subset.tolist()))
    assert torch.equal(subset, cor.stratified_subset(labels, 10, seed=1))
    assert not torch.equal(subset, cor.stratified_subset(labels, 10, seed=2))


def test_relative_corruption_error_and_logit_helpers():
    reference = {"a": {1: 0.9, 2: 0.8}, "b": {1: 0.5, 2: 0.5}}  # errors 0.3 and 1.0
    candidate = {"a": {1: 0.8, 2: 0.6}, "b": {1: 0.5, 2: 0.4}}  # errors 0.6 and 1.1
    result = cor.relative_corruption_error(candidate, reference)
    assert result["relative_error"] == pytest.approx(1.7 / 1.3)
    assert result["per_corruption"] == pytest.approx({"a": 2.0, "b": 1.1})
    assert result["mean_per_corruption"] == pytest.approx(1.55)

    labels = torch.tensor([0, 1, 1, 0])
    ref = {"a": {1: one_hot_logits([0, 1, 1, 1], 2)}}
    cand = {"a": {1: one_hot_logits([0, 0, 1, 1], 2)}}
    assert cor.corruption_accuracy(ref, labels) == {"a": {1: 0.75}}
    assert cor.corruption_agreement(ref, cand) == {"a": {1: 0.75}}


def test_corruption_logits_are_the_same_whatever_the_batch_size():
    images = _images((5, 1, 28, 28))
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 3))

    def prepare(x):
        return x.float() / 255

    small = cor.corruption_logits(model, images, prepare, seed=3, corruptions=("shot_noise", "pixelate"),
                                  severities=(1, 3), batch_size=2)
    large = cor.corruption_logits(model, images, prepare, seed=3, corruptions=("shot_noise", "pixelate"),
                                  severities=(1, 3), batch_size=64)
    assert set(small) == {"shot_noise", "pixelate"} and set(small["pixelate"]) == {1, 3}
    for name in small:
        for severity in small[name]:
            assert small[name][severity].shape == (5, 3)
            torch.testing.assert_close(small[name][severity], large[name][severity])


# ---------------------------------------------------------------- attribution

class PixelSum(nn.Module):
    """Class 0: the weighted sum of the pixels; class 1: always 0."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = weight

    def forward(self, x):
        score = (x * self.weight).sum((1, 2, 3))
        return torch.stack([score, torch.zeros_like(score)], 1)


def test_occlusion_of_a_linear_model_finds_its_pixels():
    weight = torch.zeros(1, 1, 28, 28)
    weight[0, 0, 4:10, 16:22] = 1.0  # only this block matters
    model = PixelSum(weight)
    x = torch.ones(2, 1, 28, 28)
    maps = attr.occlusion_maps(model, x, torch.tensor([0, 1]))  # default patch 4, stride 2
    assert maps.shape == (2, 28, 28)
    assert torch.all(maps[1] == 0)  # class 1 never depends on the input
    assert maps[0, 4:10, 16:22].min() > 0 and maps[0].min() >= 0
    assert maps[0, 14:, :].abs().max() == 0 and maps[0, :, :12].abs().max() == 0  # far from the block: nothing
    assert maps[0].argmax() // 28 in range(4, 10) and maps[0].argmax() % 28 in range(16, 22)
    # with 1-pixel patches, a linear model's map is weight * (input - baseline), summed over channels
    weight3 = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    x3 = torch.rand(1, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    exact = attr.occlusion_maps(PixelSum(weight3), x3, torch.tensor([0]), patch=1, stride=1, baseline=0.5)
    torch.testing.assert_close(exact[0], (weight3 * (x3 - 0.5)).sum((0, 1)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size, patch, stride", [(28, None, None), (30, 4, 3)])
def test_occlusion_matches_captum(size, patch, stride):
    captum = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * size * size, 5)).eval()
    x, targets = torch.randn(3, 1, size, size), torch.tensor([0, 3, 4])
    ours = attr.occlusion_maps(model, x, targets, patch=patch, stride=stride, batch_size=50)
    patch = patch or attr.default_patch(size)
    stride = stride or patch // 2
    theirs = captum.Occlusion(model).attribute(x, sliding_window_shapes=(1, patch, patch), strides=(1, stride, stride),
                                               baselines=0.0, target=targets, perturbations_per_eval=64)
    torch.testing.assert_close(ours, theirs[:, 0], atol=1e-4, rtol=1e-4)


def test_occlusion_runs_on_an_int8_model():
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 3)).eval()
    x = torch.randn(2, 1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), (x,))
        prepared(x)
        quantized = convert_fx(prepared)
    maps = attr.occlusion_maps(quantized, x, torch.tensor([0, 2]), baseline="mean")
    assert maps.shape == (2, 28, 28) and torch.isfinite(maps).all()


def test_attribution_agreement_with_ties_and_against_scipy():
    ramp = torch.arange(100.0).view(1, 10, 10)
    same = attr.attribution_agreement(ramp, ramp * 3 + 1)
    assert same == {"spearman": pytest.approx(1.0), "top10_overlap": 1.0}
    opposite = attr.attribution_agreement(ramp, -ramp)
    assert opposite == {"spearman": pytest.approx(-1.0), "top10_overlap": 0.0}
    assert attr.attribution_agreement(ramp, torch.zeros(1, 10, 10))["spearman"] == 0.0  # constant map
    assert attr.average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0]])).tolist() == [[2.5, 0.0, 2.5, 1.0]]
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (4, 6, 6), generator=gen).float()  # many ties
    b = a + torch.randint(0, 3, (4, 6, 6), generator=gen).float()
    expected = np.mean([stats.spearmanr(a[i].flatten(), b[i].flatten()).statistic for i in range(4)])
    assert attr.attribution_agreement(a, b)["spearman"] == pytest.approx(expected, abs=1e-9)
    with pytest.raises(CompressionError):
        attr.attribution_agreement(a, b[:2])


# ---------------------------------------------------------------- figures

def test_fidelity_figures_draw():
    from tasks import fidelity_plots as plots
    ref, cand, labels, classes = _report_case()
    bins = {"teacher": fid.reliability_bins(ref, labels), "student": fid.reliability_bins(cand, labels)}
    rows = fid.forgotten_rows(ref, cand, labels, classes, limit=8)
    images = _images((8, 3, 32, 32))
    maps = torch.randn(3, 32, 32)
    figures = [plots.reliability_diagram(bins), plots.forgotten_grid(images, rows, "teacher", "student"),
               plots.forgotten_grid(_images((2, 1, 28, 28)), rows[:2], "teacher", "int8"),
               plots.attribution_grid(images[:3], maps, -maps, "teacher", "int8", count=3)]
    try:
        assert len(figures[0].axes) == 2
        assert sum(ax.axison for ax in figures[1].axes) == 8
        assert len(figures[3].axes) == 3 * 3 + 3  # image and two maps per row, and a colour bar
    finally:
        for fig in figures:
            plots.close(fig)
