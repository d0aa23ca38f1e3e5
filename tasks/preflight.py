"""Checks of a config against the world, before any work and before Prefect starts where the CLI runs them:
the tracking store, the output directory, the data directory and a model file named as the source; and
`open_pipeline`, which runs them and then opens the pipeline's parent run.

Each failure is one line naming the problem (exit code 2 from the CLI); the flows run the same checks, so a
deployment run with a bad parameter fails at once with that line as its message.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from compression import CompressionError
from compression.models import check_stages, list_architectures, stem_refusal
from compression.quantization import check_backend as check_quantize_backend
from compression.trimming import check_trimmable_arch
from tasks.config import ConfigError, DistributedConfig, PipelineConfig
from tasks.provenance import logged_config, provenance
from tasks.tracking import pipeline_run
from tasks.tracking_uri import check_tracking, default_tracking_uri, redact

log = logging.getLogger("shrinkflow")


def ensure_writable(directory) -> None:
    """Fail before any work when outputs cannot be written there."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # A name of its own: pipelines started together probe the same directory at once.
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-") as probe:
            probe.write(b"ok")
    except OSError as exc:
        raise CompressionError(f"output directory {directory} is not writable "
                               f"({exc.strerror or type(exc).__name__})") from None


def preflight(cfg: PipelineConfig, refusable_stages: list[str]) -> str:
    """Run every check; returns the tracking URI the pipeline logs to. `refusable_stages`: the stages the run
    takes the model through, as compression.models names them (flows.chain.refusable_stages: the chain of
    stages is known in flows, which tasks never import)."""
    if cfg.source.startswith(("scratch:", "torchvision:")):  # a stage the architecture cannot do: refuse now
        arch = cfg.source.split(":")[1]
        check_stages(arch, refusable_stages)
        if reason := stem_refusal(arch, cfg.model.stem):
            raise ConfigError(f"model.stem: {reason}")
        if "trim" in refusable_stages and arch in list_architectures():
            check_trimmable_arch(arch)
    if cfg.quantize.enabled:
        try:
            check_quantize_backend(cfg.quantize.backend)
        except CompressionError as exc:
            raise ConfigError(f"quantize.backend: {exc}") from None
    check_training_processes(cfg.distributed)
    check_precision(cfg)
    tracking_uri = cfg.tracking.uri or default_tracking_uri()
    check_tracking(tracking_uri)
    ensure_writable(cfg.resolve(cfg.output_dir))
    data_dir = cfg.data.data_dir  # read as the data loaders read it
    if data_dir is not None and not Path(data_dir).is_dir():
        raise CompressionError(f"data directory {data_dir} does not exist")
    if cfg.source.startswith("file:"):
        path = cfg.resolve(cfg.source.removeprefix("file:"))
        if not path.is_file():
            raise CompressionError(f"model file {path} does not exist")
    return tracking_uri


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_precision(cfg: PipelineConfig) -> None:
    """`amp: bf16` where a stage trains on a device here without native bf16: refused before any work (a trial
    on another Dask machine is checked again where it trains)."""
    from compression.training import TrainConfig, bf16_refusal, resolve_device

    for name in type(cfg).model_fields:
        section = getattr(cfg, name)
        train = getattr(section, "train", None)
        if isinstance(train, TrainConfig) and train.amp == "bf16" and getattr(section, "enabled", True):
            if refusal := bf16_refusal(resolve_device(train.device)):
                raise ConfigError(f"{name}.train.amp: bf16: {refusal}")


def check_training_processes(settings: DistributedConfig, field: str = "distributed.processes_per_node") -> None:
    """Training processes need a core each on CPU and a GPU each on CUDA: more than this machine has is bad
    input (exit 2), before any work. (Loader workers beyond the cores are capped with a warning instead:
    tasks/data.py.)"""
    cores, count = os.cpu_count() or 1, settings.processes_per_node
    backend = settings.backend if settings.backend != "auto" else ("nccl" if _gpus() else "gloo")
    if backend == "nccl" and count > _gpus():
        raise ConfigError(f"{field}: {count} processes on NCCL need a GPU each; this machine has {_gpus()}")
    if backend == "gloo" and count > cores:
        raise ConfigError(f"{field}: {count} training processes on CPU need a core each; this machine has {cores}")


def check_search_cluster(cfg: PipelineConfig) -> None:
    """A search's local Dask cluster starts one worker process per trial at once, and each trial its training
    processes: together at most one per core. A trial trains on one machine."""
    cores, processes = os.cpu_count() or 1, cfg.distributed.processes_per_node
    if cfg.distributed.nodes > 1:
        raise ConfigError("distributed.nodes: a search's trials train on one machine each; set it to 1")
    local_cluster = cfg.search.dask_address is None and not os.environ.get("SHRINKFLOW_DASK_ADDRESS")
    if local_cluster and cfg.search.parallel * processes > cores:
        each = f" x {processes} training processes" if processes > 1 else ""
        raise ConfigError(f"search.parallel: {cfg.search.parallel} trials at once{each} would start that many "
                          f"processes; this machine has {cores} cores (use search.dask_address for a larger cluster)")


def check_dask(address: str | None, timeout: float = 5.0) -> None:
    """Fail in one line, before any work, when a Dask scheduler given by address does not answer."""
    if not address:
        return
    from distributed import Client

    try:
        Client(address, timeout=timeout).close()
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConnectionError(f"Dask scheduler {address} is unreachable ({type(exc).__name__})") from None


@contextmanager
def open_pipeline(cfg: PipelineConfig, flow_name: str, refusable_stages: list[str]):
    """Checks that need no Prefect (tracking store, output directory, data and model paths, the stages the
    architecture may refuse), then the pipeline's parent run with its config and provenance: (RunContext, StageRun)."""
    tracking_uri = preflight(cfg, refusable_stages)
    with pipeline_run(tracking_uri, cfg.tracking.experiment, f"{cfg.name}-{flow_name}", logged_config(cfg),
                      provenance(cfg, flow_name, tracking_uri)) as (ctx, parent):
        log.info("MLflow run %s (experiment %s) at %s", ctx.parent_run_id, cfg.tracking.experiment,
                 redact(tracking_uri))
        yield ctx, parent
