"""shrinkflow as a service, for real on 127.0.0.1: Prefect server, MLflow server, a process worker, the
deployments of deployments/prefect.yaml, `prefect deployment run --param`, and the MLflow REST API."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import PROJECT_ROOT, free_port, readme_commands, run_concurrent_pipelines

BIN = Path(sys.executable).parent
STACK = PROJECT_ROOT / "deployments" / "stack.sh"




PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(command: str, **kwargs):
    return subprocess.run(["su", "postgres", "-c", command], check=True, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL cluster on loopback with databases prefect and mlflow (Debian's postgresql)."""
    if not (PG_BIN / "initdb").exists() or os.geteuid() != 0 or shutil.which("su") is None:
        pytest.skip("needs Debian's postgresql package and root (CI installs it)")
    data = Path(tempfile.mkdtemp(prefix="shrinkflow-pg-", dir="/tmp"))
    data.chmod(0o755)
    shutil.chown(data, "postgres", "postgres")
    port = free_port()
    _as_postgres(f"{PG_BIN}/initdb -D {data}/db -A trust -U postgres", timeout=120)
    _as_postgres(f"{PG_BIN}/pg_ctl -D {data}/db -l {data}/log -w -o '-p {port} -k {data} "
                 f"-c listen_addresses=127.0.0.1' start", timeout=120)
    try:
        for db in ("prefect", "mlflow"):
            _as_postgres(f"psql -h 127.0.0.1 -p {port} -U postgres -c 'CREATE DATABASE {db}'", timeout=60)
        yield f"postgresql://postgres:unused@127.0.0.1:{port}"
    finally:
        _as_postgres(f"{PG_BIN}/pg_ctl -D {data}/db -m fast stop", timeout=120)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, request):
    """The stack on PostgreSQL (where Debian's postgresql is installed, as in CI; README's service test covers
    SQLite), started by deployments/stack.sh on free ports, for the checks that need live servers."""
    state = tmp_path_factory.mktemp("stack")
    env = {**_clean_env(), "STACK_DIR": str(state), "PREFECT_PORT": str(free_port()),
           "MLFLOW_PORT": str(free_port()), "BIN": str(BIN), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    if (PG_BIN / "initdb").exists() and os.geteuid() == 0:
        env["DATABASE_URL"] = request.getfixturevalue("postgres_url")
    try:
        started = subprocess.run([str(STACK), "start"], env=env, timeout=180, capture_output=True, text=True)
        assert started.returncode == 0, started.stdout + started.stderr
        exports = subprocess.run([str(STACK), "env"], env=env, check=True, capture_output=True, text=True).stdout
        for line in exports.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value
        env["PREFECT_HOME"] = str(state / "prefect-home")
        yield {"env": env, "state": state}
    finally:
        subprocess.run([str(STACK), "stop"], env=env, timeout=60)


def _clean_env() -> dict:
    env = dict(os.environ)
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "DATABASE_URL"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def local_run():
    """What a user has done before the service section: a local run of the same config, with its own Prefect
    home and MLflow store, writing the same project outputs (and cache records) the stack will find."""
    local = Path(tempfile.mkdtemp(prefix="shrinkflow-local-"))
    env = {**_clean_env(), "PREFECT_HOME": str(local / "prefect-home"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{local / 'mlflow.db'}"}
    try:
        done = subprocess.run([sys.executable, "-m", "cli", "run", "configs/smoke.yaml"], cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr + done.stdout[-3000:]
        yield local
    finally:
        shutil.rmtree(local, ignore_errors=True)  # about 170 MB


def _stop_group(process: subprocess.Popen) -> None:
    """Ctrl-C in the worker's shell, as README says: SIGINT to its process group, and a second one when the worker
    is still up after 5 s (Prefect 3.8's worker takes the first as "stop after the running flow runs", and has
    stayed up for minutes with none running; on the second it SIGKILLs itself). SIGKILL after another 10 s."""
    for signum, seconds in ((signal.SIGINT, 5), (signal.SIGINT, 10), (signal.SIGKILL, 10)):
        os.killpg(process.pid, signum)
        for _ in range(int(seconds / 0.2)):
            process.poll()  # reap make, so that only live processes keep the group
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
    process.wait(timeout=10)


def _bash(script: str, env: dict, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _mlflow_runs(url: str, experiment: str) -> list[dict]:
    found = httpx.get(f"{url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": experiment})
    runs = httpx.post(f"{url}/api/2.0/mlflow/runs/search", json={
        "experiment_ids": [found.raise_for_status().json()["experiment"]["experiment_id"]], "max_results": 1000})
    return [{"id": r["info"]["run_id"], "status": r["info"]["status"], "start": int(r["info"]["start_time"]),
             "tags": {t["key"]: t["value"] for t in r["data"].get("tags", [])},
             "params": {p["key"]: p["value"] for p in r["data"].get("params", [])}}
            for r in runs.raise_for_status().json()["runs"]]


def _check_service_runs(env: dict, deploy_output: str) -> None:
    """The deployment runs completed; every stage run a pipeline names lives in the stack's MLflow; the
    first one ran every stage again (the local run's records name another store), training from the stage
    checkpoints; the second is cached; the third re-runs prune and what follows."""
    assert deploy_output.count("Completed") >= 3, deploy_output
    runs = _mlflow_runs(env["MLFLOW_TRACKING_URI"], "smoke")
    by_id = {r["id"]: r for r in runs}
    parents = sorted((r for r in runs if r["tags"].get("shrinkflow.kind") == "pipeline"), key=lambda r: r["start"])
    assert [p["params"]["prune.ratio"] for p in parents] == ["0.5", "0.5", "0.6"]
    assert all(r["status"] == "FINISHED" for r in runs)
    for parent in parents:
        assert parent["tags"]["prefect_deployment"] == "on-demand" and parent["tags"]["prefect_flow_run_id"]
        stages = {k: v for k, v in parent["tags"].items() if k.startswith("stage.") and k.endswith(".run_id")}
        assert len(stages) == 12 and all(by_id[run_id]["status"] == "FINISHED" for run_id in stages.values())
    cached = [{k.split(".")[1] for k, v in p["tags"].items() if k.endswith(".cached") and v == "true"} for p in parents]
    assert cached == [set(), {"finetune", "trim", "distill", "prune", "quantize", "evaluate", "fidelity", "export"},
                      {"finetune", "trim", "distill"}]
    finetune = by_id[parents[0]["tags"]["stage.finetune.run_id"]]
    assert finetune["tags"]["shrinkflow.resumed_from_epoch"] == "1"  # trained once, by the local run


def _check_bad_parameter_fails_in_one_line(env: dict) -> None:
    bad = _bash("""eval "$(deployments/stack.sh env)"
.venv/bin/prefect deployment run 'compress/on-demand' --param config=configs/smoke.yaml \\
    --param overrides='{"prune.ratio": 1.5}' --watch || true""", env, 600)
    failed = httpx.post(f"{env['PREFECT_API_URL']}/flow_runs/filter", json={
        "flow_runs": {"state": {"type": {"any_": ["FAILED"]}}}, "limit": 5, "sort": "EXPECTED_START_TIME_DESC"})
    messages = [run["state"]["message"] for run in failed.raise_for_status().json()]
    assert messages and "prune.ratio: Input should be less than 1" in messages[0], bad.stdout + bad.stderr
    assert "\n" not in messages[0].strip() and "Traceback" not in messages[0]


@pytest.mark.slow
def test_readme_service_section_in_order_after_a_local_run(local_run, tmp_path):
    """README's commands as printed, in order (the foreground worker in a second process, as in another
    shell), on free ports and a state directory of this test's own."""
    commands = readme_commands("Run as a service")
    assert commands[0] == "make server" and commands[-1] == "make server-stop" and "make worker" in commands
    env = {**_clean_env(), "STACK_DIR": str(tmp_path / "stack"), "PREFECT_PORT": str(free_port()),
           "MLFLOW_PORT": str(free_port()), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    worker_at = commands.index("make worker")
    worker = None
    try:
        setup = _bash("\n".join(commands[:worker_at]), env, 600)
        assert setup.returncode == 0, setup.stdout + setup.stderr
        api = f"http://127.0.0.1:{env['PREFECT_PORT']}/api"
        nightly = httpx.get(f"{api}/deployments/name/compress/nightly").raise_for_status().json()
        assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
        assert nightly["work_pool_name"] == "shrinkflow-process"
        worker = subprocess.Popen(["bash", "-c", commands[worker_at]], cwd=PROJECT_ROOT, env=env,
                                  stdout=open(tmp_path / "worker.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        runs = _bash("\n".join(commands[worker_at + 1:-1]), env, 1500)
        assert runs.returncode == 0, runs.stdout + runs.stderr + (tmp_path / "worker.log").read_text()[-3000:]
        env.update(PREFECT_API_URL=api, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{env['MLFLOW_PORT']}")
        _check_service_runs(env, runs.stdout)
        _check_bad_parameter_fails_in_one_line(env)
    finally:
        if worker is not None:
            _stop_group(worker)
        stopped = _bash(commands[-1], env, 120)
    assert stopped.returncode == 0 and "stopped prefect" in stopped.stdout, stopped.stdout + stopped.stderr
    assert not list((tmp_path / "stack").glob("*.pid"))


def test_docker_files_are_consistent_and_hold_no_secrets():
    compose = yaml.safe_load((PROJECT_ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "minio-init", "mlflow", "prefect-server", "worker", "worker-gpu"} <= set(services)
    for name in ("postgres", "minio", "mlflow", "prefect-server"):
        assert "healthcheck" in services[name], name
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert services["worker"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert "--serve-artifacts" in services["mlflow"]["command"] and "--allowed-hosts" in services["mlflow"]["command"]
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    # credentials only come from docker/.env: every secret-like variable is a ${...} reference
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "ACCESS_KEY", "_USER")):
                assert str(value).startswith("${"), f"{name}.{key} = {value}"
    example = dict(line.split("=", 1) for line in (PROJECT_ROOT / "docker" / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    text = (PROJECT_ROOT / "docker" / "compose.yaml").read_text()
    assert "POSTGRES_PASSWORD" in example and not any(v in text for k, v in example.items() if "PASSWORD" in k)
    assert ".env" in (PROJECT_ROOT / ".gitignore").read_text()
    dockerfile = (PROJECT_ROOT / "docker" / "Dockerfile").read_text()
    assert "USER shrinkflow" in dockerfile and "FROM python" in dockerfile and "AS runtime" in dockerfile
    assert "requirements.lock" in dockerfile and "ARG TORCH_INDEX" in dockerfile


def test_prefect_yaml_deployments():
    spec = yaml.safe_load((PROJECT_ROOT / "deployments" / "prefect.yaml").read_text())
    by_name = {(d["entrypoint"].split(":")[1], d["name"]): d for d in spec["deployments"]}
    assert {("compress", "nightly"), ("compress", "on-demand"), ("pretrain", "on-demand"), ("search", "on-demand"),
            ("stability", "on-demand"), ("predict", "on-demand"), ("predict", "nightly"),
            ("compress", "nightly-docker")} <= set(by_name)
    assert by_name[("stability", "on-demand")]["parameters"]["seeds"] == 3
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    deployed = [f"{flow}/{name}" for (flow, name), spec in by_name.items()
                if spec["work_pool"]["name"] == "shrinkflow-process"]
    assert all(f"--name {name}" in makefile for name in deployed), "make deploy misses a process-pool deployment"
    assert by_name[("predict", "nightly")]["schedules"][0]["cron"] == "0 4 * * *"
    assert by_name[("compress", "nightly")]["schedules"][0]["cron"] == "0 2 * * *"
    assert "schedules" not in by_name[("compress", "on-demand")]
    assert by_name[("compress", "nightly-docker")]["work_pool"]["name"] == "shrinkflow-docker"
    assert by_name[("compress", "nightly-docker")]["pull"][0]["prefect.deployments.steps.set_working_directory"]
    for (_flow_name, _), d in by_name.items():
        path, fn = d["entrypoint"].split(":")
        assert (PROJECT_ROOT / path).is_file() and f"def {fn}(" in (PROJECT_ROOT / path).read_text()


@pytest.mark.slow
@pytest.mark.xdist_group("stack")  # one worker starts the stack for both
def test_concurrent_pipelines_into_one_mlflow_server_and_no_credential_is_logged(stack, tmp_path):
    """Two pipelines at once on the stack's Prefect and MLflow servers, with a password in the tracking URI
    and an S3 secret in the environment: all finish, and neither secret reaches params, tags or artifacts.
    Registering reloads the model from the server: no copy of it is left in the temp directory."""
    from mlflow.tracking import MlflowClient

    url, api = stack["env"]["MLFLOW_TRACKING_URI"], stack["env"]["PREFECT_API_URL"]
    secret, s3_secret = "fake-pw-8c1f", "fake-s3-secret-77aa"
    completed = {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}
    before = httpx.post(f"{api}/flow_runs/count", json=completed).json()
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    run_concurrent_pipelines(tmp_path, url.replace("http://", f"http://alice:{secret}@"), "concurrent-server",
                             seeds=(0, 1), prefect_api_url=api,
                             extra_env={"AWS_SECRET_ACCESS_KEY": s3_secret, "TMPDIR": str(system_tmp)})
    assert not list(system_tmp.rglob("MLmodel"))
    assert httpx.post(f"{api}/flow_runs/count", json=completed).json() == before + 2  # both on the shared server
    client = MlflowClient(url)
    runs = client.search_runs([client.get_experiment_by_name("concurrent-server").experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("shrinkflow.kind") == "pipeline"]
    assert sorted(r.data.tags["seed"] for r in parents) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in runs)
    stages_of = {p.info.run_id: sorted(r.data.tags["shrinkflow.stage"] for r in runs
                                       if r.data.tags.get("mlflow.parentRunId") == p.info.run_id) for p in parents}
    first, second = stages_of.values()
    assert first == second and {"finetune", "distill", "fidelity", "register"} <= set(first)
    assert len(runs) == len(parents) * (1 + len(first))  # nothing but the two pipelines and their stages
    assert all({"teacher.accuracy", "pruned.accuracy", "kd_gain"} <= set(r.data.metrics) for r in parents)
    text = _everything_logged(client, runs, "concurrent-server-model", tmp_path)
    assert "alice:***@" in text and secret not in text and s3_secret not in text


def _everything_logged(client, runs, model_name: str, tmp_path: Path) -> str:
    seen = []
    for run in runs:
        seen += list(run.data.params.values()) + list(run.data.tags.values())
        for artifact in client.list_artifacts(run.info.run_id):
            if artifact.path.endswith((".yaml", ".json", ".md", ".csv")):
                seen.append(Path(client.download_artifacts(run.info.run_id, artifact.path, str(tmp_path))).read_text())
    for version in client.search_model_versions(f"name='{model_name}'"):
        seen += list(version.tags.values())
    return "\n".join(seen)


@pytest.mark.slow
@pytest.mark.xdist_group("stack")  # one worker starts the stack for both
def test_mlflow_ui_shows_the_runs_in_headless_chromium(stack, tmp_path):
    """Runs after the concurrency test on the same stack: the UI opens the experiment as model training and
    lists the pipeline runs with their dataset."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("needs Debian's chromium (CI installs it)")
    url = stack["env"]["MLFLOW_TRACKING_URI"]
    experiment = httpx.get(f"{url}/api/2.0/mlflow/experiments/get-by-name",
                           params={"experiment_name": "concurrent-server"}).raise_for_status().json()["experiment"]
    page = f"{url}/#/experiments/{experiment['experiment_id']}/runs"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1600,1000", "--virtual-time-budget=20000"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    # opened as model training (not as GenAI "Evaluation runs"), with the dataset, the source and the
    # registered model in the pipeline runs' row
    assert "Training runs" in dom and "p0-seed0-compress" in dom
    assert "fashion-mnist-train" in dom and "flows/compress.py" in dom and "concurrent-server-model" in dom
    shot = PROJECT_ROOT / "outputs" / "test-artifacts" / "mlflow-ui.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([chromium, *flags, f"--screenshot={shot}", page], capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000


def test_serve_entry_point_builds_every_deployment():
    sys.path.insert(0, str(PROJECT_ROOT / "deployments"))
    try:
        import serve
    finally:
        sys.path.remove(str(PROJECT_ROOT / "deployments"))
    built = {(d.flow_name, d.name): d for d in serve.deployments()}
    assert set(built) == {("compress", "nightly"), ("compress", "on-demand"), ("pretrain", "on-demand"),
                          ("search", "on-demand"), ("stability", "on-demand"), ("predict", "on-demand"),
                          ("predict", "nightly")}
    assert built[("compress", "nightly")].schedules[0].schedule.cron == "0 2 * * *"
    assert built[("compress", "on-demand")].parameters["config"] == "configs/quickstart.yaml"
