"""Each stage as a flow of its own, on models named by sources (file:..., models:/..., torchvision:...).

Every one loads the config's data, fetches its input models, runs the one stage, then evaluates and
reports the models it made beside the ones it was given. Nothing is registered.
"""

from __future__ import annotations

from prefect import flow

from compression.candidates import TEACHER
from flows.chain import link_named
from flows.pipeline import StageRunner, tracked_pipeline
from tasks.config import load_config
from tasks.data import load_data
from tasks.fetch import fetch_pretrained
from tasks.stage import ModelRef


def run_stage(run: StageRunner, stage: str, **inputs) -> list[ModelRef]:
    """The chain's `stage` on `inputs`; offers the models it made, in the chain's candidate order, and returns
    them. Unlike the pipeline it offers finetune's and trim's models too: here they are what the flow is for."""
    link = link_named(stage)
    made = [ref for ref in link.makes(run(link.task, **inputs), run.cfg) if ref is not None]
    run.offer(*made)
    return made


@flow(name="finetune")
def finetune_flow(config: str, overrides: dict | None = None, base: str | None = None) -> dict:
    """Fine-tune `base` (default: the config's source) on the config's data."""
    cfg = load_config(config, overrides)
    with tracked_pipeline(cfg, "finetune") as run:
        data = run(load_data)
        [teacher] = run_stage(run, "finetune", data=data, base=run(fetch_pretrained, data=data, source=base))
        return run.finish(data, teacher, register_best=False)


@flow(name="trim")
def trim_flow(config: str, teacher: str, overrides: dict | None = None) -> dict:
    cfg = load_config(config, overrides)
    with tracked_pipeline(cfg, "trim") as run:
        data = run(load_data)
        ref = run.offer(run(fetch_pretrained, data=data, source=teacher, name=TEACHER))
        [trimmed] = run_stage(run, "trim", data=data, teacher=ref)
        return run.finish(data, trimmed, register_best=False)


@flow(name="distill")
def distill_flow(config: str, teacher: str, student: str | None = None, overrides: dict | None = None) -> dict:
    """Distil `teacher` into `student` (a source), or into the config's distill.student architecture."""
    cfg = load_config(config, overrides)
    with tracked_pipeline(cfg, "distill") as run:
        data = run(load_data)
        teacher_ref = run.offer(run(fetch_pretrained, data=data, source=teacher, name=TEACHER))
        student_ref = run(fetch_pretrained, data=data, source=student, name="student") if student else None
        kd, *_ = run_stage(run, "distill", data=data, teacher=teacher_ref, student=student_ref)
        return run.finish(data, kd, register_best=False)


@flow(name="prune")
def prune_flow(config: str, student: str, teacher: str | None = None, overrides: dict | None = None) -> dict:
    """Prune `student`; with `teacher`, recovery fine-tuning distils from it (prune.kd)."""
    cfg = load_config(config, overrides)
    with tracked_pipeline(cfg, "prune") as run:
        data = run(load_data)
        student_ref = run.offer(run(fetch_pretrained, data=data, source=student, name="unpruned"))
        teacher_ref = run(fetch_pretrained, data=data, source=teacher, name=TEACHER) if teacher else student_ref
        pruned = run_stage(run, "prune", data=data, student=student_ref, teacher=teacher_ref)
        return run.finish(data, pruned[0], register_best=False)  # the structured model, else the unstructured


@flow(name="quantize")
def quantize_flow(config: str, model: str, overrides: dict | None = None) -> dict:
    """int8 copies of `model` (a float model source), per the config's quantize section."""
    cfg = load_config(config, overrides)
    with tracked_pipeline(cfg, "quantize") as run:
        data = run(load_data)
        ref = run.offer(run(fetch_pretrained, data=data, source=model, name="float"))
        run_stage(run, "quantize", data=data, model=ref)
        return run.finish(data, ref, register_best=False)  # int8 models are not exported: the float one is
