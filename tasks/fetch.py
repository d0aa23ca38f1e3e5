"""fetch_pretrained: turn a source string into a shrinkflow model file.

Sources: torchvision:<arch>[:<weights>] (torch cache or download), scratch:<arch> (random init),
models:/<name>@<alias> and models:/<name>/<version> (MLflow registry), file:<path> (a shrinkflow file).
Transient failures are retried; bad sources fail at once with one line.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from compression import CompressionError
from compression.checkpoint import file_sha256, read_model_file, save_model
from compression.fileio import atomic_write
from compression.models import build_model
from compression.training import seed_everything
from tasks.config import SOURCE_PATTERN, PipelineConfig
from tasks.stage import model_ref, retry_transient, stage_task
from tasks.tracking import RunContext

SHA_TAG = "shrinkflow.checkpoint_sha256"


def registry_version(client: MlflowClient, uri: str):
    """The ModelVersion a models:/ URI names, with a clear error when the model, alias or version is missing."""
    match = re.fullmatch(r"models:/([^/@]+)(?:@([\w\-]+)|/(\d+))", uri)
    if not match:
        raise CompressionError(f"bad registry source {uri!r}; use models:/<name>@<alias> or models:/<name>/<version>")
    name, alias, version = match.groups()
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise CompressionError(f"registered model {name!r} not found in the MLflow registry") from None
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException:
        what = f"alias {alias!r}" if alias else f"version {version}"
        raise CompressionError(f"registered model {name!r} has no {what}") from None


def _from_registry(ctx: RunContext, source: str, target: Path) -> dict:
    import mlflow.artifacts

    client = ctx.client()
    version = registry_version(client, source)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{version.name}/{version.version}", dst_path=tmp, tracking_uri=ctx.tracking_uri))
        files = sorted(local.rglob("*.pt"))
        if not files:
            raise CompressionError(f"{source} holds no shrinkflow model file")
        expected = version.tags.get(SHA_TAG)
        read_model_file(files[0], expected_sha256=expected)  # safe load (weights_only) + integrity check
        atomic_write(target, lambda tmp: shutil.copyfile(files[0], tmp))
    return {"registry_name": version.name, "registry_version": version.version}


def _build(cfg: PipelineConfig, data: dict, source: str, target: Path) -> dict:
    kind, _, rest = source.partition(":")
    arch, _, weights = rest.partition(":")
    seed_everything(cfg.seed)
    if kind == "scratch":
        model = build_model(arch, len(data["classes"]), data["in_channels"], data["input_size"], stem=cfg.model.stem)
    else:
        try:
            model = build_model(arch, 1000, 3, data["input_size"], weights=weights or "DEFAULT", stem=cfg.model.stem)
        except (OSError, RuntimeError, ConnectionError) as exc:
            raise ConnectionError(f"cannot fetch {source}: weights are neither in the torch cache "
                                  f"($TORCH_HOME/hub/checkpoints) nor downloadable ({type(exc).__name__})") from exc
    save_model(model, target, meta={"source": source})
    return {}


@stage_task("fetch_pretrained", sections=("source", "model", "finetune"), cache=False, retries=2,
            retry_delay_seconds=[1, 5], retry_condition_fn=retry_transient)
def fetch_pretrained(cfg: PipelineConfig, ctx: RunContext, run, workdir, data: dict, source: str | None = None,
                     name: str = "pretrained") -> dict:
    """The model named by `source` (default: the config's) as a shrinkflow file `name`.pt in the stage's folder.

    Not cached: a registry alias can move. Downstream caches key on the fetched file's sha256 instead.
    """
    source = source or cfg.source
    if not SOURCE_PATTERN.match(source):
        raise CompressionError(f"unknown model source {source!r}")
    target = workdir / f"{name}.pt"
    run.log_params({"fetched_source": source})
    if source.startswith("models:/"):
        extra = _from_registry(ctx, source, target)
    elif source.startswith("file:"):
        path = cfg.resolve(source.removeprefix("file:"))
        read_model_file(path)
        atomic_write(target, lambda tmp: shutil.copyfile(path, tmp))
        extra = {}
    else:
        extra = _build(cfg, data, source, target)
    sha = file_sha256(target)
    spec = read_model_file(target)["spec"]
    if not cfg.finetune.enabled and spec["num_classes"] != len(data["classes"]):
        raise CompressionError(f"{source} has {spec['num_classes']} classes, the data has "
                               f"{len(data['classes'])}; enable finetune to transfer it")
    run.set_tags({"source": source, SHA_TAG: sha, **{f"registry.{k}": v for k, v in extra.items()}})
    run.log_dict(spec, "spec.json")
    return model_ref(name, target, sha, run.run_id, source=source, arch=spec["arch"], **extra)
