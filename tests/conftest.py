"""Shared fixtures. Prefect and MLflow settings are environment variables read at import time, so they
are set here, before any test module imports prefect or mlflow."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

_STATE = Path(tempfile.mkdtemp(prefix="shrinkflow-tests-"))
atexit.register(shutil.rmtree, _STATE, ignore_errors=True)
os.environ.setdefault("PREFECT_HOME", str(_STATE / "prefect"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{_STATE / 'mlflow-default.db'}")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
# The processes tests start (the CLI, `dask scheduler` and `dask worker`, DDP ranks) import this checkout's
# packages, not those of whichever checkout the virtual environment's editable install points to: a Dask
# scheduler that unpickled another checkout's flows/search.py refused every trial of this one.
_CHECKOUT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join([_CHECKOUT, *filter(None, [os.environ.get("PYTHONPATH")])])

# Under pytest-xdist (`make test` runs two workers) each worker, and every process its tests start, gets one
# thread: workers with two threads each on two cores wait for each other's threads. Set before torch is
# imported, and for the whole worker: session fixtures (the smoke pipeline) run before any test's fixtures,
# and a run reproduced later must see the same thread count as the run it reproduces.
TORCH_THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402 - conftest sets the environment first
import torch  # noqa: E402 - imported after OMP_NUM_THREADS is set

torch.set_num_threads(TORCH_THREADS)

from compression.data import load_fashion_mnist  # noqa: E402 - after the environment setup, like torch
from tasks.config import PROJECT_ROOT  # noqa: E402 - after the environment setup; the tests import it from here


@pytest.fixture(scope="session")
def fmnist():
    """The real Fashion-MNIST (official train split, official test split)."""
    train, test, _ = load_fashion_mnist(download=False)
    return train, test


# pytest-xdist hands out work in collection order (after the groups, the largest first): the modules with
# minute-long tests go first, so that neither worker is left running one of them while the other idles.
LONGEST_FIRST = ("test_service.py", "test_search.py", "test_concurrency.py", "test_reliability.py",
                 "test_families_pipeline.py", "test_families.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: number for number, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module stays in file order


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(TORCH_THREADS)
    yield


@pytest.fixture(scope="session")
def prefect():
    """One Prefect test server for the whole session (it takes 10-20 s to start); yields its API URL, which
    tests also give the pipelines they start as processes (each would otherwise start a server of its own, as
    users' local runs do; README's local run in tests/test_service.py still does, so that path stays tested)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield PREFECT_API_URL.value()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_commands(section_title: str) -> list[str]:
    """The commands of the first bash block under README's `## <section_title>`, continuation lines joined,
    comments dropped: what the tests run as printed."""
    import re

    text = (PROJECT_ROOT / "README.md").read_text()
    section = text[text.index(f"## {section_title}\n"):]
    start = section.index("```bash") + len("```bash")
    block = section[start:section.index("```", start)].replace("\\\n", " ")
    commands = [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.splitlines()]
    return [c for c in commands if c]


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory):
    """The MLflow store and output directory of the session's shared smoke pipeline."""
    root = tmp_path_factory.mktemp("smoke")
    return {"tracking.uri": f"sqlite:///{root / 'mlflow.db'}", "output_dir": str(root / "outputs")}


@pytest.fixture(scope="session")
def smoke_run(prefect, smoke_store):
    """configs/smoke.yaml run once for the session; several modules read its runs, files and registered model.
    Warnings and MLflow's log records of the run are kept under "_warnings" (no filter hides them)."""
    import logging
    import warnings

    from flows.compress import compress

    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(f"{record.name}: {record.getMessage()}")
    logging.getLogger("mlflow").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = compress("configs/smoke.yaml", dict(smoke_store))
    finally:
        logging.getLogger("mlflow").removeHandler(handler)
    return {**result, "_warnings": records + [f"{w.category.__name__}: {w.message}" for w in caught]}


def run_concurrent_pipelines(tmp_path: Path, tracking_uri: str, experiment: str, seeds=(0, 1, 2, 3),
                             prefect_api_url: str | None = None, extra_env: dict | None = None) -> None:
    """Smoke pipelines at once through the CLI, one per seed, each with its own Prefect home and
    temporary Prefect server, or all on the Prefect server at `prefect_api_url`; fails with the stderr of
    any that did not exit 0. (No quantization or ONNX export: they add minutes on 2 cores and nothing to
    what these runs check, the shared stores: 10 MLflow runs per pipeline.)"""
    import subprocess
    import sys

    procs = []
    for number, seed in enumerate(seeds):
        # One torch thread each: four processes with two threads each on two cores spend more time waiting
        # for each other's threads than training.
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / f"prefect-{number}"), "OMP_NUM_THREADS": "1",
               **(extra_env or {})}
        env.pop("PREFECT_API_URL", None)
        if prefect_api_url:
            env["PREFECT_API_URL"] = prefect_api_url
        cmd = [sys.executable, "-m", "cli", "run", "configs/smoke.yaml", "--set", f"seed={seed}",
               "--set", f"tracking.uri={tracking_uri}", "--set", f"output_dir={tmp_path / 'outputs'}",
               "--set", f"tracking.experiment={experiment}", "--set", f"name=p{number}-seed{seed}",
               "--set", f"register.model_name={experiment}-model", "--set", "export.onnx=false",
               "--set", "quantize.enabled=false"]
        procs.append(subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        assert "database is locked" not in err
