"""Search tasks: the plan (each budget target against the teacher, widths that meet it), the Optuna study, one
trial's MLflow run and measurements, and the search report on the pipeline run.

The study lives in `<output_dir>/search/<key>/study.db` (SQLite), next to the stage outputs the trials
write: a search that was killed finds its finished and pruned trials there. It holds one Optuna study per
budget target (named by its label, "macs-10pct"): TPE's split into good and bad trials and the pruner's rungs
compare accuracies, which differ between budgets more than between settings. The key leaves the budgets
out, so a search with one more target finds the others' trials done and runs only the new target's.

The flow process asks and tells the studies; with a pruner, each trial's worker also opens its target's
study, to report the trial's val accuracy per epoch and ask the pruner whether to go on (`trial_pruning`):
Optuna's own pruners read every trial's reports from the storage, which is how Optuna spreads one study
over processes.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import random
import warnings
from contextlib import contextmanager
from pathlib import Path

import optuna
from prefect.artifacts import create_table_artifact

from compression import CompressionError, first_line
from compression import search as policy
from compression.errors import TrialPruned
from compression.measure import count_macs, count_nonzero_params, cpu_latency, evaluate_classifier, file_size
from compression.models import example_input, input_channels
from tasks import plots
from tasks.config import PipelineConfig, apply_overrides, config_from_dict
from tasks.data import get_bundle
from tasks.stage import ModelRef, output_root, stage_task
from tasks.tracking import RunContext, StageRun, stage_run
from tasks.training import EPOCH_OBSERVER, load

log = logging.getLogger("shrinkflow")

# Budgets every trial meets by construction (the prune ratio is derived from them); latency is measured.
CONSTRUCTIVE = policy.STRUCTURAL_METRICS


def check_constructible(cfg: PipelineConfig) -> None:
    """Refuse, before any work, stage settings under which the budget cannot be met by construction."""
    problem = policy.construction_refusal(cfg.search.budget.metric, prune_enabled=cfg.prune.enabled,
                                          prune_method=cfg.prune.method, global_pruning=cfg.prune.global_pruning,
                                          student=cfg.distill.student)
    if problem:
        raise CompressionError(problem)


def space_of(cfg: PipelineConfig) -> policy.Space:
    space = {}
    for key, knob in cfg.search.space.items():
        space[key] = policy.Choice(tuple(knob.choices)) if knob.choices is not None else policy.FloatRange(
            knob.low, knob.high, knob.log)
    policy.validate_space(space)
    return space


def sampled_space(cfg: PipelineConfig) -> policy.Space:
    """The knobs the sampler picks: all of them, except the prune ratio under a budget it is derived from."""
    space = space_of(cfg)
    if cfg.search.budget.metric in CONSTRUCTIVE:
        space.pop("prune.ratio", None)
    return space


def _choices(cfg: PipelineConfig, key: str, default) -> list:
    knob = cfg.search.space.get(key)
    return list(knob.choices) if knob is not None and knob.choices is not None else [default]


def width_key(keep, quantize: bool) -> str:
    return json.dumps([keep, bool(quantize)])


def _depths(cfg: PipelineConfig) -> list:
    return _choices(cfg, "trim.keep_per_stage", cfg.trim.keep_per_stage if cfg.trim.enabled else None)


def _ratio_bounds(cfg: PipelineConfig, model) -> tuple[float, float]:
    """The prune ratios a trial may get: the space's range, and never past the ratio where Torch-Pruning's
    round_to makes costs rise again (it keeps a layer whole once its target falls under round_to channels)."""
    knob = cfg.search.space.get("prune.ratio")
    low, high = (knob.low, knob.high) if knob is not None and knob.low is not None else (0.0, 0.95)
    return low, min(high, policy.max_monotone_ratio(model, cfg.prune.round_to))


def _widths(cfg: PipelineConfig, model, limit: float, meta: dict,
            bounds: tuple[float, float]) -> dict[str, float | None]:
    """For each depth and int8 choice, the least pruning that brings the model within the budget. int8 changes
    a model's file size, not its MACs or params: under those budgets both int8 choices of a depth share one
    bisection (each costs several trims and prunes of the teacher)."""
    metric = cfg.search.budget.metric  # check_constructible(cfg) ran before any work
    widths, solved = {}, {}
    for keep in _depths(cfg):
        for quantize in _choices(cfg, "quantize.enabled", cfg.quantize.enabled):
            int8_file = bool(quantize) and metric == "size_bytes"
            if (keep_key := width_key(keep, int8_file)) not in solved:
                solved[keep_key] = _width(cfg, model, limit, meta, keep, int8_file, bounds)
            widths[width_key(keep, quantize)] = solved[keep_key]
    return widths


def _width(cfg: PipelineConfig, model, limit: float, meta: dict, keep, int8_file: bool,
           bounds: tuple[float, float]) -> float | None:
    """The least pruning that brings depth `keep` within the budget (None: the model cannot take that depth)."""
    settings = cfg.prune

    def cost(ratio):
        return policy.structural_cost(model, cfg.search.budget.metric, ratio, keep_per_stage=keep,
                                      trim_strategy=cfg.trim.strategy, iterative_steps=settings.iterative_steps,
                                      round_to=settings.round_to, quantize=int8_file, backend=cfg.quantize.backend,
                                      meta=meta)
    try:
        return policy.smallest_ratio_within(cost, limit, *bounds)
    except CompressionError as exc:  # a depth this model cannot take: its trials fail, the rest go on
        log.warning("[plan_search] keep_per_stage=%s cannot be built: %s", keep, exc)
        return None


def _teacher_costs(model, teacher: ModelRef, size: int, threads: int) -> dict:
    example = example_input(model, 1, size=size)
    speed = cpu_latency(model, example, threads=threads, repeats=20, min_seconds=0.05)
    return {"macs": count_macs(model, example), "params": count_nonzero_params(model)[0],
            "size_bytes": file_size(teacher["path"]), "latency_ms": speed["latency_p50_ms"]}


def _target(cfg: PipelineConfig, model, costs: dict, value, meta: dict, bounds: tuple[float, float] | None) -> dict:
    """One budget target: its label, its limit in absolute terms and the width of every depth choice; stops,
    before any training, a target the space cannot reach."""
    metric = cfg.search.budget.metric
    limit = policy.resolve_limit(value, costs[metric], metric)
    widths = _widths(cfg, model, limit, meta, bounds) if metric in CONSTRUCTIVE else {}
    if metric in CONSTRUCTIVE and not any(r is not None for r in widths.values()):
        floor = policy.smallest_reachable(model, metric, space_of(cfg),
                                          iterative_steps=cfg.prune.iterative_steps, round_to=cfg.prune.round_to)
        raise CompressionError(f"search.budget.max: {metric} <= {limit:,.0f} cannot be reached; the smallest "
                               f"this search space reaches is {floor:,.0f} ({100 * floor / costs[metric]:.1f}% "
                               "of the teacher)")
    return {"label": policy.target_label(metric, value), "max": value, "limit": limit, "widths": widths}


@stage_task("plan_search", sections=("search", "trim", "prune", "quantize", "distill", "evaluate"))
def plan_search(cfg: PipelineConfig, ctx, run, workdir, data: dict, teacher: ModelRef) -> dict:
    """Every budget target in absolute terms with the width of every depth choice that meets it, and the
    teacher's costs and val accuracy (the reference for the accuracy drop)."""
    bundle = get_bundle(cfg, data)
    model = load(teacher)
    budget = cfg.search.budget
    costs = _teacher_costs(model, teacher, bundle.input_size, cfg.evaluate.threads)
    val = evaluate_classifier(model, bundle.batches("val", cfg.data.eval_batch_size, channels=input_channels(model)))
    meta = bundle.model_meta()  # as save_candidate
    bounds = _ratio_bounds(cfg, model) if budget.metric in CONSTRUCTIVE else None  # prune ratios trials may get
    targets = [_target(cfg, model, costs, value, meta, bounds) for value in budget.targets()]
    limits = ({"budget_limit": targets[0]["limit"]} if len(targets) == 1
              else {f"budget_limit.{t['label']}": t["limit"] for t in targets})
    run.log_metrics({f"teacher.{k}": v for k, v in costs.items()} | limits | {"teacher.val_accuracy": val["accuracy"]})
    run.log_dict({t["label"]: t["widths"] for t in targets}, "widths.json")
    return {"metric": budget.metric, "teacher": {**costs, "val_accuracy": val["accuracy"]}, "targets": targets,
            "ratio_bounds": list(bounds) if bounds else None}


def for_target(plan: dict, label: str) -> dict:
    """The plan as one target's trials read it: the metric and the teacher, that target's limit and widths,
    and whether trial names must say the target (when the search has several)."""
    target = next(t for t in plan["targets"] if t["label"] == label)
    return {"metric": plan["metric"], "teacher": plan["teacher"], "target": label, "limit": target["limit"],
            "widths": target["widths"], "ratio_bounds": plan.get("ratio_bounds"), "several": len(plan["targets"]) > 1}


def target_views(plan: dict) -> list[dict]:
    return [for_target(plan, t["label"]) for t in plan["targets"]]


def trial_name(view: dict, number: int) -> str:
    """A trial's name as a candidate and in MLflow: trial-3, or trial-macs-10pct-3 in a search of several
    targets (each target's study numbers its trials from 0)."""
    return f"trial-{view['target']}-{number}" if view["several"] else f"trial-{number}"


def trial_overrides(cfg: PipelineConfig, settings: dict, plan: dict, full: bool, recipe: bool = False) -> dict:
    """The config changes that make a trial: its settings, the width its budget allows, its fidelity. The
    recipe's trial keeps the config's own prune ratio where that meets the budget (compression.search.
    recipe_ratio), and its re-training at full epochs the config's own distillation (its baseline student
    too): then it is the hand-set recipe itself, stage for stage, and comes from the cache where the recipe
    ran before (`make demo`, then the search)."""
    overrides = dict(settings)
    keep = settings.get("trim.keep_per_stage", cfg.trim.keep_per_stage if cfg.trim.enabled else None)
    quantize = settings.get("quantize.enabled", cfg.quantize.enabled)
    # A trial always distils (its student is the KD student whose temperature and alpha the search tunes),
    # and measures the static int8 model only; it exports and registers nothing.
    overrides.update({"trim.enabled": keep is not None, "distill.enabled": True, "quantize.modes": ["static"],
                      "export.onnx": False, "register.enabled": False,
                      "distill.baseline": cfg.distill.baseline and recipe and full})
    if keep is not None:
        overrides["trim.keep_per_stage"] = keep
    if plan["widths"]:
        ratio = plan["widths"].get(width_key(keep, quantize))
        if ratio is None:
            raise CompressionError(f"no prune ratio brings keep_per_stage={keep} within the budget")
        if recipe and plan.get("ratio_bounds"):  # a plan cached before it recorded them: the width, as before
            ratio = policy.recipe_ratio(ratio, cfg.prune.ratio if cfg.prune.enabled else None,
                                        plan["ratio_bounds"][1])
        overrides.update({"prune.enabled": ratio > 0, "prune.ratio": max(ratio, 1e-3)})
    if not full:
        overrides.update({"distill.train.epochs": cfg.search.trial_epochs,
                          "prune.train.epochs": min(cfg.search.trial_epochs, cfg.prune.train.epochs)})
    return overrides


def recipe_settings(cfg: PipelineConfig) -> dict:
    """The config's own value of every knob of the space (trim.keep_per_stage: None when trimming is off, as
    the trials read it)."""
    values = {}
    for key in cfg.search.space:
        if key == "trim.keep_per_stage":
            values[key] = cfg.trim.keep_per_stage if cfg.trim.enabled else None
        else:
            values[key] = functools.reduce(getattr, key.split("."), cfg)
    return values


def trial_config(cfg: PipelineConfig, overrides: dict) -> PipelineConfig:
    return config_from_dict(apply_overrides(cfg.model_dump(mode="json"), dict(overrides)), "search trial")


@contextmanager
def trial_run(ctx: RunContext, study: str, view: dict, number: int, settings: dict, full: bool,
              enqueued: str | None = None):
    """The trial's MLflow run under the search's pipeline run, tagged with its study (a search resumed after a
    stop lists the trials of the earlier one by it), its budget target and, for a trial the search enqueued
    itself, with why (`search.enqueued`: recipe, or previous-best); FAILED with the error as a tag if it raises."""
    with stage_run(ctx, "trial-full" if full else "trial") as run:
        run.set_tags({"shrinkflow.kind": "trial", "shrinkflow.study": study, "shrinkflow.trial": str(number),
                      "search.target": view["target"],
                      "mlflow.runName": f"{trial_name(view, number)}{'-full' if full else ''}",
                      **({"search.enqueued": enqueued} if enqueued else {})})
        run.log_params({"trial": number, "full_fidelity": full, **settings})
        try:
            yield RunContext(ctx.tracking_uri, ctx.experiment_id, run.run_id), run
        except TrialPruned:  # not an error: the run ends KILLED, tagged search.state PRUNED (tasks/tracking.py)
            raise
        except Exception as exc:
            run.set_tags({"error": f"{type(exc).__name__}: {first_line(exc)}"[:500]})
            raise


# Successive halving's rate: at each rung about a third of the trials that reach it go on. Rungs start at a
# trial's first epoch and are reduction_factor times apart (epochs 1, 3, 9, ...).
REDUCTION_FACTOR = 3


def make_pruner(cfg: PipelineConfig) -> optuna.pruners.BasePruner:
    """Optuna's pruner `search.pruner` names, on the trials' epochs (compression.search.trial_step). The
    resources are fixed rather than Optuna's "auto", which waits for a first completed trial before it
    prunes anything: a small search would run most of its trials to the end."""
    if cfg.search.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=REDUCTION_FACTOR)
    if cfg.search.pruner == "hyperband":  # its brackets are laid out over the longest trial's epochs
        length = _trial_length(cfg.search.trial_epochs, cfg.prune, min(cfg.search.trial_epochs, cfg.prune.train.epochs))
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(length, 2),
                                              reduction_factor=REDUCTION_FACTOR)
    return optuna.pruners.NopPruner()


def _trial_length(distill_epochs: int, prune, recovery_epochs: int) -> int:
    return policy.trial_length(distill_epochs, prune.iterative_steps if prune.enabled else 0, recovery_epochs)


class _EpochReporter:
    """An EPOCH_OBSERVER in a trial's worker: the val accuracy of each epoch reported to the study at the
    trial's step, and TrialPruned raised when the pruner says the trial is behind. Never at the trial's last
    epoch (stopping then saves nothing and throws its result away), nor for a trial that is not `prunable`
    (the recipe's: it reports, so the others are measured against it, and always runs to its end, so the
    search keeps its promise to match it). The study is opened at the first epoch (a trial whose stages all
    come from the cache trains nothing); one that cannot be reached leaves the trial to run to its end, with
    a warning (the pruner saves time, a trial does not need it)."""

    def __init__(self, cfg: PipelineConfig, trial_cfg: PipelineConfig, path: Path, name: str, number: int,
                 prunable: bool) -> None:
        self.cfg, self.path, self.name, self.number, self.prunable, self.trial = cfg, path, name, number, prunable, None
        self.storage: optuna.storages.RDBStorage | None = None
        self.distill, self.recovery = trial_cfg.distill.train.epochs, trial_cfg.prune.train.epochs
        self.last = _trial_length(self.distill, trial_cfg.prune, self.recovery)

    def _open(self) -> optuna.trial.Trial:
        self.storage = storage = study_storage(self.path)
        study = optuna.load_study(study_name=self.name, storage=storage, pruner=make_pruner(self.cfg),
                                  sampler=optuna.samplers.RandomSampler())  # the flow samples; this only reports
        study_id = storage.get_study_id_from_name(self.name)
        return optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, self.number))

    def __call__(self, stage: str, part: int, row: dict) -> None:
        step = policy.trial_step(stage, part, row["epoch"], self.distill, self.recovery)
        value = row.get("val_accuracy")
        if step is None or value is None or self.trial is False:
            return
        try:
            if self.trial is None:
                self.trial = self._open()
            self.trial.report(float(value), step)
            # Asked for the recipe's trial too: the pruner records its value at each rung it reaches, the bar
            # the others are held to; only the answer is ignored.
            stop = step < self.last and self.trial.should_prune() and self.prunable
        except Exception as exc:  # noqa: BLE001 - any storage error: the trial goes on, unpruned
            log.warning("[search] trial %d cannot report to its study, it runs to its end: %s", self.number,
                        first_line(exc))
            self.trial = False
            return
        if stop:
            raise TrialPruned(step, float(value))

    def close(self) -> None:
        """The study's connections closed: a Dask worker outlives its trials."""
        if self.storage is not None:
            self.storage.engine.dispose()


@contextmanager
def trial_pruning(cfg: PipelineConfig, trial_cfg: PipelineConfig, teacher: ModelRef, plan: dict, number: int,
                  full: bool, enqueued: str | None):
    """Around a trial's stages in its worker: its epochs reported to the study and the trial stopped when
    the pruner says so, unless it is the recipe's (nothing with `search.pruner: none`, nor for a re-training
    at full epochs, which is no trial of the study)."""
    if full or cfg.search.pruner == "none":
        yield
        return
    reporter = _EpochReporter(cfg, trial_cfg, study_path(cfg, teacher), plan["target"], number,
                              prunable=enqueued != policy.RECIPE)
    token = EPOCH_OBSERVER.set(reporter)
    try:
        yield
    finally:
        EPOCH_OBSERVER.reset(token)
        reporter.close()


def measure_trial(cfg: PipelineConfig, run: StageRun, data: dict, number: int, settings: dict,
                  final: ModelRef) -> dict:
    """Val accuracy and the budget metrics of a trial's final model (no timing: trials share the cores)."""
    bundle = get_bundle(cfg, data)
    model = load(final)
    accuracy = evaluate_classifier(model, bundle.batches("val", cfg.data.eval_batch_size,
                                                         channels=input_channels(model)))["accuracy"]
    example = example_input(model, 1, size=bundle.input_size)
    metrics = {"accuracy": accuracy, "macs": count_macs(model, example),
               "params": count_nonzero_params(model)[0], "size_bytes": file_size(final["path"])}
    run.log_metrics(metrics)
    run.log_artifact(final["path"], "model")
    return {"number": number, "state": "COMPLETE", "settings": settings, **metrics, "latency_ms": None,
            "run_id": run.run_id, "model": dict(final)}


def study_key(cfg: PipelineConfig, teacher: ModelRef) -> str:
    """One study file per teacher file, data, seed, budget metric, space, fidelity and stage settings; the
    budget targets are its studies (their names), so that adding a target reuses the others' trials."""
    settings = cfg.stage_dict("data", "trim", "distill", "prune", "quantize", "search")
    settings["search"]["budget"].pop("max")
    identity = {"teacher": teacher["sha256"], "seed": cfg.seed, **settings}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]


def study_path(cfg: PipelineConfig, teacher: ModelRef) -> Path:
    return output_root(cfg) / "search" / study_key(cfg, teacher) / "study.db"


def study_storage(path: Path) -> optuna.storages.RDBStorage:
    """The study's SQLite file, as the flow and the trials' workers open it: writers wait for each other's
    short transactions (each trial's report per epoch, the flow's ask and tell) rather than fail at once."""
    return optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 60}})


def _sampler(cfg: PipelineConfig, seed: int) -> optuna.samplers.BaseSampler:
    if cfg.search.sampler == "grid":  # the grid's points are queued (see _queue_grid) and asked first
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():  # multivariate TPE is marked experimental in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=max(2, min(10, cfg.search.trials // 3)))


def _queue_grid(study: optuna.Study, cfg: PipelineConfig) -> None:
    """Every point of the grid, queued once. (Optuna's GridSampler stops the study when the grid is done,
    which only works inside study.optimize, not with ask and tell.)"""
    axes = policy.grid_space(sampled_space(cfg), cfg.search.grid_points)
    points = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    random.Random(cfg.search.seed if cfg.search.seed is not None else cfg.seed).shuffle(points)
    for point in points:
        study.enqueue_trial(point)


def _enqueue_recipe(study: optuna.Study, cfg: PipelineConfig) -> None:
    """The config's own settings, clipped to the space, as the first trial: the search then knows how the
    hand-set recipe does at its fidelity, and its pick can only match or beat it. (Under a structural budget
    the prune ratio is not a knob: the recipe's trial keeps the config's own where it meets the budget, see
    trial_overrides.)"""
    space = sampled_space(cfg)
    point, notes = policy.recipe_point(space, recipe_settings(cfg))
    for key, note in notes.items():
        log.info("[search] the recipe's %s: %s", key, note)
    if not point:
        log.info("[search] no setting of the config is a point of the search space: no recipe trial")
        return
    study.enqueue_trial(point, user_attrs={"enqueued": policy.RECIPE})


def _earlier_trials(cfg: PipelineConfig, teacher: ModelRef, study_name: str) -> list[dict]:
    """The completed trials of every other study on the same teacher file in this output root (another space,
    fidelity, stage settings or budget: another study file; another target: another study in the same
    file), each with its settings, accuracy, feasibility under its own budget and where it comes from."""
    own = study_path(cfg, teacher)
    trials = []
    for path in sorted((output_root(cfg) / "search").glob("*/study.db")):
        try:
            storage = study_storage(path)
        except Exception as exc:  # noqa: BLE001 - a hint for the sampler: an unreadable file must not stop the search
            log.warning("[search] %s not read for earlier trials: %s", path, first_line(exc))
            continue
        try:
            skip = study_name if path == own else None
            trials += [{**t, "origin": f"{path.parent.name}/{t['origin']}"}
                       for t in _completed_trials(storage, teacher["sha256"], skip)]
        except Exception as exc:  # noqa: BLE001 - as above
            log.warning("[search] %s not read for earlier trials: %s", path, first_line(exc))
        finally:
            storage.engine.dispose()  # one file of many: its connections are not kept open for the search
    return trials


def _completed_trials(storage: optuna.storages.RDBStorage, teacher_sha256: str, skip: str | None) -> list[dict]:
    """The completed trials of the studies in `storage` made on that teacher (but the study `skip`)."""
    trials = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if summary.user_attrs.get("teacher_sha256") != teacher_sha256 or summary.study_name == skip:
            continue
        done = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        trials += [{"settings": t.user_attrs["outcome"]["settings"], "accuracy": t.value,
                    "feasible": bool(t.constraints) and all(v <= 0 for v in t.constraints.values()),
                    "origin": f"{summary.study_name}#{t.number}"}
                   for t in done if "settings" in t.user_attrs.get("outcome", {})]
    return trials


def _enqueue_previous_best(study: optuna.Study, cfg: PipelineConfig, teacher: ModelRef) -> None:
    """The settings of the most accurate feasible trial an earlier search found on the same teacher, clipped
    to this space, as the next trial after the recipe's (a known-good point; left out when it is the
    recipe's own point). Studies made before they recorded their teacher are not looked at."""
    best = policy.previous_best(_earlier_trials(cfg, teacher, study.study_name))
    if best is None:
        return
    point, _ = policy.recipe_point(sampled_space(cfg), best["settings"])
    queued = [t.system_attrs.get("fixed_params") for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.WAITING,))]
    if point and point not in queued:
        log.info("[search] enqueued the best of an earlier search on this teacher (%s)", best["origin"])
        study.enqueue_trial(point, user_attrs={"enqueued": policy.PREVIOUS_BEST, "enqueued_from": best["origin"]})


def open_study(cfg: PipelineConfig, teacher: ModelRef, view: dict) -> optuna.Study:
    """The study of one budget target (created, or loaded when a search with the same identity ran before),
    its orphaned trials (left RUNNING by a killed search) failed and queued again with the same settings and
    marks. What a new study runs first is queued once, when it has no trials: the grid's points, or the recipe
    and the best of an earlier search on the same teacher."""
    path = study_path(cfg, teacher)
    seed = cfg.search.seed if cfg.search.seed is not None else cfg.seed
    sampler = _sampler(cfg, seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=study_storage(path), study_name=view["target"], direction="maximize",
                                sampler=sampler, load_if_exists=True)
    if not study.trials and cfg.search.sampler == "grid":
        _queue_grid(study, cfg)
    elif not study.trials:
        _enqueue_recipe(study, cfg)
        _enqueue_previous_best(study, cfg, teacher)
    study.set_user_attr("teacher_sha256", teacher["sha256"])  # for a later search's _earlier_trials
    for orphan in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(orphan.number, state=optuna.trial.TrialState.FAIL)
        marks = {k: v for k, v in orphan.user_attrs.items() if k in ("enqueued", "enqueued_from")}
        study.enqueue_trial(orphan.params, user_attrs={"requeued_from": orphan.number, **marks})
        log.info("[search] trial %d was cut off by an earlier stop: queued again", orphan.number)
    return study


def target_trials(cfg: PipelineConfig) -> int:
    """How many trials the search runs per budget target: `trials`, or the grid's size when that is smaller."""
    if cfg.search.sampler != "grid":
        return cfg.search.trials
    axes = policy.grid_space(sampled_space(cfg), cfg.search.grid_points)
    return min(cfg.search.trials, math.prod(len(v) for v in axes.values()))


@contextmanager
def study_session(cfg: PipelineConfig, ctx: RunContext, teacher: ModelRef, plan: dict):
    """Each budget target's study by its label, held by this search alone: a second search on the same study
    file stops with one line instead of failing the first one's running trials as orphans (the lock ends with
    the process). The search's pipeline run is tagged with the study's key, as its trials are."""
    path = study_path(cfg, teacher)
    StageRun(ctx.client(), ctx.parent_run_id, "pipeline").set_tags({"shrinkflow.study": path.parent.name})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name("study.lock"), "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CompressionError(f"another search is running on the study {path}; wait for it or change "
                                   "the search settings") from None
        lock.seek(0), lock.truncate(), lock.write(str(os.getpid())), lock.flush()
        yield {view["target"]: open_study(cfg, teacher, view) for view in target_views(plan)}


def finished(study: optuna.Study) -> list[dict]:
    """Outcomes of the trials that ended (completed, pruned, or failed with an error), by trial number."""
    outcomes = [t.user_attrs["outcome"] for t in study.get_trials(deepcopy=False) if "outcome" in t.user_attrs]
    return sorted(outcomes, key=lambda o: o["number"])


def record(study: optuna.Study, trial: optuna.Trial, outcome: dict, plan: dict, max_drop: float) -> None:
    """Tell the study: accuracy for a completed trial (constraint: the accuracy drop), PRUNED for one its pruner
    stopped (Optuna keeps its last reported accuracy), FAIL otherwise."""
    trial.set_user_attr("outcome", outcome)
    if outcome["state"] == "PRUNED":
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return
    if outcome["state"] != "COMPLETE":
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    drop = plan["teacher"]["val_accuracy"] - outcome["accuracy"]
    trial.set_constraint("accuracy_drop", drop - max_drop)  # feasible at <= 0; TPE favours feasible trials
    study.tell(trial, outcome["accuracy"])


def failed_outcome(number: int, settings: dict, error: BaseException) -> dict:
    return {"number": number, "state": "FAIL", "settings": settings,
            "error": f"{type(error).__name__}: {first_line(error)}"}


def pruned_outcome(number: int, settings: dict, stop: TrialPruned) -> dict:
    return {"number": number, "state": "PRUNED", "settings": settings, "stopped_at_epoch": stop.step,
            "accuracy_at_stop": stop.value}


def view_of(plan: dict, trial: dict) -> dict:
    """The plan as the trial's target reads it (an outcome recorded before searches had several targets has
    none: the search's first)."""
    return for_target(plan, trial.get("target") or plan["targets"][0]["label"])


def _table(trials: list[dict], plan: dict, max_drop: float) -> list[dict]:
    teacher = plan["teacher"]["val_accuracy"]
    rows = []
    for t in trials:
        view = view_of(plan, t)
        row = {"trial": t["number"], "target": view["target"], "state": t["state"], "enqueued": t.get("enqueued", ""),
               **{k: json.dumps(v) if isinstance(v, list) else v for k, v in t["settings"].items()}}
        if t["state"] == "COMPLETE":
            row.update({"val_accuracy": round(t["accuracy"], 4), "drop": round(teacher - t["accuracy"], 4),
                        "params": t["params"], "macs": t["macs"], "size_bytes": t["size_bytes"],
                        "feasible": policy.is_feasible(t, plan["metric"], view["limit"], teacher, max_drop),
                        **{f"seconds_{phase}": value for phase, value in t.get("seconds", {}).items()}})
        elif t["state"] == "PRUNED":  # its accuracy at the epoch it was stopped, not a result to compare
            row.update({"stopped_at_epoch": t["stopped_at_epoch"],
                        "val_accuracy_at_stop": round(t["accuracy_at_stop"], 4)})
        else:
            row["error"] = t.get("error", "")
        rows.append(row)
    return rows


def picks(plan: dict, finalists: list[dict], max_drop: float) -> dict[str, dict]:
    """Per target, the finalist the budget and the accuracy floor pick (before the register gates, which
    evaluation measures): among its own finalists and the others' within its budget."""
    chosen = {}
    for view in target_views(plan):
        among = policy.trials_for_target(finalists, view["target"], plan["metric"], view["limit"])
        best, _ = policy.pick(among, plan["metric"], view["limit"], plan["teacher"]["val_accuracy"], max_drop)
        if best is not None:
            chosen[view["target"]] = best
    return chosen


def _curves(plan: dict, trials: list[dict], max_drop: float) -> dict[str, list]:
    """Per target, the best feasible accuracy after each of its trials."""
    return {view["target"]: policy.best_so_far([t for t in trials if view_of(plan, t)["target"] == view["target"]],
                                               plan["metric"], view["limit"], plan["teacher"]["val_accuracy"],
                                               max_drop)
            for view in target_views(plan)}


@stage_task("search_report", sections=("search",), cache=False)
def search_report(cfg: PipelineConfig, ctx: RunContext, run: StageRun, workdir, trials: list[dict],
                  plan: dict, finalists: list[dict]) -> dict:
    """The trials table (CSV, Prefect table artifact), the Pareto plot with each target's budget line and its
    pick among the finalists, and the best feasible accuracy against trial number, on the pipeline run."""
    import pandas as pd

    max_drop = cfg.search.budget.max_accuracy_drop
    table = _table(trials, plan, max_drop)
    parent = StageRun(run.client, ctx.parent_run_id, "pipeline")
    limits = {f"search.budget_limit{'' if len(plan['targets']) == 1 else '.' + t['label']}": t["limit"]
              for t in plan["targets"]}
    parent.set_tags({"search.sampler_seed": cfg.search.seed if cfg.search.seed is not None else cfg.seed,
                     "search.pruner": cfg.search.pruner,
                     "search.targets": ",".join(t["label"] for t in plan["targets"]),
                     **limits, "search.teacher_val_accuracy": plan["teacher"]["val_accuracy"]})
    parent.log_text(pd.DataFrame(table).to_csv(index=False), "search/trials.csv")
    figures = {"search/pareto.png": plots.search_pareto(trials, plan, max_drop, picks(plan, finalists, max_drop)),
               "search/best_so_far.png": plots.best_so_far(_curves(plan, trials, max_drop))}
    for name, fig in figures.items():
        parent.log_figure(fig, name)
        plots.close(fig)
    feasible = sum(bool(r.get("feasible")) for r in table)
    parent.log_metrics({"trials_completed": sum(r["state"] == "COMPLETE" for r in table),
                        "trials_pruned": sum(r["state"] == "PRUNED" for r in table),
                        "trials_failed": sum(r["state"] == "FAIL" for r in table), "trials_feasible": feasible})
    create_table_artifact(key=f"{cfg.name}-search-trials".lower().replace("_", "-"), table=table,
                          description=f"shrinkflow search trials of {cfg.name}")
    return {"table": table}
