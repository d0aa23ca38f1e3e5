"""What every benchmark shares: where it works, how it records results, what machine it ran on.

Each script writes bench/results/<name>.json; bench/report.py turns them into docs/benchmarks.md.
BENCH_QUICK=1 shrinks every workload (to check the scripts, not to publish numbers) and keeps what it writes
under bench/.work/quick/ (its stores, outputs, results and the page), so a check never overwrites published
results nor the caches of a full run, and can run beside one.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.config import PROJECT_ROOT

QUICK = os.environ.get("BENCH_QUICK") == "1"
WORK = PROJECT_ROOT / "bench" / ".work" / ("quick" if QUICK else "")
RESULTS = WORK / "results" if QUICK else PROJECT_ROOT / "bench" / "results"
PYTHON = sys.executable

# What every BENCH_QUICK=1 pipeline run overrides (on top of a benchmark's own settings): every stage still runs
# (evaluation, fidelity, export included), on a few images per class, one epoch each and one pass of each
# measurement. The fidelity stage's corruptions, severities and occlusion maps cost the most on 2 cores: two
# corruptions at one severity and one occluded image still go through every part of the report.
QUICK_PIPELINE = {
    "data.train_per_class": 30, "data.val_per_class": 10, "data.test_per_class": 30, "data.unlabeled_per_class": 0,
    "finetune.train.epochs": 1, "distill.train.epochs": 1, "prune.train.epochs": 1, "prune.iterative_steps": 1,
    "quantize.calibration_size": 32, "evaluate.latency_repeats": 5, "evaluate.speed_rounds": 1,
    "evaluate.throughput_seconds": 0.05, "evaluate.throughput_batch": 16, "fidelity.bootstrap": 100,
    "fidelity.corruption_images": 10, "fidelity.corruptions": ["gaussian_noise", "contrast"],
    "fidelity.severities": [1], "fidelity.attribution_images": 1, "fidelity.grid_images": 4,
}


def prefect_env(name: str) -> dict:
    """Environment for a benchmark process with its own Prefect home and MLflow store under bench/.work."""
    home = WORK / name
    home.mkdir(parents=True, exist_ok=True)
    env = {"PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
           "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "GIT_PYTHON_REFRESH": "quiet", "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    env.pop("PREFECT_API_URL", None)
    return env


def use_prefect_env(name: str) -> Path:
    """Set prefect_env(name) in this process; call before importing prefect or mlflow."""
    os.environ.update(prefect_env(name))
    os.environ.pop("PREFECT_API_URL", None)
    return WORK / name


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_store(work: Path) -> str:
    """Forget a benchmark's earlier outputs, MLflow store and Prefect home; the store's tracking URI."""
    import shutil

    # Every outputs* directory: a benchmark that compares runs in outputs of their own (bench/search.py's
    # 1 against 2 workers) must not find the epoch checkpoints of its previous run there and resume from them.
    for target in [*work.glob("outputs*"), *(work / stale for stale in ("mlflow.db", "mlruns", "prefect"))]:
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    return f"sqlite:///{work / 'mlflow.db'}"


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"benchmark": name, "quick": QUICK, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "git_commit": _git("rev-parse", "--short", "HEAD"),
            "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
            "machine": machine(), **data}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"[bench] wrote {path.relative_to(PROJECT_ROOT)}", flush=True)
    return path


def kept_parts(parser, name: str, parts: list[str], every_part) -> dict:
    """For a benchmark run with `--only`: the other parts of bench/results/<name>.json, as its earlier full run
    measured them, with the commit they were measured at: each one's in `part_commits` (a part missing there
    was measured at the results' `git_commit`), the oldest run's in `other_parts_commit`."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        parser.error(f"--only needs an earlier full run's {path}; run without --only first")
    previous = json.loads(path.read_text())
    kept = {k: v for k, v in previous.items() if k in every_part and k not in parts}
    earlier = previous.get("part_commits", {})
    return {**kept, "other_parts_commit": previous.get("other_parts_commit", previous["git_commit"]),
            "part_commits": {k: earlier.get(k, previous["git_commit"]) for k in kept}}


def load_results() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpuinfo(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo ("" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def vector_isa() -> str:
    """The widest vector instructions the CPU has. Machines that all call themselves "AMD EPYC" here differ
    by this several times in training speed, and only those with AVX512-BF16 or AMX take `amp: bf16`."""
    flags = set(_cpuinfo("flags").split())
    for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX-512"),
                       ("avx2", "AVX2")):
        if flag in flags:
            return name
    return "no AVX2" if flags else "unknown"


def machine() -> dict:
    import torch

    cpu = _cpuinfo("model name") or "unknown"
    commit = _git("rev-parse", "--short", "HEAD")
    from importlib import metadata

    packages = {}
    for name in ("torch", "torchvision", "torch-pruning", "prefect", "mlflow", "onnxruntime", "numpy"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    return {"cpu": cpu, "vector": vector_isa(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "mkldnn": torch.backends.mkldnn.is_available(), "python": platform.python_version(),
            "os": platform.platform(), "git_commit": commit, "packages": packages}


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
