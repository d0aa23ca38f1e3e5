"""What a search trial and a search's plan cost beyond training: the worker's allocator and the plan's
bisections (docs/benchmarks.md, section 7 (d))."""

import json
import os
import subprocess
import sys

import dask
import torch
from dask.distributed import Client, LocalCluster

from compression import search as policy
from compression.models import build_model
from flows.search import dask_runner
from tasks import search as search_tasks
from tasks.config import load_config

ALLOCATOR_PROBE = ("import os; from tasks.allocator import restore_allocator; "
                   "print(restore_allocator(), os.environ.get('MALLOC_TRIM_THRESHOLD_'), restore_allocator())")


def _probe(env: dict) -> str:
    result = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE], env=env, capture_output=True, text=True,
                            check=True, timeout=120)
    return result.stdout.strip()


def test_the_allocator_is_restored_only_where_malloc_trim_threshold_fixed_it():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    # glibc took both thresholds, the variable is gone for the trial's own processes, and once is enough
    assert _probe({**env, "MALLOC_TRIM_THRESHOLD_": "65536"}) == "True None False"
    assert _probe(env) == "False None False"


def _worker_environment() -> dict:
    return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}


def test_the_local_cluster_starts_its_workers_without_malloc_trim_threshold(monkeypatch):
    # A LocalCluster with Dask's defaults that an earlier test started in this process left the variable in
    # its environment (the nanny sets it here before it spawns); a search's flow process starts without it.
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    cfg = load_config("configs/search-quickstart.yaml", {"search.parallel": 1})
    dask_default = dask.config.get("distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_")
    assert dask_default is not None  # what the search undoes: Dask sets it for every worker by default
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": dask_default,
                          "distributed.worker.daemon": True}):  # restored on exit: dask_runner sets them
        runner = dask_runner(cfg)
        with LocalCluster(**runner.cluster_kwargs) as cluster, Client(cluster) as client:
            seen = client.submit(_worker_environment).result()
    assert seen["MALLOC_TRIM_THRESHOLD_"] is None
    assert seen["OMP_NUM_THREADS"] == "1"  # the rest of Dask's worker environment stays
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ  # nor put into this process's environment


def test_int8_choices_share_one_bisection_unless_the_budget_is_a_file_size(monkeypatch):
    torch.manual_seed(0)
    model = build_model("resnet18", 3, in_channels=1, input_size=28).eval()
    calls = []
    real_cost = policy.structural_cost

    def counted(*args, **kwargs):
        calls.append(kwargs["quantize"])
        return real_cost(*args, **kwargs)

    monkeypatch.setattr(policy, "structural_cost", counted)
    space = json.dumps({"trim.keep_per_stage": {"choices": [1]}, "quantize.enabled": {"choices": [True, False]}})
    cfg = load_config("configs/search-quickstart.yaml", {"search.space": space})
    limit = 0.1 * real_cost(model, "macs", 0.0, keep_per_stage=None)
    widths = search_tasks._widths(cfg, model, limit, {}, search_tasks._ratio_bounds(cfg, model))
    assert widths[search_tasks.width_key(1, True)] == widths[search_tasks.width_key(1, False)] is not None
    macs_calls = len(calls)
    assert macs_calls > 0 and not any(calls)

    calls.clear()
    size_cfg = load_config("configs/search-quickstart.yaml",
                           {"search.space": space, "search.budget.metric": "size_bytes"})
    size_limit = 0.2 * real_cost(model, "size_bytes", 0.0, keep_per_stage=None)
    sizes = search_tasks._widths(size_cfg, model, size_limit, {},
                                 search_tasks._ratio_bounds(size_cfg, model))
    assert set(calls) == {True, False}  # an int8 file is smaller: each choice has its own width
    assert sizes[search_tasks.width_key(1, True)] < sizes[search_tasks.width_key(1, False)]
