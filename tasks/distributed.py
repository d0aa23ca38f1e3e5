"""A stage's training run as torch DDP processes: written as a job, started with torch's own launcher
(`python -m torch.distributed.run`) as a subprocess of the stage's task, waited for, and read back.

One machine: `--standalone` (a rendezvous on a free local port). Several: the pipeline's machine hosts the
rendezvous at `distributed.rdzv_endpoint` and every other machine runs `shrinkflow node` there, which joins
each job in turn (the job travels from the leader; those machines need the data at the same path). The
launcher stops every process when one dies (`--max-restarts 0`); the stage then fails in one line, its run
ends FAILED, and the next run resumes from the leader's last checkpoint.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from torch import nn

from compression import CompressionError
from compression.checkpoint import load_model, save_model
from compression.data import DataBundle
from compression.fit_plan import FitPlan
from compression.loader import Shard
from compression.train_config import TrainConfig
from compression.training import TrainResult
from tasks.config import PROJECT_ROOT, DistributedConfig

log = logging.getLogger("shrinkflow")

RDZV_ID = "shrinkflow"  # one name for every job: a `shrinkflow node` joins whichever job comes next
WORKER_MODULE = "tasks.ddp_worker"


def launcher_command(settings: DistributedConfig, worker_args: list[str], hosts: bool = True,
                     processes: int | None = None) -> list[str]:
    """torch.distributed.run for this machine's share of the processes; `hosts`: this machine hosts the
    rendezvous (the pipeline's), else it joins one."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
               str(processes or settings.processes_per_node), "--max-restarts", "0"]
    if settings.nodes == 1:
        command.append("--standalone")
    else:
        timeout = int(settings.timeout_seconds)
        command += ["--nnodes", str(settings.nodes), "--rdzv-backend", "c10d", "--rdzv-endpoint",
                    settings.rdzv_endpoint, "--rdzv-id", RDZV_ID,
                    "--rdzv-conf", f"is_host={str(hosts).lower()},join_timeout={timeout}"]
    return command + ["-m", WORKER_MODULE, *worker_args, "--backend", settings.backend,
                      "--timeout", str(settings.timeout_seconds)]


def _write_job(job_dir: Path, model: nn.Module, bundle: DataBundle, teacher: dict | None, details: dict) -> Path:
    """The job file and what it names: the model to train, the manifests of a streamed folder."""
    if job_dir.exists():
        shutil.rmtree(job_dir)  # a failed attempt's files; the checkpoints live elsewhere
    job_dir.mkdir(parents=True)
    save_model(model, job_dir / "input.pt", meta=bundle.model_meta())
    manifests = {}
    if bundle.streamed:
        for name, split in (("train", bundle.train), ("test", bundle.test)):
            if name == "train" or split.manifest is not bundle.train.manifest:
                split.manifest.save(job_dir / f"manifest-{name}.npz")
                manifests[name] = str(job_dir / f"manifest-{name}.npz")
    job = {"model": str(job_dir / "input.pt"), "teacher": teacher["path"] if teacher else None,
           "data": bundle.settings, "digests": bundle.digests, "manifests": manifests,
           "output": str(job_dir / "trained.pt"), "result": str(job_dir / "result.json"), **details}
    path = job_dir / "job.json"
    path.write_text(json.dumps(job, indent=1, default=list))
    return path


def _stream(process: subprocess.Popen, name: str) -> list[str]:
    """Relay the processes' output: shrinkflow's own lines (progress, warnings) to the log as they come, the
    launcher's to the log file only. Returns the last lines, for the failure message."""
    tail: list[str] = []
    for line in process.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-60:]
        if line.startswith("[") and "]" in line[:40]:
            log.info("%s", line)
        else:
            log.debug("[%s] %s", name, line)
    return tail


def failure(job_dir: Path, tail: list[str], name: str, code: int) -> Exception:
    """The one-line error of a failed job. The launcher names the first process that failed (its root
    cause): killed by a signal, it says so; else that process's own error (bad input stays bad input), since
    the others only report losing it."""
    text = "\n".join(tail)
    root_cause = text[text.find("Root Cause"):] if "Root Cause" in text else text
    rank = re.search(r"rank\s*:\s*(\d+)", root_cause)
    signal = re.search(r"Signal (\d+) \((\w+)\)", root_cause)
    exitcode = re.search(r"exitcode\s*:\s*(-?\d+)", root_cause)
    errors = {e["rank"]: e for e in (json.loads(p.read_text()) for p in job_dir.glob("error-rank*.json"))}
    who = f"training process {rank.group(1)}" if rank else "a training process"
    if signal:
        return RuntimeError(f"[{name}] distributed training failed: {who} was killed by {signal.group(2)}")
    bad = [e for e in errors.values() if e["bad_input"]]
    error = bad[0] if bad else errors.get(int(rank.group(1))) if rank else None
    error = error or (min(errors.items())[1] if errors else None)
    if error:
        message = f"[{name}] training process {error['rank']}: {error['message']}"
        if error["bad_input"]:
            return CompressionError(message)
        return RuntimeError(message if error["type"] == "RuntimeError" else f"{error['type']}: {message}")
    how = f"exited with code {exitcode.group(1)}" if exitcode else f"failed (launcher exit code {code})"
    return RuntimeError(f"[{name}] distributed training failed: {who} {how}")


def run_job(settings: DistributedConfig, job_path: Path, name: str) -> dict:
    """Launch the job's processes on this machine, wait, and return the leader's result."""
    command = launcher_command(settings, [str(job_path)])
    log.info("[%s] %d training processes (%d per node on %d node(s), %s)", name, settings.world_size,
             settings.processes_per_node, settings.nodes, settings.backend)
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)
    try:
        tail = _stream(process, name)
        code = process.wait()
    except BaseException:
        process.terminate()  # the task was interrupted: take the processes down with it
        process.wait(timeout=30)
        raise
    if code != 0 or not Path(job_path).with_name("result.json").exists():
        raise failure(job_path.parent, tail, name, code)
    return json.loads(job_path.with_name("result.json").read_text())


def fit_distributed(settings: DistributedConfig, run, model: nn.Module, bundle: DataBundle, cfg: TrainConfig,
                    plan: FitPlan, teacher: dict | None, split: str, checkpoint_dir: Path, name: str,
                    prefix: str) -> TrainResult:
    """training.fit over `settings.world_size` processes; `model` ends holding the trained weights. `run`: the
    stage's MLflow run the leader logs each epoch to (None: no logging)."""
    Shard(0, settings.world_size).batch_size(cfg.batch_size)  # bad input: refused before any process starts
    job_dir = Path(checkpoint_dir).parent / f"{Path(checkpoint_dir).name}-job"
    tracking = ({"uri": run.client.tracking_uri, "run_id": run.run_id, "stage": run.stage, "prefix": prefix}
                if run else None)
    details = {"plan": plan.to_dict(), "train": asdict(cfg), "split": split, "checkpoint_dir": str(checkpoint_dir),
               "name": name, "tracking": tracking}
    job_path = _write_job(job_dir, model, bundle, teacher, details)
    result = run_job(settings, job_path, name)
    model.load_state_dict(load_model(job_dir / "trained.pt").state_dict())
    return TrainResult(**result)


UNREACHABLE = ("RendezvousConnectionError", "RendezvousTimeoutError", "Connection refused", "connect() timed out")


def follow(settings: DistributedConfig, once: bool = False, retry_seconds: float = 2.0) -> int:
    """This machine's processes for every job the pipeline's machine starts at settings.rdzv_endpoint, one
    job after another (`shrinkflow node`); with `once`, the next job only. Returns the jobs joined."""
    import time

    command = launcher_command(settings, ["--follow"], hosts=False)
    joined = 0
    while True:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        try:
            tail = _stream(process, "node")
            code = process.wait()
        except BaseException:
            process.terminate()
            process.wait(timeout=30)
            raise
        if code == 0:
            joined += 1
            log.info("[node] job %d done", joined)
            if once:
                return joined
        elif not any(marker in line for line in tail for marker in UNREACHABLE):
            error = failure(Path(settings.rdzv_endpoint or "."), tail, "node", code)
            if once:
                raise error
            log.warning("%s", error)
        time.sleep(retry_seconds)  # no job at the endpoint yet, or the last one failed: wait for the next
