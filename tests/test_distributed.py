"""Data-parallel training: torch DDP processes on gloo, started by a stage with torch's own launcher; loader
workers inside a Prefect task and a Dask worker."""

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from compression.data import load_dataset
from compression.fit_plan import FitPlan, train_on
from compression.models import build_model
from compression.train_config import TrainConfig
from tasks.config import DistributedConfig
from tasks.distributed import fit_distributed
from tests.conftest import PROJECT_ROOT, free_port
from tests.test_image_folder import write_folder


def _small():
    return load_dataset(classes=[5, 7, 9], train_per_class=32, val_per_class=10, test_per_class=10, download=False)


def _model():
    torch.manual_seed(0)
    return build_model("resnet18", 3, 1, 28)


# BatchNorm frozen: each process would otherwise normalise its half batch with its own statistics.
EXACT = TrainConfig(epochs=2, batch_size=16, optimizer="sgd", lr=0.05, freeze_norm=True, augment=True)


def _largest_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values())
               if x.is_floating_point())


def assert_trained_as_one(initial: torch.nn.Module, alone: torch.nn.Module, together: torch.nn.Module) -> None:
    """The processes' model is the one process's, up to float order. Sums in another order (the thread count
    and the per-process batch pick other kernels) are amplified over the steps by ReLU and max-pool decisions:
    on some CPUs the weights then part by about a hundredth of how far training moved them, on others by less
    than 1e-5. A wrong shard, epoch order or gradient average moves them about as far as training does
    (another seed's data order, or a doubled step, moves them most of that way)."""
    moved = _largest_difference(alone, initial)
    assert _largest_difference(alone, together) < 0.05 * moved


def test_two_gloo_processes_train_as_one_process_with_the_same_global_batch(tmp_path):
    bundle, model = _small(), _model()
    alone, together = copy.deepcopy(model), copy.deepcopy(model)
    one = train_on(alone, bundle, EXACT, FitPlan(), name="one")
    two = fit_distributed(DistributedConfig(processes_per_node=2), None, together, bundle, EXACT, FitPlan(), None,
                          "train", tmp_path / "checkpoints", "two", "")
    assert_trained_as_one(model, alone, together)
    assert [r["train_loss"] for r in two.history] == pytest.approx([r["train_loss"] for r in one.history], rel=2e-3)
    assert [r["val_accuracy"] for r in two.history] == pytest.approx([r["val_accuracy"] for r in one.history],
                                                                    abs=1 / 30 + 1e-6)  # one val image of 30
    assert (tmp_path / "checkpoints" / "last.pt").is_file()  # written by the leader


def _decode_everything(root: str) -> list[int]:
    """Labels of one epoch of a streamed folder, decoded by two loader workers."""
    import multiprocessing

    bundle = load_dataset("image-folder", data_dir=root, image_size=32, val_per_class=1, loader_workers=2)
    labels = [y.tolist() for _, y in bundle.batches("train", 4, train=True, augment=True)]
    return [multiprocessing.current_process().daemon, sum(labels, [])]


@pytest.mark.xdist_group("smoke")  # on the worker that has started a Prefect test server already
def test_loader_workers_start_inside_a_prefect_task(prefect, tmp_path):
    from prefect import flow, task

    root = str(write_folder(tmp_path / "images", per_class=5))

    @flow
    def decode_in_a_task():
        return task(_decode_everything)(root)

    # forkserver workers: a forked one would die in a Prefect run
    assert decode_in_a_task()[1] == _decode_everything(root)[1]


def test_loader_workers_start_inside_a_dask_worker(tmp_path):
    import dask
    from distributed import Client, LocalCluster

    root = str(write_folder(tmp_path / "images", per_class=5))
    expected = _decode_everything(root)[1]
    # what the search's local cluster sets (Dask's MALLOC_TRIM_THRESHOLD_ would also stay in this process)
    with dask.config.set({"distributed.worker.daemon": False,
                          "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            daemonic, labels = client.submit(_decode_everything, root).result(timeout=120)
    assert daemonic is False and labels == expected


@pytest.mark.slow
def test_two_nodes_on_localhost_train_one_stage_together(tmp_path):
    """Two launches with one rendezvous address, as on two machines: the pipeline's and `shrinkflow node`."""
    bundle, model = _small(), _model()
    alone, together = copy.deepcopy(model), copy.deepcopy(model)
    train_on(alone, bundle, EXACT, FitPlan(), name="one")
    endpoint = f"127.0.0.1:{free_port()}"
    node = subprocess.Popen([str(Path(sys.executable).parent / "shrinkflow"), "node", "--rdzv-endpoint", endpoint,
                             "--nnodes", "2", "--nproc-per-node", "1", "--once"], cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        settings = DistributedConfig(processes_per_node=1, nodes=2, rdzv_endpoint=endpoint)
        fit_distributed(settings, None, together, bundle, EXACT, FitPlan(), None, "train", tmp_path / "ckpt",
                        "two-nodes", "")
        output, _ = node.communicate(timeout=120)
    finally:
        node.kill()
    assert node.returncode == 0 and "joined 1 job(s)" in output, output[-2000:]
    assert_trained_as_one(model, alone, together)


def _pipeline(tmp_path: Path, uri: str) -> list[str]:
    return [sys.executable, "-m", "cli", "run", "configs/smoke.yaml", "--set", f"tracking.uri={uri}",
            "--set", f"output_dir={tmp_path / 'outputs'}", "--set", "tracking.experiment=ddp",
            "--set", "distributed.processes_per_node=2", "--set", "distill.train.epochs=4",
            "--set", "distill.train.checkpoint_seconds=0", "--set", "export.onnx=false",
            "--set", "register.model_name=ddp-model"]


def _ranks_of(job_dir: Path) -> list[int]:
    """Pids of the training processes running a job of this test (their command line names its job file)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if "tasks.ddp_worker" in cmdline and str(job_dir) in cmdline and "torch.distributed.run" not in cmdline:
            found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_a_pipeline_on_two_processes_survives_a_killed_rank_and_registers(prefect, tmp_path):
    """kill -9 of one training process mid-distillation: the stage fails in one line, no run stays RUNNING;
    the run after it resumes from the leader's last checkpoint and registers a model."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": prefect}
    first = subprocess.Popen(_pipeline(tmp_path, uri), cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline, victims = time.time() + 400, []
    while time.time() < deadline and first.poll() is None and not victims:
        if list((tmp_path / "outputs" / "distill").glob("*/checkpoints-kd/last.pt")):
            victims = _ranks_of(tmp_path / "outputs" / "distill")
        time.sleep(0.2)
    assert victims, "distillation never checkpointed on two processes"
    os.kill(max(victims), signal.SIGKILL)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 1, err[-3000:]
    assert err.count("\n") == 1 and "distributed training failed: training process" in err and "SIGKILL" in err
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ddp")
    assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    second = subprocess.run(_pipeline(tmp_path, uri), cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                            timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming after epoch" in second.stdout and "2 training processes" in second.stdout
    assert "registered" in second.stdout and "models:/ddp-model@" in second.stdout
