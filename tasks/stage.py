"""What every stage task shares: its cache key, its output folder, its MLflow child run, its model refs.

A stage's key hashes its own config section(s), the data config, the seed and the sha256 of every model
it reads, never live tensors; its outputs go to <output_dir>/<stage>/<key>/, so a re-run with an
unchanged config finds them, and a crashed run resumes from the epoch checkpoints kept there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from prefect import task
from prefect.cache_policies import CacheKeyFnPolicy

from compression import CompressionError
from tasks.config import PipelineConfig
from tasks.tracking import RunContext, StageRun, stage_run

CACHE_VERSION = 1

# A model passed between tasks: {"path", "sha256", "run_id", "name", ...metrics}. Paths, never modules.
ModelRef = dict


def model_ref(name: str, path: Path, sha256: str, run_id: str, **extra) -> ModelRef:
    return {"name": name, "path": str(path), "sha256": sha256, "run_id": run_id, **extra}


def _digests(value):
    """The content identity of a task input: sha256 of model refs (recursively), the value otherwise."""
    if isinstance(value, dict) and "sha256" in value:
        return value["sha256"]
    if isinstance(value, dict):  # run ids name where a result was logged, not what it is
        return {k: _digests(v) for k, v in sorted(value.items()) if k not in ("run_id", "stage")}
    if isinstance(value, (list, tuple)):
        return [_digests(v) for v in value]
    return value


def stage_key(stage: str, sections: tuple[str, ...], cfg: PipelineConfig, inputs: dict) -> str:
    payload = {
        "version": CACHE_VERSION,
        "stage": stage,
        "seed": cfg.seed,
        **cfg.stage_dict("data", *sections),
        "inputs": _digests(inputs),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def output_root(cfg: PipelineConfig) -> Path:
    return cfg.resolve(cfg.output_dir)


def ensure_writable(directory: Path) -> None:
    """Fail before any work when outputs cannot be written there."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise CompressionError(f"output directory {directory} is not writable ({exc.strerror or type(exc).__name__})") from None


def stage_task(stage: str, sections: tuple[str, ...] = (), cache: bool = True, **task_options):
    """Make `fn(cfg, ctx, run, workdir, **inputs)` a Prefect task `(cfg, ctx, **inputs)` with its own child run.

    Cached stages are keyed by `stage_key`; the flow places the cache records under the output directory
    (see `with_cache`), so deleting outputs/ also forgets the cache.
    """

    def decorate(fn: Callable):
        def key_fn(context, parameters):
            # Prefect passes **inputs as one parameter named "inputs".
            return f"{stage}-{stage_key(stage, sections, parameters['cfg'], dict(parameters.get('inputs', {})))}"

        def body(cfg: PipelineConfig, ctx: RunContext, **inputs):
            key = stage_key(stage, sections, cfg, inputs)
            workdir = output_root(cfg) / stage / key
            workdir.mkdir(parents=True, exist_ok=True)
            with stage_run(ctx, stage) as run:
                run.set_tags({"shrinkflow.cache_key": key, "shrinkflow.workdir": str(workdir)})
                run.log_params({"seed": cfg.seed, **cfg.stage_dict(*sections)})
                result = fn(cfg, ctx, run, workdir, **inputs)
                return {**result, "run_id": run.run_id, "stage": stage} if isinstance(result, dict) else result

        # Not functools.wraps: Prefect reads the task's parameters from the signature, which is body's.
        body.__name__, body.__qualname__, body.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        options = dict(name=stage, persist_result=True, **task_options)
        if cache:
            options["cache_policy"] = CacheKeyFnPolicy(cache_key_fn=key_fn)
        else:
            options["cache_policy"] = None
        return task(**options)(body)

    return decorate


def with_cache(task_obj, cfg: PipelineConfig):
    """The task with its cache records kept under the run's output directory (results stay in Prefect's
    local storage): a record only exists while the outputs it points at do."""
    policy = task_obj.cache_policy
    if not isinstance(policy, CacheKeyFnPolicy):
        return task_obj
    return task_obj.with_options(cache_policy=policy.configure(key_storage=str(output_root(cfg) / ".cache")))


def permanent_error(exc: BaseException) -> bool:
    """Errors that a retry cannot fix: bad input reported by shrinkflow itself."""
    return isinstance(exc, (CompressionError, ValueError, FileNotFoundError))


def retry_transient(task_obj, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry unless the failure is a permanent input error."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we only classify it
        return not permanent_error(exc)
    return False


__all__ = ["ModelRef", "StageRun", "model_ref", "output_root", "stage_key", "stage_task", "with_cache",
           "retry_transient"]
