"""What compression changed, beyond the accuracy figure: how often a candidate agrees with its reference (the
teacher, or an int8 model's float parent), whether an accuracy drop is real or test-set noise, which images and
classes it forgot, how calibrated it is, and how stable all of it is across training seeds.

Everything is computed from logits the evaluate stage already has (float [N, K]) and integer labels [N].

Signs: an accuracy *drop* is always reference minus candidate (positive: the candidate is worse), as in
`compression.comparison`. `paired_bootstrap` returns the interval of the *difference* candidate minus reference,
and `fidelity_report` turns it into the interval of the drop (`fidelity.drop_ci_low`, `fidelity.drop_ci_high`).

Bootstrap, temperature fit and every tie-break are deterministic: the same inputs and seed give the same
figures on every run.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from compression import CompressionError
from compression.accuracy import agreement as top1_agreement
from compression.accuracy import top1_accuracy, top1_hits

# Equal-width confidence bins for ECE, MCE and the reliability diagram: torchmetrics' and Guo et al.'s default.
CALIBRATION_BINS = 15
# Indices drawn per bootstrap chunk: bounds the memory of a run on a large test set.
_BOOTSTRAP_CHUNK = 1 << 22
# The search range of the temperature: far outside any trained classifier's fitted value.
TEMPERATURE_BOUNDS = (0.05, 20.0)
# Discordant images up to which McNemar's tail is summed in exact integers (milliseconds); beyond, log space.
EXACT_MCNEMAR_LIMIT = 20000


# ---------------------------------------------------------------- argument checks

def _check_logits(logits: torch.Tensor, what: str = "logits") -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise CompressionError(f"{what} must be a non-empty float tensor [N, K] with K >= 2, got {shape}")
    if logits.is_complex() or not logits.is_floating_point():
        raise CompressionError(f"{what} must be floating point, got {logits.dtype}")


def _check_labels(labels: torch.Tensor, n: int, k: int, what: str = "labels") -> None:
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != n:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise CompressionError(f"{what} must be a tensor [{n}] matching the logits, got {shape}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise CompressionError(f"{what} must be integer class indices, got {labels.dtype}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise CompressionError(f"{what} must lie in 0..{k - 1}, got {int(labels.min())}..{int(labels.max())}")


def _check_pair(reference_logits: torch.Tensor, candidate_logits: torch.Tensor,
                labels: torch.Tensor | None = None) -> None:
    _check_logits(reference_logits, "reference logits")
    _check_logits(candidate_logits, "candidate logits")
    if reference_logits.shape != candidate_logits.shape:
        raise CompressionError(f"reference logits {tuple(reference_logits.shape)} and candidate logits "
                               f"{tuple(candidate_logits.shape)} differ in shape")
    if labels is not None:
        _check_labels(labels, *reference_logits.shape)


def _check_classes(classes: list[str], k: int) -> None:
    if len(classes) != k:
        raise CompressionError(f"{len(classes)} class names for logits over {k} classes")


# ---------------------------------------------------------------- agreement

def mean_kl(reference_logits: torch.Tensor, candidate_logits: torch.Tensor) -> float:
    """Mean over images of KL(reference || candidate) of the softmax outputs, in nats (float64)."""
    _check_pair(reference_logits, candidate_logits)
    log_p = F.log_softmax(reference_logits.double(), 1)
    log_q = F.log_softmax(candidate_logits.double(), 1)
    p = log_p.exp()
    # 0 * log 0 is 0: a class the reference rules out adds nothing, whatever the candidate says
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(1).mean().item()


def agreement_stats(reference_logits: torch.Tensor, candidate_logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 agreement, churn (1 - agreement), images lost (reference right, candidate wrong) and gained
    (reference wrong, candidate right), mean KL(reference || candidate), both accuracies and the accuracy drop
    (reference minus candidate)."""
    _check_pair(reference_logits, candidate_logits, labels)
    ref_ok, cand_ok = top1_hits(reference_logits, labels), top1_hits(candidate_logits, labels)
    agreement = top1_agreement(reference_logits, candidate_logits)
    ref_acc, cand_acc = top1_accuracy(reference_logits, labels), top1_accuracy(candidate_logits, labels)
    return {"n": int(labels.shape[0]), "agreement": agreement, "churn": 1.0 - agreement,
            "lost": int((ref_ok & ~cand_ok).sum()), "gained": int((~ref_ok & cand_ok).sum()),
            "kl": mean_kl(reference_logits, candidate_logits), "reference_accuracy": ref_acc,
            "candidate_accuracy": cand_acc, "accuracy_drop": ref_acc - cand_acc}


# ---------------------------------------------------------------- is the drop real

def paired_bootstrap(reference_correct: torch.Tensor, candidate_correct: torch.Tensor, resamples: int = 1000,
                     seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the accuracy difference candidate minus reference (a fraction, not points).

    Paired: each resample draws image indices with replacement (a seeded numpy Generator) and scores both
    models on the same images, so what the two get right together cancels out of the difference."""
    ref = torch.as_tensor(reference_correct).bool().flatten().cpu().numpy()
    cand = torch.as_tensor(candidate_correct).bool().flatten().cpu().numpy()
    if ref.shape != cand.shape or ref.size == 0:
        raise CompressionError(f"paired bootstrap needs two equal, non-empty correctness vectors, got "
                               f"{ref.size} and {cand.size}")
    if resamples < 1 or not 0 < level < 1:
        raise CompressionError(f"bootstrap needs resamples >= 1 and 0 < level < 1, got {resamples} and {level}")
    diff = cand.astype(np.float64) - ref.astype(np.float64)  # per image: -1 lost, +1 gained, 0 otherwise
    rng, n = np.random.default_rng(seed), diff.size
    means = np.empty(resamples)
    rows = max(1, _BOOTSTRAP_CHUNK // n)
    for start in range(0, resamples, rows):
        stop = min(start + rows, resamples)
        means[start:stop] = diff[rng.integers(0, n, size=(stop - start, n))].mean(1)
    tail = (1.0 - level) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def _binomial_tail_log_space(n: int, k: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), k <= n / 2: the largest term from log-gamma, then the smaller ones
    as ratios of it, summed until they stop counting."""
    log_top = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)
    term = total = 1.0
    for j in range(k, 0, -1):
        term *= j / (n - j + 1)
        total += term
        if term < 1e-17 * total:
            break
    return math.exp(log_top) * total


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided p-value of McNemar's exact test: lost ~ Binomial(lost + gained, 1/2) under "no difference".

    Exact integer arithmetic (binomial coefficients summed as Python ints, one correctly rounded division) up
    to EXACT_MCNEMAR_LIMIT discordant images; past it, where big-integer sums get slow, the tail in log space."""
    if lost < 0 or gained < 0:
        raise CompressionError(f"McNemar needs non-negative counts, got lost={lost}, gained={gained}")
    n, k = lost + gained, min(lost, gained)
    if n == 0:
        return 1.0
    if n > EXACT_MCNEMAR_LIMIT:
        return min(1.0, 2 * _binomial_tail_log_space(n, k))
    term = tail = 1  # C(n, 0)
    for i in range(k):
        term = term * (n - i) // (i + 1)
        tail += term
    return min(1.0, 2 * tail / 2 ** n)


def holm_significant(p_values: list[float], alpha: float = 0.05) -> list[bool]:
    """Which hypotheses Holm-Bonferroni rejects at family-wise level `alpha` (step-down: the i-th smallest
    p-value, from 0, is compared with alpha / (m - i) until the first one that fails)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (p_values[i], i))
    significant = [False] * m
    for rank, i in enumerate(order):
        if p_values[i] > alpha / (m - rank):
            break
        significant[i] = True
    return significant


def per_class_changes(reference_logits: torch.Tensor, candidate_logits: torch.Tensor, labels: torch.Tensor,
                      classes: list[str], alpha: float = 0.05) -> list[dict]:
    """Per true class: images, both accuracies (None without images), drop (reference minus candidate), lost,
    gained, McNemar's exact p-value and whether it stays significant after Holm-Bonferroni over the classes."""
    _check_pair(reference_logits, candidate_logits, labels)
    _check_classes(classes, reference_logits.shape[1])
    ref_ok, cand_ok = top1_hits(reference_logits, labels), top1_hits(candidate_logits, labels)
    rows = []
    for c, name in enumerate(classes):
        mask = labels == c
        n = int(mask.sum())
        ref_acc = ref_ok[mask].double().mean().item() if n else None
        cand_acc = cand_ok[mask].double().mean().item() if n else None
        lost, gained = int((ref_ok & ~cand_ok & mask).sum()), int((~ref_ok & cand_ok & mask).sum())
        rows.append({"class": name, "n": n, "reference_accuracy": ref_acc, "candidate_accuracy": cand_acc,
                     "drop": ref_acc - cand_acc if n else None, "lost": lost, "gained": gained,
                     "mcnemar_p": mcnemar_exact(lost, gained)})
    for row, significant in zip(rows, holm_significant([r["mcnemar_p"] for r in rows], alpha)):
        row["significant"] = significant
    return rows


# ---------------------------------------------------------------- forgotten images

def _confidence(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max softmax probability, argmax) per image, in float64."""
    return F.softmax(logits.double(), 1).max(1)


def forgotten_images(reference_logits: torch.Tensor, candidate_logits: torch.Tensor) -> torch.Tensor:
    """Indices [M] of the images whose candidate prediction differs from the reference's, the ones the
    reference was surest of first (ties: lower index first)."""
    _check_pair(reference_logits, candidate_logits)
    conf, ref_pred = _confidence(reference_logits)
    changed = (ref_pred != candidate_logits.argmax(1)).nonzero().flatten()
    order = torch.sort(conf[changed], descending=True, stable=True).indices
    return changed[order]


def forgotten_by_class(reference_logits: torch.Tensor, candidate_logits: torch.Tensor, labels: torch.Tensor,
                       classes: list[str]) -> dict:
    """How many images changed prediction, and per true class their count and share of that total."""
    _check_pair(reference_logits, candidate_logits, labels)
    _check_classes(classes, reference_logits.shape[1])
    index = forgotten_images(reference_logits, candidate_logits)
    counts = torch.bincount(labels[index], minlength=len(classes)).tolist()
    total = len(index)
    return {"count": total, "per_class": counts, "share": [c / total if total else 0.0 for c in counts]}


def forgotten_rows(reference_logits: torch.Tensor, candidate_logits: torch.Tensor, labels: torch.Tensor,
                   classes: list[str] | None = None, limit: int | None = None) -> list[dict]:
    """One row per forgotten image, in `forgotten_images` order (the first `limit`), for a CSV: index, label,
    reference_prediction, reference_confidence, candidate_prediction, candidate_confidence. Labels and
    predictions are class names when `classes` is given, class indices otherwise."""
    _check_pair(reference_logits, candidate_logits, labels)
    if classes is not None:
        _check_classes(classes, reference_logits.shape[1])
    index = forgotten_images(reference_logits, candidate_logits)[:limit]
    ref_conf, ref_pred = _confidence(reference_logits)
    cand_conf, cand_pred = _confidence(candidate_logits)
    name = (lambda c: classes[c]) if classes is not None else (lambda c: c)
    return [{"index": i, "label": name(int(labels[i])), "reference_prediction": name(int(ref_pred[i])),
             "reference_confidence": ref_conf[i].item(), "candidate_prediction": name(int(cand_pred[i])),
             "candidate_confidence": cand_conf[i].item()} for i in index.tolist()]


# ---------------------------------------------------------------- calibration

def reliability_bins(logits: torch.Tensor, labels: torch.Tensor, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Per equal-width confidence bin (lower, upper]: count, accuracy and mean confidence (None when empty).

    Bins are closed on the right as in Guo et al. 2017; a confidence is never 0, so the first bin loses
    nothing. torchmetrics closes them on the left instead: the two differ only for confidences that fall
    exactly on an edge."""
    _check_logits(logits)
    _check_labels(labels, *logits.shape)
    if bins < 1:
        raise CompressionError(f"calibration needs at least one bin, got {bins}")
    conf, pred = _confidence(logits)
    correct = (pred == labels).double()
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    index = torch.bucketize(conf, edges[1:-1], right=False)
    count = torch.bincount(index, minlength=bins)
    acc_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, conf)
    return [{"lower": edges[b].item(), "upper": edges[b + 1].item(), "count": int(count[b]),
             "accuracy": (acc_sum[b] / count[b]).item() if count[b] else None,
             "confidence": (conf_sum[b] / count[b]).item() if count[b] else None} for b in range(bins)]


def calibration_errors(bins: list[dict]) -> tuple[float, float]:
    """(ECE, MCE) of reliability bins: the share-weighted mean and the max of |accuracy - confidence| over
    the non-empty bins."""
    total = sum(b["count"] for b in bins)
    gaps = [(b["count"], abs(b["accuracy"] - b["confidence"])) for b in bins if b["count"]]
    if not total:
        raise CompressionError("calibration needs at least one prediction")
    return sum(count * gap for count, gap in gaps) / total, max(gap for _, gap in gaps)


def calibration_metrics(logits: torch.Tensor, labels: torch.Tensor, bins: int = CALIBRATION_BINS) -> dict:
    """ECE, MCE, NLL (mean cross-entropy, nats) and multi-class Brier score (mean over images of the summed
    squared difference between probabilities and the one-hot label)."""
    ece, mce = calibration_errors(reliability_bins(logits, labels, bins))
    logits = logits.double()
    probs = F.softmax(logits, 1)
    onehot = F.one_hot(labels.long(), logits.shape[1]).double()
    return {"ece": ece, "mce": mce, "nll": F.cross_entropy(logits, labels.long()).item(),
            "brier": ((probs - onehot) ** 2).sum(1).mean().item()}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
                    tolerance: float = 1e-5) -> float:
    """The temperature T > 0 minimising the NLL of logits / T (fit it on validation logits, Guo et al. 2017).

    Golden-section search over log T within `bounds`: deterministic, no optimiser state. The NLL is convex in
    1/T, hence unimodal in log T, so the search finds the minimum (or the bound nearest it)."""
    _check_logits(logits)
    _check_labels(labels, *logits.shape)
    logits, labels = logits.double(), labels.long()

    def nll(log_t: float) -> float:
        return F.cross_entropy(logits / math.exp(log_t), labels).item()

    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = math.log(bounds[0]), math.log(bounds[1])
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > tolerance:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = nll(d)
    return math.exp((a + b) / 2.0)


def scaled_calibration(logits: torch.Tensor, labels: torch.Tensor, temperature: float,
                       bins: int = CALIBRATION_BINS) -> dict:
    """`calibration_metrics` of logits / temperature (the argmax, hence accuracy, is unchanged)."""
    if not temperature > 0:
        raise CompressionError(f"temperature must be positive, got {temperature}")
    return calibration_metrics(logits.double() / temperature, labels, bins)


# ---------------------------------------------------------------- stability across seeds

def _check_predictions(predictions: torch.Tensor, what: str) -> None:
    if not isinstance(predictions, torch.Tensor) or predictions.dim() != 2 or 0 in predictions.shape:
        shape = tuple(predictions.shape) if isinstance(predictions, torch.Tensor) else type(predictions).__name__
        raise CompressionError(f"{what} must be a non-empty tensor [seeds, N] of predicted labels, got {shape}")
    if predictions.is_floating_point() or int(predictions.min()) < 0:
        raise CompressionError(f"{what} must hold non-negative integer labels")


def spread(values: list[float], higher_is_better: bool = True) -> dict:
    """Mean, sample standard deviation (ddof 1; 0 for one value) and worst case of per-seed figures."""
    if not len(values):
        raise CompressionError("spread needs at least one per-seed figure")
    arr = np.asarray(values, dtype=np.float64)
    return {"n": int(arr.size), "mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            "worst": float(arr.min() if higher_is_better else arr.max())}


def seed_churn(predictions: torch.Tensor) -> float:
    """Mean disagreement over all pairs of seeds of one population [S, N], S >= 2: for the teacher, the churn
    that retraining alone causes (Bhojanapalli et al. 2021), the floor to read a candidate's churn against."""
    _check_predictions(predictions, "predictions")
    s = predictions.shape[0]
    if s < 2:
        raise CompressionError(f"churn between seeds needs at least two seeds, got {s}")
    pairs = [(predictions[i] != predictions[j]).double().mean().item() for i in range(s) for j in range(i + 1, s)]
    return sum(pairs) / len(pairs)


def modal_labels(predictions: torch.Tensor) -> torch.Tensor:
    """Per image, the label most seeds of the population [S, N] predict; ties go to the smallest label."""
    _check_predictions(predictions, "predictions")
    predictions = predictions.long()
    counts = torch.zeros(predictions.shape[1], int(predictions.max()) + 1, dtype=torch.int64)
    counts.scatter_add_(1, predictions.T, torch.ones_like(predictions.T))
    top = counts.max(1, keepdim=True).values
    # the first column holding the top count: the smallest tied label (not left to argmax's tie rule)
    return (counts == top).int().argmax(1)


def population_forgotten(reference_predictions: torch.Tensor, candidate_predictions: torch.Tensor) -> torch.Tensor:
    """Hooker et al.'s compression-identified images (PIEs): indices where the candidate population's modal
    label differs from the reference population's. Populations may have different numbers of seeds."""
    _check_predictions(reference_predictions, "reference predictions")
    _check_predictions(candidate_predictions, "candidate predictions")
    if reference_predictions.shape[1] != candidate_predictions.shape[1]:
        raise CompressionError(f"populations cover {reference_predictions.shape[1]} and "
                               f"{candidate_predictions.shape[1]} images")
    return (modal_labels(reference_predictions) != modal_labels(candidate_predictions)).nonzero().flatten()


# ---------------------------------------------------------------- the report

def _agreement_metrics(reference_logits, candidate_logits, labels, bootstrap: int, seed: int) -> dict:
    stats = agreement_stats(reference_logits, candidate_logits, labels)
    low, high = paired_bootstrap(top1_hits(reference_logits, labels), top1_hits(candidate_logits, labels),
                                 bootstrap, seed)
    metrics = {f"fidelity.{key}": value for key, value in stats.items()}
    # the interval of the drop (reference minus candidate) is the difference's interval negated
    metrics.update({"fidelity.drop_ci_low": 0.0 - high, "fidelity.drop_ci_high": 0.0 - low,  # 0.0 - x: no "-0.0"
                    "fidelity.mcnemar_p": mcnemar_exact(stats["lost"], stats["gained"])})
    return metrics


def _calibration_report(reference_logits, candidate_logits, labels, val_reference_logits, val_candidate_logits,
                        val_labels) -> dict:
    metrics = {}
    for suffix, logits, val_logits in (("", candidate_logits, val_candidate_logits),
                                       ("_reference", reference_logits, val_reference_logits)):
        metrics.update({f"calibration.{k}{suffix}": v for k, v in calibration_metrics(logits, labels).items()})
        if val_logits is not None:
            _check_logits(val_logits, "validation logits")
            _check_labels(val_labels, *val_logits.shape, what="validation labels")
            if val_logits.shape[1] != logits.shape[1]:
                raise CompressionError(f"validation logits have {val_logits.shape[1]} classes, test logits "
                                       f"{logits.shape[1]}")
            temperature = fit_temperature(val_logits, val_labels)
            metrics[f"calibration.temperature{suffix}"] = temperature
            scaled = scaled_calibration(logits, labels, temperature)
            metrics.update({f"calibration.{k}_scaled{suffix}": v for k, v in scaled.items()})
    return metrics


def fidelity_report(reference_logits: torch.Tensor, candidate_logits: torch.Tensor, labels: torch.Tensor,
                    classes: list[str], *, val_reference_logits: torch.Tensor | None = None,
                    val_candidate_logits: torch.Tensor | None = None, val_labels: torch.Tensor | None = None,
                    bootstrap: int = 1000, seed: int = 0) -> dict:
    """A candidate against its reference on the test set, as a JSON-able dict.

    Every key but "details" is a number under a dotted name ("fidelity.*", "forgotten.*", "calibration.*")
    that can be logged as a metric as it is (`scalar_metrics`). "details" holds the per-class table
    (`per_class_changes`), the forgotten images per class (`forgotten_by_class`) and both reliability
    diagrams. With validation logits and labels, the temperature is fitted on them and the scaled figures
    ("calibration.*_scaled") are those of the test logits. Drops are reference minus candidate."""
    _check_pair(reference_logits, candidate_logits, labels)
    _check_classes(classes, reference_logits.shape[1])
    if (val_reference_logits is not None or val_candidate_logits is not None) and val_labels is None:
        raise CompressionError("validation logits were given without validation labels")
    report = _agreement_metrics(reference_logits, candidate_logits, labels, bootstrap, seed)
    per_class = per_class_changes(reference_logits, candidate_logits, labels, classes)
    measured = [row for row in per_class if row["n"]]
    worst = max(measured, key=lambda row: row["drop"])
    forgotten = forgotten_by_class(reference_logits, candidate_logits, labels, classes)
    report.update({"fidelity.max_class_drop": worst["drop"],
                   "fidelity.significant_classes": sum(row["significant"] for row in per_class),
                   "forgotten.count": forgotten["count"]})
    report.update(_calibration_report(reference_logits, candidate_logits, labels, val_reference_logits,
                                      val_candidate_logits, val_labels))
    report["details"] = {"per_class": per_class, "max_class_drop_class": worst["class"], "forgotten": forgotten,
                         "reliability": {"reference": reliability_bins(reference_logits, labels),
                                         "candidate": reliability_bins(candidate_logits, labels)}}
    return report


def scalar_metrics(report: dict) -> dict[str, float]:
    """The numeric, flat part of a `fidelity_report`, ready for a metrics logger."""
    return {key: value for key, value in report.items() if key != "details"}


def _verdict(low: float, high: float) -> str:
    if low > 0:
        return "the drop is real"
    if high < 0:
        return "the gain is real"
    return "the drop is within noise"


def _images(count: int) -> str:
    return f"{count} image" if count == 1 else f"{count} images"


def what_changed(name: str, report: dict, reference_name: str, classes: list[str]) -> str:
    """One plain-words sentence on a `fidelity_report`. `reference_name` reads as a noun phrase in it
    ("the teacher", "its float parent")."""
    low, high = report["fidelity.drop_ci_low"] * 100, report["fidelity.drop_ci_high"] * 100
    sentence = (f"{name} agrees with {reference_name} on {report['fidelity.agreement']:.1%} of test images; it "
                f"lost {_images(report['fidelity.lost'])} {reference_name} got right and gained "
                f"{report['fidelity.gained']} ({_verdict(low, high)}: 95% interval {low:+.1f} to {high:+.1f} points)")
    forgotten = report["details"]["forgotten"]
    if forgotten["count"]:
        top = max(range(len(classes)), key=lambda c: (forgotten["per_class"][c], -c))
        sentence += (f"; {name} forgot {_images(forgotten['count'])} (its prediction changed), "
                     f"{forgotten['per_class'][top]} of them {classes[top]}")
    hurt = [row["class"] for row in report["details"]["per_class"]
            if row["significant"] and row["drop"] is not None and row["drop"] > 0]
    if hurt:
        sentence += f"; significantly worse on {', '.join(hurt)} (McNemar, Holm-corrected)"
    return sentence
