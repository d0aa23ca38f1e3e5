"""Served latency of the demo's champion on each runtime, through MLflow's real scoring server on loopback.

The quickstart pipeline (cached after the first run) gives the pruned float model, its torch int8 copy and
their ONNX files (float, and onnxruntime's int8). Each becomes the registered pyfunc for one runtime (torch
eager, torch int8, ORT float, ORT int8), saved with the arguments register uses, and each is served by
its own `mlflow models serve` process (one thread each). Requests of 1 and of 64 real test images (uint8
JSON) take turns over the four servers, round after round, so that machine noise hits all of them alike.
The bare pyfunc call and the bare model call (logits only) on the same images, in this process, show what
the server adds (HTTP, JSON parsing, DataFrame to JSON).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import PROJECT_ROOT, QUICK, QUICK_PIPELINE, Timer, free_port, save, say, use_prefect_env

RUNTIMES = {  # name: (candidate, runtime)
    "torch eager": ("pruned", "torch"), "torch int8": ("quantized_static", "torch"),
    "ORT float": ("pruned", "onnxruntime"), "ORT int8": ("quantized_static", "onnxruntime")}
ROUNDS = 10 if QUICK else 200
BATCHES = (1, 64)


def pipeline_rows(work: Path) -> tuple[dict, object]:
    """The quickstart's evaluated rows with their files (pretrain and compress, cached after the first run)."""
    from flows.compress import compress
    from flows.pretrain import pretrain
    from tasks.config import load_config

    store = {"tracking.uri": os.environ["MLFLOW_TRACKING_URI"], "output_dir": str(work / "outputs"),
             **(QUICK_PIPELINE if QUICK else {})}
    say("serving: the upstream model and the quickstart pipeline (cached after the first run)")
    pretrain("configs/pretrain.yaml", store)
    result = compress("configs/quickstart.yaml", store)
    cfg = load_config("configs/quickstart.yaml", store)
    return _rows_with_files(result["run_id"], store["tracking.uri"]), cfg


def _rows_with_files(run_id: str, uri: str) -> dict:
    """evaluation.json rows plus the ONNX paths from exports.json (the report's table drops file paths)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    tags = client.get_run(run_id).data.tags  # stage.<name>.run_id: the stage's run, cached or not
    by_stage = {stage: tags[f"stage.{stage}.run_id"] for stage in ("evaluate", "export")}
    rows = json.loads(Path(client.download_artifacts(by_stage["evaluate"], "evaluation.json")).read_text())["rows"]
    exports = json.loads(Path(client.download_artifacts(by_stage["export"], "exports.json")).read_text())["exports"]
    return {r["candidate"]: {**r, "onnx_path": exports.get(r["candidate"], {}).get("path")} for r in rows}


def save_models(rows: dict, cfg, work: Path, example) -> dict[str, Path]:
    """One pyfunc model directory per runtime, made as register makes the registered model."""
    import mlflow.pyfunc

    from compression.checkpoint import read_model_file
    from tasks.data import dataset_labels
    from tasks.register import pyfunc_arguments

    dirs = {}
    for name, (candidate, runtime) in RUNTIMES.items():
        row = rows[candidate]
        labels = dataset_labels(cfg, read_model_file(row["path"])["meta"]["classes"])
        target = work / "models" / name.replace(" ", "-")
        shutil.rmtree(target, ignore_errors=True)
        onnx = row["onnx_path"] if runtime == "onnxruntime" else None
        mlflow.pyfunc.save_model(str(target), **pyfunc_arguments(row["path"], onnx, runtime, labels, 1, example))
        dirs[name] = target
    return dirs


def start_servers(dirs: dict[str, Path], work: Path) -> dict[str, tuple]:
    env = {**os.environ, "PATH": f"{PROJECT_ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    servers = {}
    for name, path in dirs.items():
        port = free_port()
        log = open(work / f"serve-{path.name}.log", "w")
        proc = subprocess.Popen(["mlflow", "models", "serve", "-m", str(path), "--env-manager", "local", "-h",
                                 "127.0.0.1", "-p", str(port), "-w", "1"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        servers[name] = (proc, f"http://127.0.0.1:{port}")
    for name, (proc, url) in servers.items():
        _wait_up(proc, url, name)
    return servers


def _wait_up(proc, url: str, name: str) -> None:
    import httpx

    deadline = time.time() + 240
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"scoring server for {name} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(1)
    raise RuntimeError(f"scoring server for {name} did not start")


def served_latency(servers: dict, images) -> dict:
    """Per runtime and batch: request latencies (ms), the requests interleaved across runtimes."""
    import httpx

    bodies = {b: json.dumps({"inputs": images[:b].tolist()}) for b in BATCHES}
    times = {name: {b: [] for b in BATCHES} for name in servers}
    with httpx.Client(timeout=60, headers={"Content-Type": "application/json"}) as client:
        for _name, (_, url) in servers.items():  # warm-up: first requests load lazily initialised kernels
            for b in BATCHES:
                for _ in range(5):
                    client.post(f"{url}/invocations", content=bodies[b]).raise_for_status()
        for _ in range(ROUNDS):
            for b in BATCHES:
                for name, (_, url) in servers.items():
                    started = time.perf_counter()
                    client.post(f"{url}/invocations", content=bodies[b]).raise_for_status()
                    times[name][b].append(1000 * (time.perf_counter() - started))
    return times


def bare_latency(dirs: dict[str, Path], images) -> dict:
    """The same pyfunc models called in this process (one thread): the whole predict, and the model alone."""
    import mlflow.pyfunc
    import torch

    from compression.inference import as_images

    torch.set_num_threads(1)
    models = {name: mlflow.pyfunc.load_model(str(path)) for name, path in dirs.items()}
    times = {name: {f"{kind}{b}": [] for kind in ("predict_", "model_") for b in BATCHES} for name in models}
    for _ in range(ROUNDS):
        for b in BATCHES:
            for name, model in models.items():
                predictor = model.unwrap_python_model().predictor
                x = as_images(images[:b], predictor.channels, predictor.size)
                with Timer() as whole:
                    model.predict(images[:b])
                with Timer() as bare:
                    predictor.logits(x)
                times[name][f"predict_{b}"].append(1000 * whole.seconds)
                times[name][f"model_{b}"].append(1000 * bare.seconds)
    return times


def server_parts(model_dir: Path, images) -> dict:
    """MLflow's own request handling, in this process: JSON body to model input, and predictions to JSON."""
    import io

    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server

    model = mlflow.pyfunc.load_model(str(model_dir))
    parts = {}
    for b in BATCHES:
        body = json.dumps({"inputs": images[:b].tolist()})
        parse, answer = [], []
        output = model.predict(images[:b])
        for _ in range(ROUNDS):
            with Timer() as t:
                scoring_server._parse_json_data(body, model.metadata, model.metadata.get_input_schema())
            parse.append(1000 * t.seconds)
            with Timer() as t:
                scoring_server.predictions_to_json(output, io.StringIO())
            answer.append(1000 * t.seconds)
        parts[str(b)] = {"parse_request": _summary(parse), "answer_to_json": _summary(answer),
                         "request_bytes": len(body)}
    return parts


def _summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"p50_ms": statistics.median(ordered), "p95_ms": ordered[int(0.95 * (len(ordered) - 1))], "n": len(ordered)}


def main() -> None:
    work = use_prefect_env("serving")
    rows, cfg = pipeline_rows(work)
    from tasks.data import get_bundle

    images = get_bundle(cfg).test.images[:64].numpy()  # real test images, uint8 [64, 1, 28, 28]
    dirs = save_models(rows, cfg, work, images[:1])
    say("serving: four scoring servers, one per runtime")
    servers = start_servers(dirs, work)
    try:
        say(f"serving: {ROUNDS} interleaved rounds of 1- and 64-image requests")
        served = served_latency(servers, images)
    finally:
        for proc, _ in servers.values():
            os.killpg(proc.pid, signal.SIGTERM)
    say("serving: the same calls without the server")
    bare = bare_latency(dirs, images)
    results = {"rounds": ROUNDS, "runtimes": {name: list(v) for name, v in RUNTIMES.items()},
               "candidates": {c: {k: rows[c][k] for k in ("accuracy", "params", "macs", "size_bytes")}
                              for c in ("pruned", "quantized_static")},
               "served": {name: {str(b): _summary(v) for b, v in by_batch.items()}
                          for name, by_batch in served.items()},
               "bare": {name: {k: _summary(v) for k, v in by_kind.items()} for name, by_kind in bare.items()},
               "server_parts": server_parts(dirs["ORT float"], images),
               "command": "python bench/serving.py"}
    save("serving", results)


if __name__ == "__main__":
    main()
