"""The `search` flow: the most accurate compressed model within a budget (MACs, params, file size or
latency), found by Optuna over depth, width, pruning importance, distillation and int8, with trials in
parallel on Dask; with several budget targets, one model per target, each registered under the target's
alias (@macs-10pct), from trials that share the cache and the cluster.

search: the chain's teacher stages (flows/chain.py) -> plan_search -> [trials on Dask: the chain's compression
stages, measured on val] -> top-k trained again at full epochs -> search_report -> the chain's evaluation
stages (evaluate one candidate after another, so latency is fair) with the search's own pick to register.
A trial is the pipeline's own compression stages run with the trial's settings; shared work comes from the cache.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from contextlib import contextmanager

import dask
import torch
from prefect import flow, get_client, task
from prefect.futures import as_completed
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask import DaskTaskRunner

from compression import CompressionError, first_line
from compression import search as policy
from compression.errors import TrialPruned
from compression.selection import pick_within_gates
from flows.chain import Made, compress_teacher, prepare_teacher
from flows.pipeline import StageRunner, tracked_pipeline
from tasks.allocator import restore_allocator
from tasks.config import PipelineConfig, load_config
from tasks.preflight import check_dask, check_search_cluster
from tasks.search import (
    check_constructible,
    failed_outcome,
    finished,
    measure_trial,
    plan_search,
    pruned_outcome,
    record,
    sampled_space,
    search_report,
    study_key,
    study_session,
    target_trials,
    target_views,
    trial_config,
    trial_name,
    trial_overrides,
    trial_pruning,
    trial_run,
    view_of,
)
from tasks.tracking import fail_orphaned_runs

log = logging.getLogger("shrinkflow")


@task(name="trial", cache_policy=None, persist_result=False)
def trial(cfg: PipelineConfig, ctx, data: dict, teacher: dict, plan: dict, number: int, settings: dict,
          full: bool = False, enqueued: str | None = None) -> dict:
    """One trial for one budget target (`plan` as that target reads it): the stages with the trial's settings,
    in a Dask worker, one torch thread; its outcome, also when its pruner stopped it (its runs end KILLED,
    tagged search.state PRUNED). Where its seconds went is logged with it (`seconds.*`, see _phases)."""
    torch.set_num_threads(1)
    restore_allocator()  # a worker another nanny started (dask worker); the local cluster's need not
    clock = [("begun", time.perf_counter())]
    try:
        with trial_run(ctx, study_key(cfg, teacher), plan, number, settings, full, enqueued) as (trial_ctx, handle):
            clock.append(("run_open", time.perf_counter()))
            overrides = trial_overrides(cfg, settings, plan, full, recipe=enqueued == policy.RECIPE)
            handle.log_params({f"derived.{k}": v for k, v in overrides.items() if k == "prune.ratio"})
            trial_cfg = trial_config(cfg, overrides)
            # The pipeline's compression stages with the trial's settings; the candidates they offer go unread.
            with trial_pruning(cfg, trial_cfg, teacher, plan, number, full, enqueued):
                made = compress_teacher(StageRunner(trial_cfg, trial_ctx, handle), Made(data=data, teacher=teacher))
            clock.append(("stages", time.perf_counter()))
            # A size budget's width assumed an int8 file: without one the trial cannot be within the budget.
            if trial_cfg.quantize.enabled and made.int8 is None and plan["metric"] == "size_bytes":
                raise CompressionError("the int8 model lost more than quantize.max_accuracy_drop; the float "
                                       "model would be over the size budget")
            outcome = measure_trial(trial_cfg, handle, data, number, settings, made.int8 or made.student)
            clock.append(("measure", time.perf_counter()))
            seconds = _phases(clock)
            handle.log_metrics({f"seconds.{phase}": value for phase, value in seconds.items()})
            return {**outcome, "seconds": seconds}
    except TrialPruned as stop:
        return pruned_outcome(number, settings, stop)


def _phases(clock: list[tuple[str, float]]) -> dict[str, float]:
    """A trial's seconds by phase, from the clock readings taken at the end of each: opening its MLflow run
    (run_open), the compression stages (stages: training, and each stage's cache check and run), measuring
    its model on val (measure). What the flow waits beyond them (Dask, Prefect's task run) is its `wall`
    less their sum (_outcome)."""
    return {name: round(now - before, 3) for (_, before), (name, now) in zip(clock, clock[1:])}


def _outcome(future, view: dict, number: int, settings: dict, enqueued: str | None,
             submitted: float | None = None) -> dict:
    """The trial's outcome, with its target and name, and the seconds from its submission to its result
    (`wall`, when `submitted` is given); a trial that raised is a failed one."""
    try:
        outcome = future.result()
    except Exception as exc:  # noqa: BLE001 - a failed trial is recorded and the search goes on
        log.warning("[search] %s failed: %s", trial_name(view, number), first_line(exc))
        outcome = failed_outcome(number, settings, exc)
    outcome = {**outcome, "target": view["target"], "name": trial_name(view, number)}
    if submitted is not None and "seconds" in outcome:
        outcome["seconds"] = {**outcome["seconds"], "wall": round(time.perf_counter() - submitted, 3)}
    return {**outcome, "enqueued": enqueued} if enqueued else outcome


def _outcome_detail(outcome: dict) -> str:
    if outcome["state"] == "COMPLETE":
        return f": val accuracy {outcome['accuracy']:.4f}"
    if outcome["state"] == "PRUNED":
        return f" after epoch {outcome['stopped_at_epoch']} at val accuracy {outcome['accuracy_at_stop']:.4f}"
    return ""


def _explore(cfg: PipelineConfig, ctx, data: dict, teacher: dict, plan: dict, studies: dict) -> list[dict]:
    """Ask each target's study for trials, `parallel` at a time, the targets taking turns, until each has
    `trials` finished (earlier runs included)."""
    views, space, quota = {v["target"]: v for v in target_views(plan)}, sampled_space(cfg), target_trials(cfg)
    started = {label: len(finished(study)) for label, study in studies.items()}  # finished or running
    done, total = sum(started.values()), quota * len(studies)
    in_flight: dict = {}
    if done:
        log.info("[search] %d of %d trials finished before; running the rest", done, total)
    while (label := policy.next_target(started, quota)) or in_flight:
        while label and len(in_flight) < cfg.search.parallel:
            asked = studies[label].ask()
            settings, enqueued = policy.sample(asked, space), asked.user_attrs.get("enqueued")
            future = trial.submit(cfg, ctx, data, teacher, views[label], asked.number, settings, enqueued=enqueued)
            in_flight[future] = (label, asked, settings, enqueued, time.perf_counter())
            started[label] += 1
            label = policy.next_target(started, quota)
        future = next(as_completed(list(in_flight)))
        label, asked, settings, enqueued, submitted = in_flight.pop(future)
        outcome = _outcome(future, views[label], asked.number, settings, enqueued, submitted)
        record(studies[label], asked, outcome, plan, cfg.search.budget.max_accuracy_drop)
        done += 1
        log.info("[search] %s %s (%d/%d)%s", outcome["name"], outcome["state"].lower(), done, total,
                 _outcome_detail(outcome))
    return [outcome for study in studies.values() for outcome in finished(study)]


def _retrain_best(cfg: PipelineConfig, ctx, data: dict, teacher: dict, plan: dict, trials: list[dict]) -> list[dict]:
    """The trials compression.search.to_retrain names, trained again at the config's full epochs (top_k 0:
    as they are)."""
    best = policy.to_retrain(trials, [(t["label"], t["limit"]) for t in plan["targets"]], plan["metric"],
                             plan["teacher"]["val_accuracy"], cfg.search.budget.max_accuracy_drop, cfg.search.top_k)
    if cfg.search.top_k == 0:
        return best
    futures = {trial.submit(cfg, ctx, data, teacher, view_of(plan, t), t["number"], t["settings"], full=True,
                            enqueued=t.get("enqueued")): t for t in best}
    outcomes = [_outcome(f, view_of(plan, t), t["number"], t["settings"], t.get("enqueued"))
                for f, t in futures.items()]
    return [o for o in outcomes if o["state"] == "COMPLETE"]


@flow(name="search-trials")
def search_trials(cfg: PipelineConfig, ctx, data: dict, teacher: dict, plan: dict) -> dict:
    """The trials and the top-k re-training, on the task runner the search flow gives it (Dask)."""
    with study_session(cfg, ctx, teacher, plan) as studies:
        trials = _explore(cfg, ctx, data, teacher, plan, studies)
    return {"trials": trials, "finalists": _retrain_best(cfg, ctx, data, teacher, plan, trials)}


def dask_runner(cfg: PipelineConfig) -> DaskTaskRunner:
    """An existing Dask cluster (search.dask_address or $SHRINKFLOW_DASK_ADDRESS), else a local one of
    `parallel` single-threaded worker processes."""
    address = cfg.search.dask_address or os.environ.get("SHRINKFLOW_DASK_ADDRESS")
    if address:
        check_dask(address)
        return DaskTaskRunner(address=address)
    # Non-daemonic worker processes: a trial on an image folder starts DataLoader workers, which a daemonic
    # process may not (dask/distributed 2142). And no MALLOC_TRIM_THRESHOLD_ in their environment (Dask's
    # default; None unsets it): it slows torch's training (restore_allocator), and the nanny would also put it
    # into this process's environment, for every process the pipeline starts later. Read by the nannies
    # when they start the worker processes.
    dask.config.set({"distributed.worker.daemon": False,
                     "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.search.parallel, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


@contextmanager
def prefect_api_for_workers():
    """The Prefect API this flow talks to, in the settings that travel with every task to the Dask workers:
    without it, a worker of a flow on Prefect's temporary local server would start a server of its own and
    the trials' task runs would be recorded there."""
    with get_client(sync_client=True) as client:
        url = str(client.api_url).rstrip("/")
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


def _choice(plan: dict, cfg: PipelineConfig, finalists: list[dict], rows: list[dict], parent_run_id: str):
    """Per budget target, the finalist to register: the most accurate within its budget and the register gates
    (latency measured in evaluate, the gates' figures by the fidelity stage); when none passes the gates, the
    pick among all of them, as challenger. One target: that choice (alias champion or challenger); several: a
    list, each aliased by its target (@macs-10pct, or @macs-10pct-challenger)."""
    by_name = {r["candidate"]: r for r in rows}
    for final in finalists:
        final["latency_ms"] = by_name[final["name"]]["latency_p50_ms"]
    choices = []
    for view in target_views(plan):
        among = policy.trials_for_target(finalists, view["target"], plan["metric"], view["limit"])
        pick = functools.partial(policy.pick, metric=plan["metric"], limit=view["limit"],
                                 teacher_accuracy=plan["teacher"]["val_accuracy"],
                                 max_drop=cfg.search.budget.max_accuracy_drop)
        best, alias = pick_within_gates(among, lambda f: by_name[f["name"]], cfg.register.gates.limits(), pick)
        if best is None:
            continue
        alias, challenger = (policy.target_alias(view["target"], view["several"], verdict)
                             for verdict in (alias, "challenger"))
        tags = {"search_run_id": parent_run_id, "search_trial": best["name"],
                "search_settings": str(best["settings"])[:5000], "search_target": view["target"],
                "search_budget": f"{plan['metric']}<={view['limit']:.6g}",
                # a file two targets picked is one version: each target's tag stays
                **({f"search_budget.{view['target']}": f"{plan['metric']}<={view['limit']:.6g}"}
                   if view["several"] else {}),
                **({"search_enqueued": best["enqueued"]} if best.get("enqueued") else {})}
        choices.append({"candidate": best["name"], "alias": alias, "challenger_alias": challenger, "tags": tags})
    if not choices:
        return None
    return choices if len(plan["targets"]) > 1 else choices[0]


def run_search(cfg: PipelineConfig) -> dict:
    check_search_cluster(cfg)  # a deployment run's settings: refused before any MLflow run
    check_constructible(cfg)
    with tracked_pipeline(cfg, "search") as run:
        made = prepare_teacher(run)  # offers the teacher: the first candidate, the reference
        data, teacher = made.data, made.teacher
        plan = run(plan_search, data=data, teacher=teacher)
        try:
            with prefect_api_for_workers():
                found = search_trials.with_options(task_runner=dask_runner(cfg))(cfg, run.ctx, data, teacher, plan)
        finally:  # trial runs of a Dask worker that died on this host: FAILED now, not RUNNING until next time
            fail_orphaned_runs(run.ctx.client(), run.ctx.experiment_id)
        run(search_report, trials=found["trials"], plan=plan, finalists=found["finalists"])
        run.offer(*({**f["model"], "name": f["name"]} for f in found["finalists"]))  # after the teacher
        result = run.finish(data, teacher, cfg.register.enabled,
                            choose=lambda rows: _choice(plan, cfg, found["finalists"], rows, run.ctx.parent_run_id))
        return {**result, "trials": found["trials"], "finalists": found["finalists"], "plan": plan,
                "register_enabled": cfg.register.enabled}


@flow(name="search", log_prints=True)
def search(config: str = "configs/search-quickstart.yaml", overrides: dict | None = None) -> dict:
    """Search the config's `search.space` for the most accurate model within `search.budget`; parameters as
    for compress. The config is validated before any work starts."""
    return run_search(load_config(config, overrides))


if __name__ == "__main__":
    search()
