"""The chain of stages, in one table: every flow that runs stages runs them from here.

The table has three parts, each a tuple of links run in order: TEACHER makes the data and the reference model,
COMPRESSION makes the candidates from it (a search trial runs this part alone, with the trial's settings), and
EVALUATION measures, compares, exports, reports and registers them.

A link names its stage task, whether the config enables it, which earlier outputs feed it (its keyword inputs,
hashed into its cache key: a link must go on passing exactly what it passes), what it leaves for the links after
it, and the models it makes, in candidate order. Adding a stage is one compression module, one task and one link
in the part where it belongs. The pipeline, a search's trial, the single-stage flows, the stages a run plans
and the architecture refusals checked before any work are all read from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from compression.comparison import EvaluationRow, with_fidelity
from compression.selection import export_targets
from tasks.config import PipelineConfig
from tasks.data import load_data
from tasks.distill import distill
from tasks.evaluate import evaluate
from tasks.export import export, with_onnx
from tasks.fetch import fetch_pretrained
from tasks.fidelity import fidelity
from tasks.finetune import finetune
from tasks.outputs import Summary
from tasks.prune import prune
from tasks.quantize import quantize
from tasks.register import register
from tasks.report import report
from tasks.stage import ModelRef
from tasks.trim import trim


@dataclass(frozen=True)
class Made:
    """What the model-making links (TEACHER, COMPRESSION) have made so far, as the next links read it."""

    data: dict | None = None
    teacher: ModelRef | None = None
    student: ModelRef | None = None  # the float model the next compression starts from; None until one is made
    int8: ModelRef | None = None  # the static int8 copy of the student: what a search trial measures

    @property
    def latest(self) -> ModelRef | None:
        """The last float model: what the next compression compresses, and the float model export exports."""
        return self.student or self.teacher


@dataclass(frozen=True)
class Evaluation:
    """What the EVALUATION links read and make: the rows of the comparison table grow a stage at a time."""

    data: dict
    candidates: dict[str, ModelRef]  # by name, in the order they were offered: the first is the reference
    final: ModelRef | None  # the last float model, exported beside the reference
    register_best: bool  # whether this flow registers at all (the single-stage flows do not)
    choose: Callable[[list[dict]], dict | None] | None = None  # a flow's own pick; None from it: register nothing
    rows: list[EvaluationRow] = field(default_factory=list)
    test_logits: dict | None = None  # the evaluate stage's file of every candidate's test logits
    summary: Summary | None = None
    registered: dict | None = None


def _always(cfg: PipelineConfig) -> bool:
    return True


def _nothing(*_) -> tuple:
    return ()


@dataclass(frozen=True)
class Link:
    """One stage of the chain. `feeds` returns the task's keyword inputs, or None when there is nothing to
    run it on this time (a runtime decision; the config's is `enabled`)."""

    task: Any  # a Prefect task made by tasks.stage.stage_task: called as task(cfg, ctx, **inputs)
    enabled: Callable[[PipelineConfig], bool]
    feeds: Callable[[Any], dict | None]
    keeps: Callable[[Any, dict], Any]  # the state after it, from the state before and its result
    makes: Callable[[dict, PipelineConfig], tuple] = _nothing  # its models (None: not made), in candidate order
    candidates: bool = False  # whether the chain offers what it makes for evaluation and registration
    refusable: Callable[[PipelineConfig], tuple[str, ...]] = _nothing  # what compression.models may refuse

    @property
    def name(self) -> str:
        return self.task.name


def _export_inputs(state: Evaluation) -> dict:
    floats, int8 = export_targets(state.candidates, state.final)
    return {"data": state.data, "models": floats, "int8": int8}


def _registration_inputs(state: Evaluation) -> dict | None:
    """None when nothing is to be registered: the flow registers nothing, or its `choose` picked nothing."""
    if not state.register_best:
        return None
    choice = state.choose(state.rows) if state.choose else None
    if state.choose is not None and choice is None:
        return None
    return {"data": state.data, "rows": state.rows, "choice": choice}


TEACHER: tuple[Link, ...] = (
    Link(load_data, _always, feeds=lambda m: {}, keeps=lambda m, out: replace(m, data=out)),
    Link(fetch_pretrained, _always, feeds=lambda m: {"data": m.data}, keeps=lambda m, out: replace(m, teacher=out)),
    # Its model is the teacher: offered as the reference once the teacher is final, not as a candidate here.
    Link(finetune, lambda cfg: cfg.finetune.enabled, feeds=lambda m: {"data": m.data, "base": m.teacher},
         keeps=lambda m, out: replace(m, teacher=out), makes=lambda out, cfg: (out,)),
)

COMPRESSION: tuple[Link, ...] = (
    # The trimmed model is where distillation starts, not a candidate of its own.
    Link(trim, lambda cfg: cfg.trim.enabled, feeds=lambda m: {"data": m.data, "teacher": m.teacher},
         keeps=lambda m, out: replace(m, student=out), makes=lambda out, cfg: (out,), refusable=lambda cfg: ("trim",)),
    Link(distill, lambda cfg: cfg.distill.enabled,
         feeds=lambda m: {"data": m.data, "teacher": m.teacher, "student": m.student},
         keeps=lambda m, out: replace(m, student=out.kd), makes=lambda out, cfg: (out.kd, out.baseline),
         candidates=True),
    Link(prune, lambda cfg: cfg.prune.enabled,
         feeds=lambda m: {"data": m.data, "student": m.latest, "teacher": m.teacher},
         keeps=lambda m, out: replace(m, student=out.next_model or m.student),
         makes=lambda out, cfg: (out.structured, out.unstructured), candidates=True,
         refusable=lambda cfg: ("prune",) if cfg.prune.method in ("structured", "both") else ()),
    Link(quantize, lambda cfg: cfg.quantize.enabled, feeds=lambda m: {"data": m.data, "model": m.latest},
         keeps=lambda m, out: replace(m, int8=out.static),
         makes=lambda out, cfg: tuple(out.of(mode) for mode in cfg.quantize.modes), candidates=True,
         refusable=lambda cfg: tuple(f"quantize-{mode}" for mode in cfg.quantize.modes)),
)

EVALUATION: tuple[Link, ...] = (
    Link(evaluate, _always, feeds=lambda e: {"data": e.data, "candidates": e.candidates},
         keeps=lambda e, out: replace(e, rows=out.rows, test_logits=out.test_logits)),
    Link(fidelity, lambda cfg: cfg.fidelity.enabled,
         feeds=lambda e: {"data": e.data, "candidates": e.candidates, "test_logits": e.test_logits},
         keeps=lambda e, out: replace(e, rows=with_fidelity(e.rows, out.figures, out.sentences, out.note))),
    Link(export, lambda cfg: cfg.export.onnx, feeds=_export_inputs,
         keeps=lambda e, out: replace(e, rows=with_onnx(e.rows, out.exports)), refusable=lambda cfg: ("export",)),
    Link(report, _always, feeds=lambda e: {"rows": e.rows}, keeps=lambda e, out: replace(e, summary=out)),
    Link(register, lambda cfg: cfg.register.enabled, feeds=_registration_inputs,
         keeps=lambda e, out: replace(e, registered=out)),
)


def chain_links() -> tuple[Link, ...]:
    """The whole chain, read when called (not when imported), so that a table changed at run time counts."""
    return TEACHER + COMPRESSION + EVALUATION


def link_named(name: str) -> Link:
    for link in chain_links():
        if link.name == name:
            return link
    raise KeyError(f"no stage {name!r} in the chain")


def planned_stages(cfg: PipelineConfig) -> list[str]:
    """The stages a pipeline of `cfg` runs, in order (register: when the config enables it)."""
    return [link.name for link in chain_links() if link.enabled(cfg)]


def refusable_stages(cfg: PipelineConfig) -> list[str]:
    """The stages a run of `cfg` takes the model through that an architecture's family may refuse, as
    compression.models names them (trim, prune, quantize-static, ...): the preflight refuses them before any
    work, instead of the run failing at the stage."""
    return [step for link in chain_links() if link.enabled(cfg) for step in link.refusable(cfg)]


def run_links(run, links: Iterable[Link], state):
    """Run the links the config enables, in order, each fed from the state the ones before it left; offer
    the candidates each makes. `run` is a flows.pipeline.StageRunner (its config, its tasks, its candidates)."""
    for link in links:
        if not link.enabled(run.cfg):
            continue
        inputs = link.feeds(state)
        if inputs is None:
            continue
        out = run(link.task, **inputs)
        if link.candidates:
            run.offer(*link.makes(out, run.cfg))
        state = link.keeps(state, out)
    return state


def prepare_teacher(run) -> Made:
    """The data and the teacher, offered as the first candidate: the reference every other one is compared with."""
    made = run_links(run, TEACHER, Made())
    run.offer(made.teacher)
    return made


def compress_teacher(run, made: Made) -> Made:
    """The compression stages from `made`'s teacher (a search trial runs these with its own settings)."""
    return run_links(run, COMPRESSION, made)


def evaluate_candidates(run, evaluation: Evaluation) -> Evaluation:
    return run_links(run, EVALUATION, evaluation)
