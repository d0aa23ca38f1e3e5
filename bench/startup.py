"""Start-up: import time of the CLI (`shrinkflow --help`, and `import cli.main`), and the time from
launching `shrinkflow run configs/smoke.yaml` to its first task starting (the load_data child run's start
time in MLflow), with a new Prefect home (cold: database migrations) and again with the same one (warm).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import PROJECT_ROOT, PYTHON, QUICK, QUICK_PIPELINE, WORK, prefect_env, save, say

REPEATS = 2 if QUICK else 5
# BENCH_QUICK=1: the smoke pipeline after its first task with the quick settings (what is timed comes before).
QUICK_SETTINGS = [arg for key, value in QUICK_PIPELINE.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def first_task(env: dict, uri: str, name: str) -> dict:
    from mlflow.tracking import MlflowClient

    started = time.time()
    proc = subprocess.run([str(Path(PYTHON).parent / "shrinkflow"), "run", "configs/smoke.yaml",
                           "--set", f"name={name}", "--set", f"tracking.uri={uri}",
                           "--set", f"output_dir={WORK / 'startup' / 'outputs'}",
                           "--set", "export.onnx=false", *(QUICK_SETTINGS if QUICK else [])], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True)
    total = time.time() - started
    if proc.returncode:
        sys.exit(f"shrinkflow run failed:\n{proc.stderr[-3000:]}")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    parent = client.search_runs([experiment.experiment_id], f"tags.`mlflow.runName` = '{name}-compress'")[0]
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    first = min(r.info.start_time for r in children) / 1000
    return {"to_pipeline_run_s": parent.info.start_time / 1000 - started, "to_first_task_s": first - started,
            "total_s": total}


def main() -> None:
    env = {**os.environ, **prefect_env("startup")}
    env.pop("PREFECT_API_URL", None)
    home = Path(env["PREFECT_HOME"])
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(WORK / "startup" / "outputs", ignore_errors=True)
    uri = f"sqlite:///{WORK / 'startup' / 'mlflow.db'}"
    say("start-up: CLI import")
    help_s = [timed([str(Path(PYTHON).parent / "shrinkflow"), "--help"], env) for _ in range(REPEATS)]
    import_s = [timed([PYTHON, "-c", "import cli.main"], env) for _ in range(REPEATS)]
    bare_s = [timed([PYTHON, "-c", "pass"], env) for _ in range(REPEATS)]
    say("start-up: first task, new Prefect home")
    cold = first_task(env, uri, "startup-cold")
    say("start-up: first task, same Prefect home")
    warm = first_task(env, uri, "startup-warm")
    save("startup", {"cli_help_s": statistics.median(help_s), "import_flows_cli_s": statistics.median(import_s),
                     "python_start_s": statistics.median(bare_s), "repeats": REPEATS, "cold": cold, "warm": warm,
                     "command": "python bench/startup.py"})


if __name__ == "__main__":
    main()
