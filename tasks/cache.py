"""The stage cache: one record file beside each stage's outputs, validated before it is trusted.

A cached stage writes its outputs to `<output_dir>/<stage>/<key>/` and, when it has finished, the record
`stage.json` in the same folder: what the stage returned, per tracking store it logged to, with the sha256
of every model file it names. Record and result are one file, next to the files it describes, so no process
(another Prefect home, a worker, the tests) can find a record whose result it cannot read.

A record is used only when it is valid for this run: it parses, it has an entry for the tracking store this
pipeline logs to, the files it names exist with their recorded sha256, and the MLflow runs it names exist
and are FINISHED in that store. Otherwise the stage runs again (and says why).

Nothing here imports prefect or mlflow: the run check is passed in as a function.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from compression.checkpoint import file_sha256
from compression.fileio import write_json_atomic

CACHE_VERSION = 2
RECORD_NAME = "stage.json"


def content_identity(value):
    """What a task input is, for the cache key: the sha256 of model refs (recursively), the value otherwise.

    Run ids and stage names say where a result was logged, not what it is, so they never change a key."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict) and "sha256" in value:
        return value["sha256"]
    if isinstance(value, dict):
        return {k: content_identity(v) for k, v in sorted(value.items()) if k not in ("run_id", "stage")}
    if isinstance(value, (list, tuple)):
        return [content_identity(v) for v in value]
    return value


def stage_key(stage: str, settings: dict, inputs: dict) -> str:
    """20 hex digits of sha256 over the stage name, its settings (config sections, data, seed) and inputs."""
    payload = {"version": CACHE_VERSION, "stage": stage, **settings, "inputs": content_identity(inputs)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _walk(value) -> Iterator[dict]:
    if isinstance(value, dict):
        yield value
        for child in value.values():
            yield from _walk(child)
    elif isinstance(value, (list, tuple)):
        for child in value:
            yield from _walk(child)


def model_files(result) -> dict[str, str]:
    """{path: sha256} of every model file a stage result names."""
    return {d["path"]: d["sha256"] for d in _walk(result) if "path" in d and "sha256" in d}


def run_ids(result) -> set[str]:
    return {d["run_id"] for d in _walk(result) if d.get("run_id")}


def read_record(workdir: Path) -> tuple[dict | None, str]:
    """(record, "") or (None, why there is no usable record)."""
    path = workdir / RECORD_NAME
    if not path.exists():
        return None, ""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"record {path} is unreadable ({type(exc).__name__})"
    if not isinstance(record, dict) or record.get("version") != CACHE_VERSION or not isinstance(
            record.get("stores"), dict):
        return None, f"record {path} is from another shrinkflow version"
    return record, ""


def invalid_files(result) -> str:
    """Why the files a result names cannot be used, or "" when all exist with their recorded sha256."""
    for path, sha in model_files(result).items():
        if not Path(path).is_file():
            return f"{path} is missing"
        if file_sha256(path) != sha:
            return f"{path} changed since it was recorded (sha256 differs)"
    return ""


def lookup(workdir: Path, store: str, run_finished: Callable[[str], bool]) -> tuple[dict | None, str]:
    """(result, "") for a valid hit, else (None, why not; "" when the stage simply never finished here)."""
    record, why = read_record(workdir)
    if record is None:
        return None, why
    entry = record["stores"].get(store)
    if entry is None:
        return None, "its runs were logged to another tracking store"
    if why := invalid_files(entry):
        return None, why
    missing = sorted(run_id for run_id in run_ids(entry) if not run_finished(run_id))
    if missing:
        return None, f"run {missing[0]} is not a finished run of this tracking store"
    return entry, ""


def write_record(workdir: Path, stage: str, key: str, store: str, result: dict) -> None:
    """Record `result` for `store`; entries of other stores stay while they name the very same files."""
    record, _ = read_record(workdir)
    files = model_files(result)
    stores = {name: entry for name, entry in (record or {}).get("stores", {}).items()
              if name != store and model_files(entry) == files}
    stores[store] = result
    write_json_atomic(workdir / RECORD_NAME, {"version": CACHE_VERSION, "stage": stage, "key": key,
                                              "stores": stores})
