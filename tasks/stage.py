"""What every stage task shares: its cache key, its output folder, its MLflow child run, its model refs.

A stage's key hashes the config sections it reads, the data config, the seed and the sha256 of every model
it reads, never live tensors; its outputs go to <output_dir>/<stage>/<key>/ with the cache record
(tasks/cache.py) beside them, so a re-run with an unchanged config finds them, and a crashed run resumes
from the epoch checkpoints kept there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Required, TypedDict

from prefect import task
from prefect.states import Cancelled, Completed

from compression.errors import TrialPruned, retry_may_fix
from tasks import cache as records
from tasks.config import NOT_RESULTS, PipelineConfig
from tasks.tracking import RunContext, StageRun, run_finished, stage_run
from tasks.tracking_uri import store_id

log = logging.getLogger("shrinkflow")


class ModelRef(TypedDict, total=False):
    """A model passed between tasks: a file and where it was logged, never a live module.

    `name` is the candidate's one name: its row in the comparison table, its file name, its metric prefix."""

    name: Required[str]
    path: Required[str]
    sha256: Required[str]
    run_id: Required[str]
    val_acc: float
    source_sha256: str  # the float model an int8 model was made from
    source: str
    arch: str
    registry_name: str
    registry_version: str


def model_ref(name: str, path: Path, sha256: str, run_id: str, **extra) -> ModelRef:
    return ModelRef(name=name, path=str(path), sha256=sha256, run_id=run_id, **extra)


# Read by every stage through the data helpers (and hashed into every key): the data config and the seed.
ALWAYS_KEYED = frozenset({"data", "seed"})
# What a stage may read without hashing it: where things go, what the run is called, and the config's methods.
NOT_COMPUTED = NOT_RESULTS | {"resolve", "stage_dict", "config_hash", "model_dump", "model_dump_json"}


class ConfigReads:
    """The config as a stage sees it, noting which top-level settings the stage reads, so that a stage
    reading a section its key does not hash is caught (see `check_sections`). Uncached stages are held
    to it too: their key names their output folder."""

    def __init__(self, cfg: PipelineConfig) -> None:
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "read", set())

    def __getattr__(self, name: str):
        self.read.add(name)
        return getattr(self._cfg, name)

    def __setattr__(self, name, value):
        raise AttributeError("a stage must not change the pipeline config")


def check_sections(stage: str, sections: tuple[str, ...], read: set[str]) -> None:
    undeclared = sorted(read - set(sections) - ALWAYS_KEYED - NOT_COMPUTED)
    if undeclared:
        raise RuntimeError(f"stage {stage} reads config {', '.join(undeclared)} but its cache key hashes only "
                           f"{', '.join(sections) or 'data and seed'}: add them to sections=")


def stage_settings(cfg: PipelineConfig, sections: tuple[str, ...]) -> dict:
    return {"seed": cfg.seed, **cfg.stage_dict("data", *sections)}


def output_root(cfg: PipelineConfig) -> Path:
    return cfg.resolve(cfg.output_dir)


def stage_workdir(stage: str, sections: tuple[str, ...], cfg: PipelineConfig, inputs: dict) -> tuple[str, Path]:
    key = records.stage_key(stage, stage_settings(cfg, sections), inputs)
    return key, output_root(cfg) / stage / key


def _cached_result(stage: str, workdir: Path, ctx: RunContext):
    store = store_id(ctx.tracking_uri)
    client = ctx.client()
    result, why = records.lookup(workdir, store, lambda run_id: run_finished(client, run_id))
    if why:
        log.info("[%s] cache record not used, running the stage again: %s", stage, why)
    return result


def stage_task(stage: str, sections: tuple[str, ...] = (), cache: bool = True, **task_options):
    """Make `fn(cfg, ctx, run, workdir, **inputs)` a Prefect task `(cfg, ctx, **inputs)` with its own child run.

    `sections` are the config sections the stage reads besides data and seed; reading another one fails the
    stage (it would be missing from the cache key). With `cache`, a valid record in the stage's
    folder is returned as a Prefect state named Cached and nothing runs or is logged again. A stage a
    search's pruner stops (compression.errors.TrialPruned) ends Cancelled, named Pruned, not Failed.
    """

    def decorate(fn: Callable):
        def body(cfg: PipelineConfig, ctx: RunContext, **inputs):
            key, workdir = stage_workdir(stage, sections, cfg, inputs)
            if cache and (hit := _cached_result(stage, workdir, ctx)) is not None:
                return Completed(name="Cached", data=hit)
            workdir.mkdir(parents=True, exist_ok=True)
            seen = ConfigReads(cfg)
            try:
                with stage_run(ctx, stage) as run:
                    run.set_tags({"shrinkflow.cache_key": key, "shrinkflow.workdir": str(workdir)})
                    run.log_params({"seed": cfg.seed, **cfg.stage_dict(*sections)})
                    result = fn(seen, ctx, run, workdir, **inputs)
                    check_sections(stage, sections, seen.read)
            except TrialPruned as stop:  # stopped on purpose: Cancelled in Prefect, re-raised by state.result()
                return Cancelled(name="Pruned", message=str(stop), data=stop)
            if not isinstance(result, dict):
                return result
            result = {**result, "run_id": run.run_id, "stage": stage}
            if cache:
                records.write_record(workdir, stage, key, store_id(ctx.tracking_uri), result)
            return result

        # Not functools.wraps: Prefect reads the task's parameters from the signature, which is body's.
        body.__name__, body.__qualname__, body.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        return task(name=stage, cache_policy=None, persist_result=False, **task_options)(body)

    return decorate


def retry_transient(task_obj, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry when a retry may fix the failure (compression.errors)."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we only classify it
        return retry_may_fix(exc)
    return False


__all__ = ["ModelRef", "StageRun", "model_ref", "output_root", "stage_task", "retry_transient"]
