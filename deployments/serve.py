"""Serve the process-pool deployments of deployments/prefect.yaml from this one process, with no work pool
and no worker (for development). prefect.yaml is the one definition of the deployments; this reads it.

    PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/python deployments/serve.py
then, from another shell: prefect deployment run 'compress/on-demand' --param config=configs/smoke.yaml
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

SPEC = Path(__file__).with_name("prefect.yaml")
POOL = "shrinkflow-process"


def _flow(entrypoint: str):
    path, name = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


def deployments():
    """Every deployment of prefect.yaml on the process pool, with its parameters and active schedules."""
    built = []
    for spec in yaml.safe_load(SPEC.read_text())["deployments"]:
        if spec.get("work_pool", {}).get("name") != POOL:
            continue
        crons = [s["cron"] for s in spec.get("schedules", []) if s.get("active", True)]
        built.append(_flow(spec["entrypoint"]).to_deployment(
            name=spec["name"], description=spec.get("description"), parameters=spec.get("parameters", {}),
            cron=crons[0] if crons else None))
    return built


if __name__ == "__main__":
    from prefect import serve

    serve(*deployments())
