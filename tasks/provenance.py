"""Provenance of a pipeline run: the git commit and whether the tree is dirty, the versions of the packages
that matter, the Prefect flow run and deployment, the run's provenance tags (`provenance`) and the config
as logged, with the tracking URI's password redacted (`logged_config`).
"""

from __future__ import annotations

import subprocess
from importlib import metadata

from tasks.config import PROJECT_ROOT, PipelineConfig
from tasks.tracking_uri import redact

PACKAGES = ("torch", "torchvision", "torch-pruning", "prefect", "mlflow", "pandas", "numpy", "pydantic")


def git_state() -> dict[str, str]:
    def git(*args):
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"git_commit": "unknown", "git_dirty": "unknown"}
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"git_commit": head.stdout.strip(), "git_dirty": str(dirty).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def prefect_context() -> dict[str, str]:
    from prefect.runtime import deployment, flow_run

    return {"prefect_flow_run_id": str(flow_run.id or ""), "prefect_deployment": str(deployment.name or "")}


def provenance(cfg: PipelineConfig, flow_name: str, tracking_uri: str) -> dict[str, str]:
    """Tags of a pipeline run: what ran, from which code, in which Prefect run; MLflow's own source tags too,
    so that the UI shows them."""
    git = git_state()
    tags = {"shrinkflow.flow": flow_name, "shrinkflow.config_hash": cfg.config_hash(), "seed": str(cfg.seed),
            "source": cfg.source, "tracking_uri": redact(tracking_uri), **git, **prefect_context(),
            "mlflow.source.name": f"flows/{flow_name}.py", "mlflow.source.type": "JOB"}
    if git["git_commit"] != "unknown":
        tags["mlflow.source.git.commit"] = git["git_commit"]
    return tags


def logged_config(cfg: PipelineConfig) -> dict:
    config = cfg.model_dump(mode="json")
    if config["tracking"]["uri"]:
        config["tracking"]["uri"] = redact(config["tracking"]["uri"])
    return config
