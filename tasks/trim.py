"""trim: a shallower student initialised from the teacher's weights (no training here)."""

from __future__ import annotations

from compression.models import count_params, model_spec
from compression.trimming import apply_trim, check_trimmable, find_stages, plan_trim
from tasks.config import PipelineConfig
from tasks.data import get_bundle
from tasks.stage import stage_task
from tasks.training import load, save_candidate


@stage_task("trim", sections=("trim",))
def trim(cfg: PipelineConfig, ctx, run, workdir, data: dict, teacher: dict) -> dict:
    model = load(teacher)
    check_trimmable(model)  # an architecture without removable blocks is refused before the data loads
    bundle = get_bundle(cfg, data)
    plan = plan_trim(model, cfg.trim.keep_per_stage, cfg.trim.strategy)
    blocks_before = sum(stage.size for stage in find_stages(model))
    params_before = count_params(model)
    student = apply_trim(model, plan)  # the teacher was loaded for this stage only: trim it in place
    run.log_metrics({"params_teacher": params_before, "params_trimmed": count_params(student),
                     "blocks_teacher": blocks_before, "blocks_trimmed": sum(s.size for s in find_stages(student))})
    run.log_dict(model_spec(student)["trim"], "trim_plan.json")
    return save_candidate(run, student, workdir, "trimmed", bundle)
