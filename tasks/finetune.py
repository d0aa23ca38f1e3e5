"""finetune: the teacher, transferred from the pretrained model to the target task."""

from __future__ import annotations

from compression.candidates import TEACHER
from compression.fit_plan import FitPlan
from compression.models import adapt_input_channels, replace_head
from compression.training import seed_everything
from tasks.config import PipelineConfig
from tasks.data import get_bundle
from tasks.stage import stage_task
from tasks.training import fit_logged, load, log_curves, save_candidate


@stage_task("finetune", sections=("finetune", "distributed"))
def finetune(cfg: PipelineConfig, ctx, run, workdir, data: dict, base: dict) -> dict:
    bundle = get_bundle(cfg, data)
    model = load(base)
    seed_everything(cfg.seed)
    replace_head(model, len(bundle.classes))
    adapt_input_channels(model, bundle.in_channels)
    settings = cfg.finetune
    plan = FitPlan(backbone_lr_factor=settings.backbone_lr_factor, freeze_epochs=settings.freeze_epochs)
    result = fit_logged(run, model, bundle, settings.train, workdir / "checkpoints", "finetune", plan=plan,
                        distributed=cfg.distributed)
    log_curves(run, {TEACHER: result.history}, "fine-tune")
    return save_candidate(run, model, workdir, TEACHER, bundle, val_accuracy=result.best_val_accuracy)
