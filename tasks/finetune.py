"""finetune: the teacher, transferred from the pretrained model to the target task."""

from __future__ import annotations

from compression.models import adapt_input_channels, replace_head
from compression.training import seed_everything
from compression.transfer import freeze_backbone_for, transfer_param_groups
from tasks.config import PipelineConfig
from tasks.data import get_bundle
from tasks.stage import stage_task
from tasks.training import fit_logged, load, log_curves, save_candidate


@stage_task("finetune", sections=("finetune",))
def finetune(cfg: PipelineConfig, ctx, run, workdir, data: dict, base: dict) -> dict:
    bundle = get_bundle(cfg, data)
    model = load(base)
    seed_everything(cfg.seed)
    replace_head(model, len(bundle.classes))
    adapt_input_channels(model, bundle.in_channels)
    settings = cfg.finetune
    result = fit_logged(
        run, model, bundle, settings.train, workdir / "checkpoints", "finetune",
        param_groups=transfer_param_groups(model, settings.train.lr, settings.backbone_lr_factor),
        on_epoch_start=freeze_backbone_for(settings.freeze_epochs),
    )
    log_curves(run, {"teacher": result.history}, "fine-tune")
    return save_candidate(run, model, workdir, "teacher", bundle, val_acc=result.best_val_acc)
