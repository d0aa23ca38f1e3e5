"""distill: KD from the teacher into the student, plus the same student trained without KD (same init,
seed and epochs) so that every run reports what distillation gained. The KD student also learns from the
unlabeled transfer set (data.unlabeled_per_class), which only a teacher can label."""

from __future__ import annotations

import copy
import logging

from torch import nn

from compression.candidates import STUDENT_KD, STUDENT_PLAIN
from compression.fit_plan import FitPlan
from compression.models import build_model, count_params
from compression.training import seed_everything
from tasks.config import PipelineConfig
from tasks.data import get_bundle
from tasks.outputs import Distilled
from tasks.stage import stage_task
from tasks.training import fit_logged, load, log_curves, save_candidate

log = logging.getLogger("shrinkflow")


def warn_if_not_smaller(run, teacher: nn.Module, student: nn.Module, why: str) -> bool:
    """Say so (log and run tag) when the student has no fewer parameters than the teacher; True if it has."""
    teacher_params, student_params = count_params(teacher), count_params(student)
    run.log_metrics({"params_teacher": teacher_params, "params_student": student_params})
    if student_params < teacher_params:
        return False
    log.warning("[distill] the student is as large as the teacher (%s params, teacher %s): %s; distilling will "
                "not make the model smaller", f"{student_params:,}", f"{teacher_params:,}", why)
    run.set_tags({"shrinkflow.student_not_smaller": "true"})
    return True


def _student_origin(student_arch: str | None, trimmed: bool) -> str:
    if student_arch:
        return f"distill.student is {student_arch}"
    if trimmed:
        return "trimming kept every block (lower trim.keep_per_stage)"
    return "trimming is off and distill.student is not set"


@stage_task("distill", sections=("distill", "distributed"))
def distill(cfg: PipelineConfig, ctx, run, workdir, data: dict, teacher: dict,
            student: dict | None = None) -> Distilled:
    bundle = get_bundle(cfg, data)
    settings = cfg.distill
    teacher_model = load(teacher)
    seed_everything(cfg.seed)
    if settings.student:
        init = build_model(settings.student, len(bundle.classes), bundle.in_channels, bundle.input_size)
    else:
        init = load(student or teacher)
    warn_if_not_smaller(run, teacher_model, init, _student_origin(settings.student, student is not None))
    kd_student = copy.deepcopy(init)
    plan = FitPlan(loss="kd", temperature=settings.temperature, alpha=settings.alpha)
    kd = fit_logged(run, kd_student, bundle, settings.train, workdir / "checkpoints-kd", "distill", split="transfer",
                    plan=plan, teacher=teacher, distributed=cfg.distributed)
    histories = {"KD student": kd.history}
    kd_ref = save_candidate(run, kd_student, workdir, STUDENT_KD, bundle, val_accuracy=kd.best_val_accuracy)
    baseline_ref = None
    if settings.baseline:
        plain_student = copy.deepcopy(init)
        plain = fit_logged(run, plain_student, bundle, settings.train, workdir / "checkpoints-baseline",
                           "distill-baseline", prefix="baseline.", distributed=cfg.distributed, part=None)
        histories["student without KD"] = plain.history
        baseline_ref = save_candidate(run, plain_student, workdir, STUDENT_PLAIN, bundle,
                                            val_accuracy=plain.best_val_accuracy)
        run.log_metrics({"kd_gain_val_accuracy": kd.best_val_accuracy - plain.best_val_accuracy})
    log_curves(run, histories, "distillation")
    return Distilled(kd_ref, baseline_ref)
