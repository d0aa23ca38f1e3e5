"""shrinkflow as a service, for real on 127.0.0.1: Prefect server, MLflow server, a process worker, the
deployments of deployments/prefect.yaml, `prefect deployment run --param`, and the MLflow REST API."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import PROJECT_ROOT, run_concurrent_pipelines

BIN = Path(sys.executable).parent
STACK = PROJECT_ROOT / "deployments" / "stack.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    port = _free_port()
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


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request, tmp_path_factory):
    state = tmp_path_factory.mktemp(f"stack-{request.param}")
    env = {**os.environ, "STACK_DIR": str(state), "PREFECT_PORT": str(_free_port()),
           "MLFLOW_PORT": str(_free_port()), "BIN": str(BIN), "PREFECT_WORKER_QUERY_SECONDS": "2"}
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "DATABASE_URL"):
        env.pop(key, None)
    if request.param == "postgresql":
        env["DATABASE_URL"] = request.getfixturevalue("postgres_url")
    try:
        started = subprocess.run([str(STACK), "start"], env=env, timeout=180, capture_output=True, text=True)
        assert started.returncode == 0, started.stdout + started.stderr
        exports = subprocess.run([str(STACK), "env"], env=env, check=True, capture_output=True, text=True).stdout
        for line in exports.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value
        env["PREFECT_HOME"] = str(state / "prefect-home")
        yield {"env": env, "state": state, "backend": request.param}
    finally:
        subprocess.run([str(STACK), "stop"], env=env, timeout=60)


def _prefect(stack, *args, timeout=120):
    return subprocess.run([str(BIN / "prefect"), *args], cwd=PROJECT_ROOT, env=stack["env"], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_deploy_run_with_params_on_a_worker_and_find_the_runs_over_mlflow_rest(stack, tmp_path):
    env = stack["env"]
    subprocess.run([str(STACK), "worker"], env=env, check=True, timeout=120)
    deploy = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml",
         "--name", "compress/nightly", "--name", "compress/on-demand", "--name", "pretrain/on-demand"],
        cwd=PROJECT_ROOT, env={**env, "SHRINKFLOW_HOME": str(PROJECT_ROOT)}, capture_output=True, text=True,
        timeout=300)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr

    # the nightly schedule is registered on the server
    api = env["PREFECT_API_URL"]
    nightly = httpx.get(f"{api}/deployments/name/compress/nightly").raise_for_status().json()
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert nightly["work_pool_name"] == "shrinkflow-process"

    overrides = {"prune.ratio": 0.6, "output_dir": str(tmp_path / "outputs"), "tracking.experiment": "service",
                 "export.onnx": False}
    run = _prefect(stack, "deployment", "run", "compress/on-demand", "--param", "config=configs/smoke.yaml",
                   "--param", f"overrides={json.dumps(overrides)}", "--watch", "--watch-timeout", "600", timeout=700)
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout + run.stderr + \
        (stack["state"] / "worker.log").read_text()[-3000:]

    mlflow_url = env["MLFLOW_TRACKING_URI"]
    experiment = httpx.get(f"{mlflow_url}/api/2.0/mlflow/experiments/get-by-name",
                           params={"experiment_name": "service"}).raise_for_status().json()["experiment"]
    runs = httpx.post(f"{mlflow_url}/api/2.0/mlflow/runs/search",
                      json={"experiment_ids": [experiment["experiment_id"]], "max_results": 100}
                      ).raise_for_status().json()["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [r for r, t in zip(runs, tags) if t.get("shrinkflow.kind") == "pipeline"]
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    parent_tags = {t["key"]: t["value"] for t in parents[0]["data"]["tags"]}
    assert parent_tags["prefect_deployment"] == "on-demand" and parent_tags["prefect_flow_run_id"]
    params = {p["key"]: p["value"] for p in parents[0]["data"]["params"]}
    assert params["prune.ratio"] == "0.6"
    children = [r for r, t in zip(runs, tags) if t.get("mlflow.parentRunId") == parents[0]["info"]["run_id"]]
    assert len(children) == 10 and all(c["info"]["status"] == "FINISHED" for c in children)
    evaluate = next(c for c in children if c["info"]["run_name"] == "evaluate")
    metrics = {m["key"] for m in evaluate["data"]["metrics"]}
    assert {"teacher.accuracy", "pruned.accuracy", "pruned.latency_p50_ms"} <= metrics


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
    assert {("compress", "nightly"), ("compress", "on-demand"), ("pretrain", "on-demand"),
            ("compress", "nightly-docker")} <= set(by_name)
    assert by_name[("compress", "nightly")]["schedules"][0]["cron"] == "0 2 * * *"
    assert "schedules" not in by_name[("compress", "on-demand")]
    assert by_name[("compress", "nightly-docker")]["work_pool"]["name"] == "shrinkflow-docker"
    assert by_name[("compress", "nightly-docker")]["pull"][0]["prefect.deployments.steps.set_working_directory"]
    for (flow_name, _), d in by_name.items():
        path, fn = d["entrypoint"].split(":")
        assert (PROJECT_ROOT / path).is_file() and f"def {fn}(" in (PROJECT_ROOT / path).read_text()


@pytest.mark.slow
def test_mlflow_ui_shows_the_runs_in_headless_chromium(stack, tmp_path):
    """Runs after the deployment test on the same stack: the UI lists the pipeline's runs."""
    chromium = shutil.which("chromium")
    if stack["backend"] != "sqlite":
        pytest.skip("the UI is checked once, on the SQLite stack")
    if chromium is None:
        pytest.skip("needs Debian's chromium (CI installs it)")
    url = stack["env"]["MLFLOW_TRACKING_URI"]
    experiment = httpx.get(f"{url}/api/2.0/mlflow/experiments/get-by-name",
                           params={"experiment_name": "service"}).raise_for_status().json()["experiment"]
    page = f"{url}/#/experiments/{experiment['experiment_id']}/runs"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1600,1000", "--virtual-time-budget=20000"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert "smoke-compress" in dom
    shot = PROJECT_ROOT / "outputs" / "test-artifacts" / "mlflow-ui.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([chromium, *flags, f"--screenshot={shot}", page], capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000


@pytest.mark.slow
def test_credentials_never_reach_params_tags_or_artifacts(stack, tmp_path, monkeypatch):
    if stack["backend"] != "sqlite":
        pytest.skip("checked once, on the SQLite stack")
    from mlflow.tracking import MlflowClient

    from flows.cli import main

    secret, s3_secret = "fake-pw-8c1f", "fake-s3-secret-77aa"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_secret)
    url = stack["env"]["MLFLOW_TRACKING_URI"]
    with_password = url.replace("http://", f"http://alice:{secret}@")
    code = main(["run", "configs/smoke.yaml", "--set", f"tracking.uri={with_password}",
                 "--set", f"output_dir={tmp_path / 'outputs'}", "--set", "tracking.experiment=secrets",
                 "--set", "name=secrets", "--set", "register.model_name=secrets-model"])
    assert code == 0
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("secrets")
    seen = []
    for run in client.search_runs([experiment.experiment_id]):
        seen += list(run.data.params.values()) + list(run.data.tags.values())
        for artifact in client.list_artifacts(run.info.run_id):
            if artifact.path.endswith((".yaml", ".json", ".md", ".csv")):
                seen.append(Path(client.download_artifacts(run.info.run_id, artifact.path, str(tmp_path))).read_text())
    for version in client.search_model_versions("name='secrets-model'"):
        seen += list(version.tags.values())
    text = "\n".join(seen)
    assert "alice:***@" in text and secret not in text and s3_secret not in text


@pytest.mark.slow
def test_four_concurrent_pipelines_into_one_mlflow_server(stack, tmp_path):
    if stack["backend"] != "sqlite":
        pytest.skip("checked once, on the SQLite stack")
    from mlflow.tracking import MlflowClient

    url, api = stack["env"]["MLFLOW_TRACKING_URI"], stack["env"]["PREFECT_API_URL"]
    completed = {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}
    before = httpx.post(f"{api}/flow_runs/count", json=completed).json()
    run_concurrent_pipelines(tmp_path, url, "concurrent-server", prefect_api_url=api)
    assert httpx.post(f"{api}/flow_runs/count", json=completed).json() == before + 4  # all on the shared server
    client = MlflowClient(url)
    runs = client.search_runs([client.get_experiment_by_name("concurrent-server").experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("shrinkflow.kind") == "pipeline"]
    assert sorted(r.data.tags["seed"] for r in parents) == ["0", "1", "2", "3"]
    assert all(r.info.status == "FINISHED" for r in runs) and len(runs) == 40
    assert all({"teacher.accuracy", "pruned.accuracy", "kd_gain"} <= set(r.data.metrics) for r in parents)


def test_serve_entry_point_builds_every_deployment():
    sys.path.insert(0, str(PROJECT_ROOT / "deployments"))
    try:
        import serve
    finally:
        sys.path.remove(str(PROJECT_ROOT / "deployments"))
    built = {(d.flow_name, d.name): d for d in serve.deployments()}
    assert set(built) == {("compress", "nightly"), ("compress", "on-demand"), ("pretrain", "on-demand")}
    assert built[("compress", "nightly")].schedules[0].schedule.cron == "0 2 * * *"
    assert built[("compress", "on-demand")].parameters["config"] == "configs/quickstart.yaml"
