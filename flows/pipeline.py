"""The wiring every flow shares: a tracked pipeline run and a runner for its stages.

compress and pretrain run the whole chain of stages, as flows/chain.py (the one place that knows it) lists it.
The single-stage flows (flows/stages.py) run one stage of it on models given by source strings.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from flows import chain
from tasks.config import PipelineConfig
from tasks.preflight import open_pipeline
from tasks.stage import ModelRef, run_id_of
from tasks.tracking import RunContext, StageRun
from tasks.tracking_uri import redact

log = logging.getLogger("shrinkflow")


class StageRunner:
    """Runs stage tasks under the pipeline run, records which ran and which were cached, and collects the
    candidate models (by the name each one carries) that the evaluation stages evaluate."""

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
            log.info("[%s] cached: reusing MLflow run %s", task_obj.name, run_id_of(result))
        self.parent.set_tags({f"stage.{task_obj.name}.run_id": run_id_of(result),
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
        candidate) and the `final` float model, report, optionally register (the chain's EVALUATION links); the
        flow's return value, with the evaluation rows. `choose(rows)` may name the candidate to register and its
        alias (else register's own policy picks; None: nothing is registered)."""
        todo = chain.Evaluation(data, self.candidates, final, register_best, choose=choose)
        done = chain.evaluate_candidates(self, todo)
        self.parent.log_metrics({"stages_executed": len(self.executed), "stages_cached": len(self.cached)})
        summary = done.summary
        return {"run_id": self.ctx.parent_run_id, "experiment_id": self.ctx.experiment_id,
                "tracking_uri": redact(self.ctx.tracking_uri), "executed": self.executed, "cached": self.cached,
                "table": summary.table, "markdown": summary.markdown, "kd_gain": summary.kd_gain,
                "registered": done.registered, "rows": done.rows}


@contextmanager
def tracked_pipeline(cfg: PipelineConfig, flow_name: str):
    """The parent MLflow run (FAILED if anything inside raises) and a runner for the stages under it. Whatever
    the flow, the checks before it refuse a stage the full chain would take the architecture through."""
    with open_pipeline(cfg, flow_name, chain.refusable_stages(cfg)) as (ctx, parent):
        yield StageRunner(cfg, ctx, parent)


def run_pipeline(cfg: PipelineConfig, flow_name: str) -> dict:
    """The whole chain: the teacher, the candidates compressed from it, their evaluation."""
    with tracked_pipeline(cfg, flow_name) as run:
        made = chain.compress_teacher(run, chain.prepare_teacher(run))
        return run.finish(made.data, made.latest, cfg.register.enabled)
