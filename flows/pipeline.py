"""The wiring every flow shares: a tracked pipeline run, its stages, and the evaluate/report/register tail.

compress and pretrain run the whole chain:
load -> fetch -> finetune -> [trim] -> distill -> prune -> [quantize] -> evaluate -> [fidelity] -> [export] -> report
-> register.
The single-stage flows (flows/stages.py) run one stage on models given by source strings.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from compression.comparison import with_fidelity
from tasks.config import PipelineConfig
from tasks.data import load_data
from tasks.distill import distill
from tasks.evaluate import evaluate
from tasks.export import INT8_CANDIDATE, export, with_onnx
from tasks.fetch import fetch_pretrained
from tasks.fidelity import fidelity
from tasks.finetune import finetune
from tasks.preflight import open_pipeline
from tasks.prune import prune
from tasks.quantize import quantize
from tasks.register import register
from tasks.report import report
from tasks.stage import ModelRef
from tasks.tracking import RunContext, StageRun
from tasks.tracking_uri import redact
from tasks.trim import trim

log = logging.getLogger("shrinkflow")


class StageRunner:
    """Runs stage tasks under the pipeline run, records which ran and which were cached, and collects the
    candidate models (by the name each one carries) that the tail evaluates."""

    def __init__(self, cfg: PipelineConfig, ctx: RunContext, parent: StageRun) -> None:
        self.cfg, self.ctx, self.parent = cfg, ctx, parent
        self.executed: list[str] = []
        self.cached: list[str] = []
        self.candidates: dict[str, ModelRef] = {}

    def __call__(self, task_obj, **inputs):
        state = task_obj(self.cfg, self.ctx, **inputs, return_state=True)
        result = state.result()  # raises the task's exception if it failed
        cached = state.name == "Cached"
        (self.cached if cached else self.executed).append(task_obj.name)
        if cached:
            log.info("[%s] cached: reusing MLflow run %s", task_obj.name, result.get("run_id"))
        self.parent.set_tags({f"stage.{task_obj.name}.run_id": result.get("run_id", ""),
                              f"stage.{task_obj.name}.cached": str(cached).lower()})
        return result

    def offer(self, *refs: ModelRef | None) -> ModelRef | None:
        """Make models candidates for evaluation and registration; returns the first one given."""
        for ref in refs:
            if ref is None:
                continue
            if ref["name"] in self.candidates:
                raise RuntimeError(f"two candidates named {ref['name']!r}")
            self.candidates[ref["name"]] = ref
        return refs[0] if refs else None

    def finish(self, data: dict, final: ModelRef, register_best: bool, choose=None) -> dict:
        """Evaluate every candidate, compare each with the reference (fidelity), export the reference (the first
        candidate) and the `final` float model, report, optionally register; the flow's return value, with
        the evaluation rows. `choose(rows)` may name the candidate to register and its alias (else register's
        own policy picks; None: nothing is registered)."""
        candidates = self.candidates
        rows = self(evaluate, data=data, candidates=candidates)["rows"]
        if self.cfg.fidelity.enabled:
            rows = with_fidelity(rows, self(fidelity, data=data, candidates=candidates))
        if self.cfg.export.onnx:
            targets = {ref["name"]: ref for ref in (next(iter(candidates.values())), final)}
            int8 = {name: ref for name, ref in candidates.items()
                    if name == INT8_CANDIDATE and ref.get("source_sha256") == final["sha256"]}
            rows = with_onnx(rows, self(export, data=data, models=targets, int8=int8)["exports"])
        summary = self(report, rows=rows)
        registered = None
        if register_best:
            choice = choose(rows) if choose else None
            if choose is None or choice is not None:
                registered = self(register, data=data, rows=rows, choice=choice)
        self.parent.log_metrics({"stages_executed": len(self.executed), "stages_cached": len(self.cached)})
        return {"run_id": self.ctx.parent_run_id, "experiment_id": self.ctx.experiment_id,
                "tracking_uri": redact(self.ctx.tracking_uri), "executed": self.executed, "cached": self.cached,
                "table": summary["table"], "markdown": summary["markdown"], "kd_gain": summary["kd_gain"],
                "registered": registered, "rows": rows}


@contextmanager
def tracked_pipeline(cfg: PipelineConfig, flow_name: str):
    """The parent MLflow run (FAILED if anything inside raises) and a runner for the stages under it."""
    with open_pipeline(cfg, flow_name) as (ctx, parent):
        yield StageRunner(cfg, ctx, parent)


def run_pipeline(cfg: PipelineConfig, flow_name: str) -> dict:
    with tracked_pipeline(cfg, flow_name) as run:
        data = run(load_data)
        teacher = run(fetch_pretrained, data=data)
        if cfg.finetune.enabled:
            teacher = run(finetune, data=data, base=teacher)
        run.offer(teacher)
        student = run(trim, data=data, teacher=teacher) if cfg.trim.enabled else None
        if cfg.distill.enabled:
            students = run(distill, data=data, teacher=teacher, student=student)
            student = run.offer(students["kd"], students.get("baseline"))
        if cfg.prune.enabled:
            pruned = run(prune, data=data, student=student or teacher, teacher=teacher)
            run.offer(pruned.get("structured"), pruned.get("unstructured"))
            student = pruned.get("structured") or student
        if cfg.quantize.enabled:
            quantized = run(quantize, data=data, model=student or teacher)
            run.offer(*(quantized.get(mode) for mode in cfg.quantize.modes))
        return run.finish(data, student or teacher, cfg.register.enabled)
