"""Stability across seeds: the same pipeline run with several seeds, each candidate's figures as mean, standard
deviation and worst case over the seeds, and the populations' predictions on one shared test set: the churn
between the teacher's own seeds (the floor a candidate's churn is read against, Bhojanapalli et al. 2021) and
the images whose modal label the compressed population changes (Hooker et al. 2019).
"""

from __future__ import annotations

import torch

from compression import CompressionError
from compression import fidelity as fid
from compression.accuracy import matching_share
from compression.candidates import TEACHER

# The per-seed figures summarised, and which way each is better: True when higher is better (the worst seed
# is the lowest), False when lower is better.
FIGURES = {"accuracy": True, "accuracy_drop": False, "fidelity.agreement": True, "fidelity.lost": False,
           "fidelity.gained": True, "fidelity.kl": False, "fidelity.drop_ci_high": False,
           "fidelity.max_class_drop": False, "forgotten.count": False, "calibration.ece": False,
           "calibration.ece_scaled": False, "calibration.nll_scaled": False, "calibration.brier_scaled": False,
           "robustness.accuracy": True, "robustness.agreement": True, "robustness.relative_error": False,
           "attribution.spearman": True, "attribution.top10_overlap": True, "parent.fidelity.agreement": True}


def _drop(row: dict, reference: dict) -> float:
    return row.get("fidelity.accuracy_drop", reference["accuracy"] - row["accuracy"])


def seed_spreads(rows_by_seed: list[list[dict]], reference: str = TEACHER) -> dict[str, dict[str, dict]]:
    """{candidate: {figure: fidelity.spread(...)}} over the seeds, from each seed's evaluation rows (with the
    fidelity figures merged in). A figure a candidate lacks in some seed is summarised over the others."""
    values: dict[str, dict[str, list[float]]] = {}
    for rows in rows_by_seed:
        ref = next((r for r in rows if r["candidate"] == reference), rows[0])
        for row in rows:
            figures = {**row, "accuracy_drop": _drop(row, ref)}
            for figure in FIGURES:
                if figures.get(figure) is not None:
                    values.setdefault(row["candidate"], {}).setdefault(figure, []).append(float(figures[figure]))
    return {name: {figure: fid.spread(found, FIGURES[figure]) for figure, found in by_figure.items()}
            for name, by_figure in values.items()}


def _check_population(predictions: dict[str, torch.Tensor], labels: torch.Tensor, reference: str) -> None:
    if reference not in predictions:
        raise CompressionError(f"no predictions of the reference {reference!r}")
    shapes = {tuple(p.shape) for p in predictions.values()}
    if len(shapes) != 1 or next(iter(shapes))[1] != labels.shape[0]:
        raise CompressionError(f"every population needs [seeds, {labels.shape[0]}] predictions, got {sorted(shapes)}")


def population_report(predictions: dict[str, torch.Tensor], labels: torch.Tensor, classes: list[str],
                      reference: str = TEACHER) -> dict:
    """From predictions [seeds, N] of every candidate (seed s of each from the same pipeline run) on one test
    set: the reference's churn between seeds (the floor), each candidate's churn against the same seed's
    reference (mean, sd, worst; and mean / floor), and Hooker's forgotten images: where the candidate
    population's modal label differs from the reference population's (count, per class, accuracy of both
    modal labels there)."""
    _check_population(predictions, labels, reference)
    teacher = predictions[reference]
    floor = fid.seed_churn(teacher)
    out = {"reference": reference, "seeds": int(teacher.shape[0]), "images": int(labels.shape[0]),
           "churn_floor": floor, "candidates": {}}
    teacher_modal = fid.modal_labels(teacher)
    for name, population in predictions.items():
        churn = [(population[s] != teacher[s]).double().mean().item() for s in range(teacher.shape[0])]
        forgotten = fid.population_forgotten(teacher, population)
        modal = fid.modal_labels(population)
        out["candidates"][name] = {
            "churn": fid.spread(churn, higher_is_better=False), "churn_per_seed": churn,
            "churn_vs_floor": sum(churn) / len(churn) / floor if floor > 0 else None,
            "forgotten": int(forgotten.numel()),
            "forgotten_per_class": torch.bincount(labels[forgotten], minlength=len(classes)).tolist(),
            "modal_accuracy": matching_share(modal, labels),
            "reference_modal_accuracy_on_forgotten": ((teacher_modal[forgotten] == labels[forgotten]).double().mean()
                                                      .item() if forgotten.numel() else None),
        }
    return out


def forgotten_population_rows(predictions: dict[str, torch.Tensor], labels: torch.Tensor, classes: list[str],
                              candidate: str, reference: str = TEACHER) -> list[dict]:
    """One row per image the candidate population forgot (Hooker): index, label, both modal labels and the
    share of each population's seeds that predict its modal label."""
    teacher, population = predictions[reference], predictions[candidate]
    teacher_modal, modal = fid.modal_labels(teacher), fid.modal_labels(population)
    rows = []
    for i in fid.population_forgotten(teacher, population).tolist():
        rows.append({"index": i, "label": classes[int(labels[i])],
                     "reference_modal": classes[int(teacher_modal[i])],
                     "reference_votes": (teacher[:, i] == teacher_modal[i]).double().mean().item(),
                     "candidate_modal": classes[int(modal[i])],
                     "candidate_votes": (population[:, i] == modal[i]).double().mean().item()})
    return rows


def _cell(spread: dict | None, scale: float = 1.0, digits: int = 4) -> str:
    if spread is None:
        return ""
    return (f"{scale * spread['mean']:.{digits}f} ± {scale * spread['std']:.{digits}f} "
            f"(worst {scale * spread['worst']:.{digits}f})")


def stability_markdown(spreads: dict[str, dict[str, dict]], population: dict, seeds: list[int]) -> str:
    """The stability table: per candidate, accuracy, drop, agreement, ECE after scaling and corruption
    error as mean ± sd (worst), churn against the teacher and its ratio to the floor, forgotten images."""
    header = ("| candidate | accuracy | accuracy drop | agreement | ECE scaled | corruption error x | churn vs teacher "
              "| churn / floor | forgotten (population) |")
    lines = [f"Stability over {len(seeds)} seeds ({', '.join(map(str, seeds))}); churn and forgotten images on "
             f"the {population['images']} test images of seed {seeds[0]}. Teacher-against-teacher churn between "
             f"seeds (the floor): {population['churn_floor']:.4f}.", "", header, "|---|" + "---:|" * 8]
    for name, figures in spreads.items():
        # The reference against itself: no churn to read against the floor, nothing forgotten.
        pop = population["candidates"].get(name, {}) if name != population["reference"] else {}
        ratio = pop.get("churn_vs_floor")
        cells = [_cell(figures.get("accuracy")), _cell(figures.get("accuracy_drop")),
                 _cell(figures.get("fidelity.agreement")), _cell(figures.get("calibration.ece_scaled"), digits=3),
                 _cell(figures.get("robustness.relative_error"), digits=2), _cell(pop.get("churn")),
                 "" if ratio is None else f"{ratio:.2f}x", str(pop.get("forgotten", ""))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stability_metrics(spreads: dict[str, dict[str, dict]], population: dict) -> dict[str, float]:
    """Flat metrics: `<candidate>.stability.<figure>.mean|std|worst`, churn against the teacher, its ratio to
    the floor and the population's forgotten images; `stability.churn_floor`."""
    metrics = {"stability.churn_floor": population["churn_floor"]}
    for name, figures in spreads.items():
        for figure, spread in figures.items():
            metrics.update({f"{name}.stability.{figure}.{k}": spread[k] for k in ("mean", "std", "worst")})
    for name, pop in population["candidates"].items():
        if name == population["reference"]:
            continue
        metrics.update({f"{name}.stability.churn.{k}": pop["churn"][k] for k in ("mean", "std", "worst")})
        metrics[f"{name}.stability.forgotten"] = pop["forgotten"]
        if pop["churn_vs_floor"] is not None:
            metrics[f"{name}.stability.churn_vs_floor"] = pop["churn_vs_floor"]
    return metrics
