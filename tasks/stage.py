"""What every stage task shares: its cache key, its output folder, its MLflow child run, its model refs.

A stage's key hashes the config sections it reads, the data config, the seed and the sha256 of every model
it reads, never live tensors; its outputs go to <output_dir>/<stage>/<key>/ with the cache record
(tasks/cache.py) beside them, so a re-run with an unchanged config finds them, and a crashed run resumes
from the epoch checkpoints kept there.
"""

from __future__ import annotations

import dataclasses
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
    val_accuracy: float
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


def run_id_of(result) -> str:
    """The MLflow run a stage's result was logged in: a model ref's or a StageOutput's (tasks/outputs.py)."""
    return (result.get("run_id") if isinstance(result, dict) else getattr(result, "run_id", "")) or ""


def _output_type(fn: Callable):
    """The dataclass a stage function returns (its return annotation, a name of its module), or None for a
    ModelRef or a plain dict."""
    returned = fn.__annotations__.get("return")
    if isinstance(returned, str):  # postponed annotations: the name, resolved where the stage is defined
        returned = fn.__globals__.get(returned)
    return returned if isinstance(returned, type) and dataclasses.is_dataclass(returned) else None


def _rebuilt(output_type, record: dict):
    """The stage's output from its cache record; None when the record does not fit the type (written by
    another version): the stage runs again."""
    if output_type is None:
        return record
    known = {f.name for f in dataclasses.fields(output_type)}
    try:
        return output_type(**{k: v for k, v in record.items() if k in known})
    except TypeError:
        return None


def _finished(result, run_id: str, stage: str):
    """The result with where it was logged; a dataclass result as it is, a dict one as a copy."""
    if dataclasses.is_dataclass(result):
        return dataclasses.replace(result, run_id=run_id, stage=stage)
    return {**result, "run_id": run_id, "stage": stage}


def _record_of(result) -> dict:
    return dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result


def _cached_result(stage: str, workdir: Path, ctx: RunContext, output_type):
    store = store_id(ctx.tracking_uri)
    client = ctx.client()
    result, why = records.lookup(workdir, store, lambda run_id: run_finished(client, run_id))
    if result is not None and (result := _rebuilt(output_type, result)) is None:
        why = "its record does not fit this version's result"
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
        output_type = _output_type(fn)

        def body(cfg: PipelineConfig, ctx: RunContext, **inputs):
            key, workdir = stage_workdir(stage, sections, cfg, inputs)
            if cache and (hit := _cached_result(stage, workdir, ctx, output_type)) is not None:
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
            if not isinstance(result, dict) and not dataclasses.is_dataclass(result):
                return result
            result = _finished(result, run.run_id, stage)
            if cache:
                records.write_record(workdir, stage, key, store_id(ctx.tracking_uri), _record_of(result))
            return result

        # Not functools.wraps: Prefect reads the task's parameters from the signature, which is body's.
        body.__name__, body.__qualname__, body.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        body.__wrapped_stage__ = fn  # the stage function itself, for tests and tools
        return task(name=stage, cache_policy=None, persist_result=False, **task_options)(body)

    return decorate


def retry_transient(task_obj, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry when a retry may fix the failure (compression.errors)."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we only classify it
        return retry_may_fix(exc)
    return False


__all__ = ["ModelRef", "StageRun", "model_ref", "output_root", "run_id_of", "stage_task", "retry_transient"]
