"""The pipeline both `compress` and `pretrain` run:
load -> fetch -> finetune -> [trim] -> distill -> prune -> evaluate -> report -> register.
"""

from __future__ import annotations

import logging

from tasks.config import PipelineConfig
from tasks.data import load_data
from tasks.distill import distill
from tasks.evaluate import evaluate
from tasks.fetch import fetch_pretrained
from tasks.finetune import finetune
from tasks.prune import prune
from tasks.register import register
from tasks.report import report
from tasks.stage import with_cache
from tasks.trim import trim
from tasks.tracking import RunContext, StageRun, default_tracking_uri, git_state, pipeline_run, prefect_context, redact

log = logging.getLogger("shrinkflow")


class StageRunner:
    """Runs stage tasks with the pipeline's cache location and records which ran and which were cached."""

    def __init__(self, cfg: PipelineConfig, ctx: RunContext, parent: StageRun) -> None:
        self.cfg, self.ctx, self.parent = cfg, ctx, parent
        self.executed: list[str] = []
        self.cached: list[str] = []

    def __call__(self, task_obj, **inputs):
        state = with_cache(task_obj, self.cfg)(self.cfg, self.ctx, **inputs, return_state=True)
        result = state.result()  # raises the task's exception if it failed
        stage = task_obj.name
        if state.name == "Cached":
            self.cached.append(stage)
            log.info("[%s] cached: reusing MLflow run %s", stage, result.get("run_id"))
        else:
            self.executed.append(stage)
        self.parent.set_tags({f"stage.{stage}.run_id": result.get("run_id", ""),
                              f"stage.{stage}.cached": str(state.name == "Cached").lower()})
        return result


def run_pipeline(cfg: PipelineConfig, flow_name: str) -> dict:
    tracking_uri = cfg.tracking.uri or default_tracking_uri()
    tags = {"shrinkflow.flow": flow_name, "shrinkflow.config_hash": cfg.config_hash(), "seed": str(cfg.seed),
            "source": cfg.source, "tracking_uri": redact(tracking_uri), **git_state(), **prefect_context()}
    config = cfg.model_dump(mode="json")
    if config["tracking"]["uri"]:
        config["tracking"]["uri"] = redact(config["tracking"]["uri"])
    with pipeline_run(tracking_uri, cfg.tracking.experiment, f"{cfg.name}-{flow_name}", config, tags) as (ctx, parent):
        log.info("MLflow run %s (experiment %s) at %s", ctx.parent_run_id, cfg.tracking.experiment, redact(tracking_uri))
        run = StageRunner(cfg, ctx, parent)
        data = run(load_data)
        teacher = fetch_pretrained(cfg, ctx, data)
        run.executed.append("fetch_pretrained")
        if cfg.finetune.enabled:
            teacher = run(finetune, data=data, base=teacher)
        candidates = {"teacher": teacher}
        student = run(trim, data=data, teacher=teacher) if cfg.trim.enabled else None
        if cfg.distill.enabled:
            students = run(distill, data=data, teacher=teacher, student=student)
            candidates.update({"student_kd": students["kd"]})
            if "baseline" in students:
                candidates["student_plain"] = students["baseline"]
            student = students["kd"]
        if cfg.prune.enabled:
            pruned = run(prune, data=data, student=student or teacher, teacher=teacher)
            candidates.update({"pruned": pruned.get("structured"), "sparse": pruned.get("unstructured")})
        candidates = {name: ref for name, ref in candidates.items() if ref}
        rows = run(evaluate, data=data, candidates=candidates)["rows"]
        summary = run(report, rows=rows)
        registered = run(register, data=data, rows=rows) if cfg.register.enabled else None
        parent.log_metrics({"stages_executed": len(run.executed), "stages_cached": len(run.cached)})
        return {"run_id": ctx.parent_run_id, "experiment_id": ctx.experiment_id, "tracking_uri": redact(tracking_uri),
                "executed": run.executed, "cached": run.cached, "table": summary["table"],
                "markdown": summary["markdown"], "kd_gain": summary["kd_gain"], "registered": registered}
