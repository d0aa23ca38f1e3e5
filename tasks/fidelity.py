"""fidelity: what compression changed (docs/fidelity.md). Every candidate against the teacher, an int8 model also
against the float model it was made from: agreement, whether the accuracy drop is real, the images it forgot,
calibration before and after temperature scaling, robustness under seeded corruptions and occlusion attribution
agreement.

The stage runs the model files itself, every model on each batch of a split, so an image folder is read once
for all of them. Its figures are metrics of this stage's run named `<candidate>.<figure>` (a `parent.` infix
against the float parent), `fidelity.json` holds every figure with its details, and the plots and forgotten
images are artifacts; the pipeline merges the figures into the evaluation rows (comparison.with_fidelity)
for the report, the registration gates and the search's pick.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from compression import candidate_fidelity as cf
from compression import fidelity as fid
from compression import stability
from compression.candidates import TEACHER
from compression.corruptions import stratified_subset
from compression.data import DataBundle, to_model_input
from compression.models import input_channels
from tasks import fidelity_plots as plots
from tasks.config import PipelineConfig
from tasks.data import get_bundle
from tasks.evaluate import load_logits
from tasks.outputs import FidelityFigures
from tasks.stage import stage_task
from tasks.tracking import StageRun
from tasks.training import load

log = logging.getLogger("shrinkflow")

# Images in the attribution figure: each is a row of panels (the image and every model's map).
ATTRIBUTION_GRID_IMAGES = 4


def _by_channels(models: dict) -> dict[int, dict]:
    groups: dict[int, dict] = {}
    for name, model in models.items():
        groups.setdefault(input_channels(model), {})[name] = model
    return groups


def split_logits(bundle: DataBundle, models: dict, split: str, batch_size: int) -> tuple[dict, torch.Tensor]:
    """Every model's logits on a split (models that take the same channels share one pass over it)."""
    logits, labels = {}, None
    for channels, group in _by_channels(models).items():
        found, labels = cf.logits_of_models(group, bundle.batches(split, batch_size, channels=channels))
        logits.update(found)
    return logits, labels


def test_pixels(bundle: DataBundle, index: torch.Tensor, batch_size: int) -> torch.Tensor:
    """uint8 pixels of the test images at `index` (in that order), as evaluation reads them: only those
    images are read, also from an image folder."""
    part = replace(bundle, test=bundle.test.subset(index))
    return torch.cat([images for images, _ in part.pixel_batches("test", batch_size)])


def _pixel_forwards(bundle: DataBundle, models: dict) -> dict:
    """Each model as a function of uint8 pixels, normalised the way its data loader does."""
    return {name: (lambda pixels, m=model: m(to_model_input(pixels, bundle.mean, bundle.std, input_channels(m))))
            for name, model in models.items()}


def _sample(labels: torch.Tensor, count: int | None, seed: int) -> torch.Tensor:
    """A stratified, seeded subset of about `count` test images (all with None)."""
    classes = int(labels.unique().numel())
    if count is None or count >= len(labels):
        return torch.arange(len(labels))
    return stratified_subset(labels, max(1, count // classes), seed)


def _attribution_sample(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(len(labels), generator=generator)[:count].sort().values


def gather_evidence(cfg: PipelineConfig, bundle: DataBundle, models: dict,
                    test: tuple[dict, torch.Tensor] | None = None) -> tuple[cf.Evidence, torch.Tensor]:
    """(what every model outputs, the pixels of the attribution sample). `test`: the models' test logits and
    the labels when the evaluate stage's are at hand; else the models run over the test split here."""
    settings, batch = cfg.fidelity, cfg.data.eval_batch_size
    test, labels = test or split_logits(bundle, models, "test", batch)
    val, val_labels = split_logits(bundle, models, "val", batch)
    evidence = cf.Evidence(bundle.classes, labels, test, val_labels, val)
    if not aligned(bundle, labels):
        return evidence, torch.empty(0, dtype=torch.uint8)
    pixels = _pixel_forwards(bundle, models)
    if settings.corruptions:
        evidence.corruption_index = _sample(labels, settings.corruption_images, cfg.seed)
        images = test_pixels(bundle, evidence.corruption_index, batch)
        evidence.corrupted = cf.corrupted_logits_of_models(pixels, images, cfg.seed, tuple(settings.corruptions),
                                                           tuple(settings.severities), batch)
    shown = torch.empty(0, dtype=torch.uint8)
    if settings.attribution_images:
        evidence.attribution_index = _attribution_sample(labels, settings.attribution_images, cfg.seed)
        shown = test_pixels(bundle, evidence.attribution_index, batch)
        inputs = {name: to_model_input(shown, bundle.mean, bundle.std, input_channels(model))
                  for name, model in models.items()}
        evidence.maps = cf.occlusion_of_models(models, inputs, labels[evidence.attribution_index], batch)
    return evidence, shown


def aligned(bundle: DataBundle, labels: torch.Tensor) -> bool:
    """Whether the test pass scored every image of the split. A file of an image folder that broke after it
    was listed is skipped (data.bad_images: skip), which shifts the positions after it: the figures that read
    pixels by position (corruptions, occlusion, the forgotten images' grid) are then left out, with a warning."""
    if len(labels) == len(bundle.test):
        return True
    log.warning("[fidelity] %d of %d test images could not be read: no corruption, occlusion or forgotten-image "
                "figures", len(bundle.test) - len(labels), len(bundle.test))
    return False


def method_note(cfg: PipelineConfig, evidence: cf.Evidence) -> str:
    """How the figures were measured, in words, for the report."""
    settings, n = cfg.fidelity, len(evidence.test_labels)
    parts = [f"Fidelity on all {n} test images (95% intervals from {settings.bootstrap} paired bootstrap "
             "resamples; McNemar's exact test, per class with Holm's correction); calibration in 15 bins, the "
             "temperature fitted on the validation split."]
    if evidence.corrupted:
        used = len(evidence.corruption_index)
        subset = "all test images" if used == n else (f"a stratified subset of {used} of the {n} test images "
                                                       "(scoring all of them under every corruption would be slow)")
        parts.append(f"Robustness: {len(settings.corruptions)} corruptions x {len(settings.severities)} "
                     f"severities (seed {cfg.seed}) on {subset}.")
    if evidence.maps:
        parts.append(f"Attribution: occlusion (forward passes only, so int8 models are explained as they run) on "
                     f"{len(evidence.attribution_index)} seeded test images, for their true class.")
    return " ".join(parts)


def report_metrics(reports: dict) -> dict[str, float]:
    """Every scalar figure as `<candidate>.<figure>` (`<candidate>.parent.<figure>` against the float parent),
    with the per-class drops and forgotten shares."""
    metrics = {}
    for name, pair in reports.items():
        for infix, report in (("", pair["reference"]), ("parent.", pair["parent"])):
            if report is None:
                continue
            metrics.update({f"{name}.{infix}{key}": value for key, value in fid.scalar_metrics(report).items()})
        details = pair["reference"]["details"]
        for i, row in enumerate(details["per_class"]):
            if row["drop"] is not None:
                metrics[f"{name}.per_class_drop.class_{i}"] = row["drop"]
        for i, share in enumerate(details["forgotten"]["share"]):
            metrics[f"{name}.forgotten.class_{i}"] = share
    return metrics


def evaluation_run(ctx, run) -> StageRun | None:
    """The run of the evaluate stage this one follows (the pipeline run's `stage.evaluate.run_id` tag): the
    figures are logged there too, beside each candidate's accuracy and costs under the same names."""
    run_id = run.client.get_run(ctx.parent_run_id).data.tags.get("stage.evaluate.run_id")
    return StageRun(run.client, run_id, "evaluate") if run_id else None


def _write_forgotten(path: Path, rows: list[dict]) -> None:
    fields = ["index", "label", "reference_prediction", "reference_confidence", "candidate_prediction",
              "candidate_confidence"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _log_forgotten(run, workdir: Path, bundle: DataBundle, evidence: cf.Evidence, reference: str, name: str,
                   grid: int, batch: int) -> None:
    """The full list as a CSV, and a grid of those the reference was surest of."""
    rows = fid.forgotten_rows(evidence.test[reference], evidence.test[name], evidence.test_labels, evidence.classes)
    path = workdir / "forgotten" / f"{name}.csv"
    path.parent.mkdir(exist_ok=True)
    _write_forgotten(path, rows)
    run.log_artifact(path, "forgotten")
    if rows and len(evidence.test_labels) == len(bundle.test):  # positions hold (see `aligned`)
        top = rows[:grid]
        pixels = test_pixels(bundle, torch.tensor([row["index"] for row in top]), batch)
        figure = plots.forgotten_grid(pixels, top, reference, name)
        run.log_figure(figure, f"forgotten/{name}.png")
        plots.close(figure)


def _log_figures(run, workdir: Path, cfg: PipelineConfig, bundle: DataBundle, evidence: cf.Evidence,
                 reports: dict, reference: str, shown: torch.Tensor) -> None:
    """reliability.png (the reference's diagram, then every candidate's beside it), attribution.png (a few
    images with every model's occlusion map), and each candidate's forgotten images."""
    bins = {reference: reports[reference]["reference"]["details"]["reliability"]["candidate"]}
    bins.update({name: pair["reference"]["details"]["reliability"]["candidate"] for name, pair in reports.items()
                 if name != reference})
    figure = plots.reliability_diagram(bins, "test reliability before temperature scaling")
    run.log_figure(figure, "reliability.png")
    plots.close(figure)
    if evidence.maps:
        maps = {reference: evidence.maps[reference], **{n: m for n, m in evidence.maps.items() if n != reference}}
        figure = plots.attribution_panels(shown, maps, count=ATTRIBUTION_GRID_IMAGES)
        run.log_figure(figure, "attribution.png")
        plots.close(figure)
    for name in reports:
        if name != reference:
            _log_forgotten(run, workdir, bundle, evidence, reference, name, cfg.fidelity.grid_images,
                           cfg.data.eval_batch_size)


def _stored(reports: dict) -> dict:
    """The reports as stage results keep them: the scalar figures (the details are in fidelity.json)."""
    return {name: {side: None if report is None else fid.scalar_metrics(report) for side, report in pair.items()}
            for name, pair in reports.items()}


def reference_of(candidates: dict) -> str:
    """The candidate the others are compared with: the teacher, else the first (as the report's ratios)."""
    return TEACHER if TEACHER in candidates else next(iter(candidates))


@stage_task("fidelity", sections=("fidelity",))
def fidelity(cfg: PipelineConfig, ctx, run, workdir, data: dict, candidates: dict,
             test_logits: dict | None = None) -> FidelityFigures:
    """Every candidate against the reference (and an int8 one against its float parent); the figures, the
    "what changed" sentences and how they were measured, for comparison.with_fidelity."""
    started = time.perf_counter()
    bundle = get_bundle(cfg, data)
    models = {name: load(ref).eval() for name, ref in candidates.items()}
    reference = reference_of(candidates)
    evaluated = load_logits(test_logits, models)
    evidence, shown = gather_evidence(cfg, bundle, models, evaluated)
    parents = cf.float_parents({n: r.get("source_sha256") for n, r in candidates.items()},
                               {n: r["sha256"] for n, r in candidates.items()})
    reports = cf.all_reports(evidence, reference, parents, cfg.fidelity.bootstrap, cfg.seed)
    note = method_note(cfg, evidence)
    noun = "the teacher" if reference == TEACHER else f"the reference ({reference})"
    sentences = {name: cf.candidate_sentences(name, pair, noun, parents.get(name), bundle.classes)
                 for name, pair in reports.items() if name != reference}
    metrics = report_metrics(reports)
    for target in (run, evaluation_run(ctx, run)):
        if target is not None:
            target.log_metrics(metrics)
    _log_figures(run, workdir, cfg, bundle, evidence, reports, reference, shown)
    run.log_dict({"reference": reference, "parents": parents, "note": note, "classes": bundle.classes,
                  "reports": reports, "sentences": sentences}, "fidelity.json")
    seconds = time.perf_counter() - started
    run.log_metrics({"seconds": seconds, "test_images": len(evidence.test_labels),
                     "test_logits_from_evaluate": int(evaluated is not None),
                     "corruption_images": 0 if evidence.corruption_index is None else len(evidence.corruption_index)})
    return FidelityFigures(reference=reference, parents=parents, figures=_stored(reports), sentences=sentences,
                           note=note, seconds=seconds)


def population_predictions(bundle: DataBundle, runs: list[dict], batch_size: int) -> tuple[dict, torch.Tensor]:
    """({candidate: predictions [seeds, N]}, labels [N]) of every seed's model files on this bundle's test
    split, for the candidates every seed has."""
    names = [row["candidate"] for row in runs[0]["rows"]]
    common = [n for n in names if all(any(r["candidate"] == n for r in run["rows"]) for run in runs)]
    by_seed, labels = [], None
    for run in runs:
        models = {row["candidate"]: load(row).eval() for row in run["rows"] if row["candidate"] in common}
        logits, labels = split_logits(bundle, models, "test", batch_size)
        by_seed.append({name: found.argmax(1) for name, found in logits.items()})
    return {name: torch.stack([seed[name] for seed in by_seed]) for name in common}, labels


def _log_population_forgotten(run, workdir: Path, predictions: dict, labels: torch.Tensor, classes: list[str],
                              reference: str) -> None:
    folder = workdir / "population_forgotten"
    folder.mkdir(exist_ok=True)
    for name in predictions:
        if name == reference:
            continue
        rows = stability.forgotten_population_rows(predictions, labels, classes, name, reference)
        path = folder / f"{name}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["index", "label", "reference_modal", "reference_votes",
                                                   "candidate_modal", "candidate_votes"])
            writer.writeheader()
            writer.writerows(rows)
        run.log_artifact(path, "population_forgotten")


@stage_task("stability", cache=False)
def stability_report(cfg: PipelineConfig, ctx, run, workdir, data: dict, runs: list[dict]) -> dict:
    """The pipelines of several seeds (`runs`: {"seed", "run_id", "rows"} each, the first one's data is
    `data`) side by side: every figure's mean, sd and worst case over the seeds; the churn floor and the
    forgotten images of each population, on the first seed's test split."""
    bundle = get_bundle(cfg, data)
    reference = reference_of({row["candidate"]: row for row in runs[0]["rows"]})
    spreads = stability.seed_spreads([r["rows"] for r in runs], reference)
    predictions, labels = population_predictions(bundle, runs, cfg.data.eval_batch_size)
    population = stability.population_report(predictions, labels, bundle.classes, reference)
    seeds = [r["seed"] for r in runs]
    text = stability.stability_markdown(spreads, population, seeds)
    metrics = stability.stability_metrics(spreads, population)
    run.log_metrics(metrics)
    run.log_text(text + "\n", "stability.md")
    run.log_dict({"seeds": seeds, "runs": [{"seed": r["seed"], "run_id": r["run_id"]} for r in runs],
                  "reference": reference, "spreads": spreads, "population": population}, "stability.json")
    _log_population_forgotten(run, workdir, predictions, labels, bundle.classes, reference)
    return {"markdown": text, "metrics": metrics, "spreads": spreads, "population": population, "seeds": seeds}
