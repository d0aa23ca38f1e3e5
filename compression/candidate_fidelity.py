"""The "what compression changed" report of a pipeline's candidates: what every model outputs on the same inputs
(test and validation logits, logits under corruptions, occlusion maps), then each candidate against its
reference (the teacher) and an int8 model also against the float model it was made from.

The statistics are compression/fidelity.py's, compression/corruptions.py's and compression/attribution.py's;
this module runs the models once for all of them and assembles one flat report per comparison, with the same
key names everywhere ("fidelity.*", "forgotten.*", "calibration.*", "robustness.*", "attribution.*").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from compression import CompressionError
from compression import attribution as attr
from compression import corruptions as cor
from compression import fidelity as fid
from compression.accuracy import top1_accuracy

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Evidence:
    """What every model (by candidate name) produced on the same inputs.

    `test`/`val`: logits [N, K] of the test and validation splits; `corrupted`: logits per corruption and
    severity of the test images at `corruption_index` (positions in the test split); `maps`: occlusion maps
    [M, H, W] of the test images at `attribution_index`, for their true classes."""

    classes: list[str]
    test_labels: torch.Tensor
    test: dict[str, torch.Tensor]
    val_labels: torch.Tensor | None = None
    val: dict[str, torch.Tensor] = field(default_factory=dict)
    corruption_index: torch.Tensor | None = None
    corrupted: dict[str, dict[str, dict[int, torch.Tensor]]] = field(default_factory=dict)
    attribution_index: torch.Tensor | None = None
    maps: dict[str, torch.Tensor] = field(default_factory=dict)


# ---------------------------------------------------------------- running the models

@torch.no_grad()
def logits_of_models(models: dict[str, Forward], batches: Iterable) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({name: logits [N, K]}, labels [N]) of one pass over (x, y) batches, every model on each batch: the
    batches are read (for an image folder, decoded) once for all the models."""
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    labels = []
    for x, y in batches:
        for name, forward in models.items():
            outputs[name].append(forward(x).float().cpu())
        labels.append(y.cpu())
    if not labels:
        raise CompressionError("the split is empty: nothing to compare the models on")
    return {name: torch.cat(parts) for name, parts in outputs.items()}, torch.cat(labels)


def corrupted_logits_of_models(models: dict[str, Forward], images: torch.Tensor, seed: int,
                               corruptions: tuple[str, ...], severities: tuple[int, ...],
                               batch_size: int = 256) -> dict[str, dict[str, dict[int, torch.Tensor]]]:
    """{name: {corruption: {severity: logits}}} of models that take uint8 pixels (each normalises them its own
    way). Every batch is corrupted once and scored by all the models, so all of them see the same pixels."""
    names = list(models)

    def every_model(pixels: torch.Tensor) -> torch.Tensor:
        return torch.cat([models[name](pixels).float() for name in names], 1)

    joined = cor.corruption_logits(every_model, images, lambda pixels: pixels, seed, corruptions, severities,
                                   batch_size)
    out: dict[str, dict[str, dict[int, torch.Tensor]]] = {name: {} for name in names}
    for corruption, by_severity in joined.items():
        for severity, logits in by_severity.items():
            for name, part in zip(names, logits.chunk(len(names), 1)):
                out[name].setdefault(corruption, {})[severity] = part
    return out


def occlusion_of_models(models: dict[str, Forward], inputs: dict[str, torch.Tensor], targets: torch.Tensor,
                        batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Occlusion maps [M, H, W] of every model at its own input (normalised for it), for the same targets."""
    return {name: attr.occlusion_maps(forward, inputs[name], targets, batch_size=batch_size)
            for name, forward in models.items()}


# ---------------------------------------------------------------- figures of one comparison

def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def robustness_figures(reference: dict[str, dict[int, torch.Tensor]], candidate: dict[str, dict[int, torch.Tensor]],
                       labels: torch.Tensor) -> tuple[dict[str, float], dict]:
    """(metrics, details) under corruptions: mean accuracy and agreement over every corruption and severity,
    the corruption error relative to the reference's (Hendrycks' CE with the reference as baseline), and the
    same per corruption (averaged over severities); details hold every corruption and severity."""
    accuracy = cor.corruption_accuracy(candidate, labels)
    reference_accuracy = cor.corruption_accuracy(reference, labels)
    agreement = cor.corruption_agreement(reference, candidate)
    relative = cor.relative_corruption_error(accuracy, reference_accuracy)
    metrics = {"robustness.accuracy": _mean(a for by in accuracy.values() for a in by.values()),
               "robustness.agreement": _mean(a for by in agreement.values() for a in by.values())}
    for key in ("relative_error", "mean_per_corruption"):
        if relative[key] is not None:
            metrics[f"robustness.{key}"] = relative[key]
    for name in accuracy:
        metrics[f"robustness.{name}.accuracy"] = _mean(accuracy[name].values())
        metrics[f"robustness.{name}.agreement"] = _mean(agreement[name].values())
        if relative["per_corruption"][name] is not None:
            metrics[f"robustness.{name}.relative_error"] = relative["per_corruption"][name]
    details = {"images": int(labels.shape[0]), "accuracy": accuracy, "reference_accuracy": reference_accuracy,
               "agreement": agreement}
    return metrics, details


def attribution_figures(reference_maps: torch.Tensor, candidate_maps: torch.Tensor) -> dict[str, float]:
    """Rank correlation and top-10% overlap of the two models' occlusion maps, means over the images."""
    agreement = attr.attribution_agreement(reference_maps, candidate_maps)
    return {f"attribution.{key}": value for key, value in agreement.items()}


def compare(evidence: Evidence, reference: str, candidate: str, bootstrap: int = 1000, seed: int = 0) -> dict:
    """`candidate` against `reference`: fidelity_report's figures (temperature fitted on validation logits
    when there are some), then robustness and attribution agreement where the evidence has them."""
    val = evidence.val if reference in evidence.val and candidate in evidence.val else {}
    report = fid.fidelity_report(evidence.test[reference], evidence.test[candidate], evidence.test_labels,
                                 evidence.classes, val_reference_logits=val.get(reference),
                                 val_candidate_logits=val.get(candidate),
                                 val_labels=evidence.val_labels if val else None, bootstrap=bootstrap, seed=seed)
    if reference in evidence.corrupted and candidate in evidence.corrupted:
        labels = evidence.test_labels[evidence.corruption_index]
        metrics, details = robustness_figures(evidence.corrupted[reference], evidence.corrupted[candidate], labels)
        clean = top1_accuracy(evidence.test[candidate][evidence.corruption_index], labels)
        report.update({**metrics, "robustness.clean_accuracy": clean})
        report["details"]["robustness"] = details
    if reference in evidence.maps and candidate in evidence.maps:
        report.update(attribution_figures(evidence.maps[reference], evidence.maps[candidate]))
    return report


def float_parents(sources: dict[str, str | None], sha256: dict[str, str]) -> dict[str, str]:
    """{int8 candidate: the candidate it was made from}, from each candidate's `source_sha256` (None for a
    float model) and every candidate's own sha256."""
    by_sha = {sha: name for name, sha in sha256.items()}
    return {name: by_sha[source] for name, source in sources.items() if source in by_sha and by_sha[source] != name}


def all_reports(evidence: Evidence, reference: str, parents: dict[str, str], bootstrap: int = 1000,
                seed: int = 0) -> dict[str, dict]:
    """{candidate: {"reference": report, "parent": report or None}} for every model of the evidence, the
    reference included (against itself: its own calibration and corruption accuracy). An int8 model whose
    float parent is the reference has no separate parent report."""
    reports = {}
    for name in evidence.test:
        parent = parents.get(name)
        reports[name] = {"reference": compare(evidence, reference, name, bootstrap, seed),
                         "parent": compare(evidence, parent, name, bootstrap, seed)
                         if parent and parent != reference else None}
    return reports


# ---------------------------------------------------------------- in words

def _calibration_and_robustness(name: str, report: dict, reference_noun: str) -> str:
    parts = []
    if "calibration.ece_scaled" in report:
        parts.append(f"after temperature scaling its ECE is {report['calibration.ece_scaled']:.3f} against "
                     f"{report['calibration.ece_scaled_reference']:.3f} for {reference_noun}")
    if "robustness.relative_error" in report:
        parts.append(f"under corruptions it errs {report['robustness.relative_error']:.2f}x as often as "
                     f"{reference_noun} and agrees with it on {report['robustness.agreement']:.1%} of images")
    if "attribution.spearman" in report:
        parts.append(f"its occlusion maps rank pixels with correlation {report['attribution.spearman']:.2f} to "
                     f"{reference_noun}'s")
    return f" For {name}, " + "; ".join(parts) + "." if parts else ""


def candidate_sentences(name: str, pair: dict, reference_noun: str, parent: str | None, classes: list[str]) -> str:
    """A candidate's part of the "what changed" paragraph: against the reference (`reference_noun`, e.g. "the
    teacher"), with a clause on calibration, robustness and attribution, then against its float parent."""
    text = (fid.what_changed(name, pair["reference"], reference_noun, classes) + "."
            + _calibration_and_robustness(name, pair["reference"], reference_noun))
    if pair.get("parent") is not None:
        text += " " + fid.what_changed(name, pair["parent"], f"its float parent ({parent})", classes) + "."
    return text


def what_changed_paragraph(sentences: list[str], note: str) -> str:
    """The plain-words paragraph under the comparison table: the candidates' sentences, then how the figures
    were measured."""
    body = " ".join(sentences) if sentences else "no candidate besides the reference."
    return f"What changed: {body}" + (f"\n\n{note}" if note else "")
