"""prune: structured channel pruning in steps with (KD) fine-tuning between them, and/or unstructured
magnitude pruning (reported as sparsity: it does not make dense inference faster)."""

from __future__ import annotations

import copy

from compression.candidates import PRUNED, SPARSE
from compression.fit_plan import FitPlan
from compression.models import count_params, example_input, input_channels
from compression.pruning import prune_structured, prune_unstructured
from compression.training import seed_everything
from tasks.config import PipelineConfig
from tasks.data import get_bundle
from tasks.outputs import Pruned
from tasks.stage import stage_task
from tasks.training import fit_logged, load, log_curves, save_candidate


@stage_task("prune", sections=("prune", "distill", "distributed"))
def prune(cfg: PipelineConfig, ctx, run, workdir, data: dict, student: dict, teacher: dict) -> Pruned:
    bundle = get_bundle(cfg, data)
    settings = cfg.prune
    model = load(student)
    seed_everything(cfg.seed)
    channels = input_channels(model)
    example = example_input(model, size=bundle.input_size)
    plan = (FitPlan(loss="kd", temperature=cfg.distill.temperature, alpha=cfg.distill.alpha) if settings.kd
            else FitPlan())
    structured_ref = sparse_ref = None

    if settings.method in ("structured", "both"):
        structured = copy.deepcopy(model)
        histories = {}

        def recover(step: int, pruned) -> None:
            run.log_metrics({"params": count_params(pruned)}, step=step + 1)
            if settings.train.epochs:
                fit_result = fit_logged(run, pruned, bundle, settings.train, workdir / f"checkpoints-step{step + 1}",
                                        f"prune step {step + 1}/{settings.iterative_steps}", prefix=f"step{step + 1}.",
                                        plan=plan, teacher=teacher if settings.kd else None,
                                        split="transfer" if settings.kd else "train", distributed=cfg.distributed,
                                        part=step + 1)
                histories[f"after step {step + 1}"] = fit_result.history

        gradient_batches = None
        if settings.importance == "taylor":
            gradient_batches = list(bundle.batches("train", 64, train=True, seed=cfg.seed, channels=channels))[:4]
        report = prune_structured(structured, example, settings.ratio, settings.importance, settings.iterative_steps,
                                  settings.round_to, settings.global_pruning, gradient_batches, after_step=recover)
        run.log_metrics(report)
        log_curves(run, histories, "recovery after pruning")
        structured_ref = save_candidate(run, structured, workdir, PRUNED, bundle)

    if settings.method in ("unstructured", "both"):
        sparse = copy.deepcopy(model)
        report = prune_unstructured(sparse, settings.ratio)
        run.log_metrics(report, prefix="unstructured.")
        sparse_ref = save_candidate(run, sparse, workdir, SPARSE, bundle)
    return Pruned(structured_ref, sparse_ref)
