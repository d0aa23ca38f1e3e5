"""trim: a shallower student initialised from the teacher's weights (no training here)."""

from __future__ import annotations

from compression.models import count_params, model_spec
from compression.trimming import trim as trim_model
from tasks.config import PipelineConfig
from tasks.data import get_bundle
from tasks.stage import stage_task
from tasks.training import load, save_candidate


@stage_task("trim", sections=("trim",))
def trim(cfg: PipelineConfig, ctx, run, workdir, data: dict, teacher: dict) -> dict:
    bundle = get_bundle(cfg, data)
    model = load(teacher)
    student = trim_model(model, cfg.trim.keep_per_stage, cfg.trim.strategy)
    run.log_metrics({"params_teacher": count_params(model), "params_trimmed": count_params(student)})
    run.log_dict(model_spec(student)["trim"], "trim_plan.json")
    return save_candidate(run, student, workdir, "trimmed", bundle)
