"""The wiring every flow shares: a tracked pipeline run, its stages, and the evaluate/report/register tail.

compress and pretrain run the whole chain:
load -> fetch -> finetune -> [trim] -> distill -> prune -> [quantize] -> evaluate -> [export] -> report -> register.
The single-stage flows (flows/stages.py) run one stage on models given by source strings.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from tasks.config import PipelineConfig
from tasks.data import load_data
from tasks.distill import distill
from tasks.evaluate import evaluate
from tasks.export import export, export_targets, with_onnx
from tasks.fetch import fetch_pretrained
from tasks.finetune import finetune
from tasks.prune import prune
from tasks.quantize import quantize
from tasks.register import register
from tasks.report import report
from tasks.stage import ensure_writable, output_root, with_cache
from tasks.tracking import (RunContext, StageRun, check_tracking, default_tracking_uri, git_state, pipeline_run,
                            prefect_context, redact)
from tasks.trim import trim

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
        cached = state.name == "Cached"
        (self.cached if cached else self.executed).append(task_obj.name)
        if cached:
            log.info("[%s] cached: reusing MLflow run %s", task_obj.name, result.get("run_id"))
        self.parent.set_tags({f"stage.{task_obj.name}.run_id": result.get("run_id", ""),
                              f"stage.{task_obj.name}.cached": str(cached).lower()})
        return result

    def fetch(self, data: dict, source: str | None = None) -> dict:
        ref = fetch_pretrained(self.cfg, self.ctx, data, source)
        self.executed.append("fetch_pretrained")
        self.parent.set_tags({"stage.fetch_pretrained.run_id": ref["run_id"]})
        return ref

    def finish(self, data: dict, candidates: dict, register_best: bool) -> dict:
        """Evaluate every candidate, report, optionally register; the flow's return value."""
        candidates = {name: ref for name, ref in candidates.items() if ref}
        rows = self(evaluate, data=data, candidates=candidates)["rows"]
        if self.cfg.export.onnx:
            rows = with_onnx(rows, self(export, data=data, models=export_targets(candidates))["exports"])
        summary = self(report, rows=rows)
        registered = self(register, data=data, rows=rows) if register_best else None
        self.parent.log_metrics({"stages_executed": len(self.executed), "stages_cached": len(self.cached)})
        return {"run_id": self.ctx.parent_run_id, "experiment_id": self.ctx.experiment_id,
                "tracking_uri": redact(self.ctx.tracking_uri), "executed": self.executed, "cached": self.cached,
                "table": summary["table"], "markdown": summary["markdown"], "kd_gain": summary["kd_gain"],
                "registered": registered}


@contextmanager
def tracked_pipeline(cfg: PipelineConfig, flow_name: str):
    """The parent MLflow run (FAILED if anything inside raises) and a runner for the stages under it."""
    tracking_uri = cfg.tracking.uri or default_tracking_uri()
    check_tracking(tracking_uri)
    ensure_writable(output_root(cfg))
    tags = {"shrinkflow.flow": flow_name, "shrinkflow.config_hash": cfg.config_hash(), "seed": str(cfg.seed),
            "source": cfg.source, "tracking_uri": redact(tracking_uri), **git_state(), **prefect_context()}
    config = cfg.model_dump(mode="json")
    if config["tracking"]["uri"]:
        config["tracking"]["uri"] = redact(config["tracking"]["uri"])
    with pipeline_run(tracking_uri, cfg.tracking.experiment, f"{cfg.name}-{flow_name}", config, tags) as (ctx, parent):
        log.info("MLflow run %s (experiment %s) at %s", ctx.parent_run_id, cfg.tracking.experiment,
                 redact(tracking_uri))
        yield StageRunner(cfg, ctx, parent)


def run_pipeline(cfg: PipelineConfig, flow_name: str) -> dict:
    with tracked_pipeline(cfg, flow_name) as run:
        data = run(load_data)
        teacher = run.fetch(data)
        if cfg.finetune.enabled:
            teacher = run(finetune, data=data, base=teacher)
        candidates = {"teacher": teacher}
        student = run(trim, data=data, teacher=teacher) if cfg.trim.enabled else None
        if cfg.distill.enabled:
            students = run(distill, data=data, teacher=teacher, student=student)
            candidates.update(student_kd=students["kd"], student_plain=students.get("baseline"))
            student = students["kd"]
        if cfg.prune.enabled:
            pruned = run(prune, data=data, student=student or teacher, teacher=teacher)
            candidates.update(pruned=pruned.get("structured"), sparse=pruned.get("unstructured"))
            student = pruned.get("structured") or student
        if cfg.quantize.enabled:
            quantized = run(quantize, data=data, model=student or teacher)
            candidates.update({f"quantized_{mode}": quantized.get(mode) for mode in cfg.quantize.modes})
        return run.finish(data, candidates, cfg.register.enabled)
