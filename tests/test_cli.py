import subprocess
import sys

from tasks.config import PROJECT_ROOT as ROOT


def shrinkflow(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)


def test_bad_input_is_one_line_and_exit_2():
    cases = [
        (["run", "configs/nowhere.yaml"], "config file configs/nowhere.yaml not found"),
        (["run", "configs/smoke.yaml", "--set", "prune.ratio=1.5"], "prune.ratio: Input should be less than 1"),
        (["run", "configs/smoke.yaml", "--set", "distill.temperature=0"], "distill.temperature"),
        (["run", "configs/smoke.yaml", "--set", "noequals"], "expected key=value"),
        (["run", "configs/smoke.yaml", "--set", "model.stem=tiny"], "model.stem: Input should be 'torchvision'"),
        (["run", "configs/smoke.yaml", "--set", "source=models:/upstream@champion", "--set", "model.stem=no-pool"],
         "model.stem 'no-pool' applies to scratch: and torchvision: sources"),
        (["run", "configs/smoke.yaml", "--set", "distill.train.amp=fp16"], "invalid training setting amp='fp16'"),
        (["run", "configs/smoke.yaml", "--set", "prune.train.device=mps", "--set", "prune.train.amp=bf16"],
         "prune.train.amp: bf16: the mps device here has no native bf16"),
    ]
    for args, message in cases:
        proc = shrinkflow(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, proc.stderr)


def test_unreachable_tracking_server_fails_fast(tmp_path):
    proc = shrinkflow("compare", "--tracking-uri", "http://127.0.0.1:9/")
    assert proc.returncode == 2
    assert "MLflow tracking server http://127.0.0.1:9/ is unreachable" in proc.stderr


def test_a_config_mistake_is_answered_before_torch_mlflow_or_prefect_are_loaded():
    probe = ("import sys\nfrom cli.main import main\n"
             "code = main(['run', 'configs/smoke.yaml', '--set', 'prune.ratio=1.5'])\n"
             "print(code, sorted(m for m in ('torch', 'mlflow', 'prefect') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "2 []", proc.stdout + proc.stderr
    assert proc.stderr.strip() == "shrinkflow: error: configs/smoke.yaml: prune.ratio: Input should be less than 1"


def test_reproduce_a_run_without_its_config_is_one_line_and_exit_2(tmp_path):
    """A pipeline run stopped before it logged its config (killed at start) cannot be reproduced: bad input."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("stopped"), tags={"shrinkflow.kind": "pipeline"})
    client.set_terminated(run.info.run_id, "FAILED")
    proc = shrinkflow("reproduce", run.info.run_id, "--tracking-uri", uri)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"shrinkflow: error: run {run.info.run_id} has no logged config.yaml to reproduce"], proc.stderr
