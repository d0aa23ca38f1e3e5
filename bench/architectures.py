"""The architecture support matrix: every torchvision classification model through every shrinkflow stage,
measured, written to docs/architectures.md (generated: do not edit the page by hand).

Each architecture runs in its own process (a memory cap and a timeout keep one model from taking the machine)
at the smallest input its family allows: 28x28 grey (Fashion-MNIST's own size) when it builds there, else
64x64 RGB. A cell is `yes` with what was measured, or the one-line reason the stage refused the model.

    python bench/architectures.py                      # every architecture (about half an hour on 2 cores)
    python bench/architectures.py --arch resnet18 vit_b_16 --out /tmp/matrix.md
    python bench/architectures.py --quick              # one small member per family
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import resource
import select
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = {
    "build_28_grey": "build 28x28 grey",
    "build_64_rgb": "build 64x64 RGB",
    "finetune": "finetune",
    "trim": "trim",
    "distil": "distil",
    "prune_structured": "structured prune + reload",
    "prune_unstructured": "unstructured prune",
    "int8_static": "static int8 + reload",
    "int8_dynamic": "dynamic int8 + reload",
    "onnx": "ONNX + parity",
}
QUICK_ARCHS = ["resnet18", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small",
               "efficientnet_b0", "efficientnet_v2_s", "regnet_x_400mf", "regnet_y_400mf", "convnext_tiny",
               "densenet121", "shufflenet_v2_x0_5", "mnasnet0_5", "squeezenet1_1", "vgg11", "alexnet", "googlenet",
               "inception_v3", "vit_b_32", "swin_t", "swin_v2_t", "maxvit_t"]
MEMORY_CAP_BYTES = 12 << 30  # address space per worker: the CUDA build of torch alone maps ~4 GB
LARGE_MEMORY_CAP_BYTES = 16 << 30
GIANT_MEMORY_CAP_BYTES = 24 << 30  # one at a time: a 600M-weight model is 2.5 GB per copy
# The two ~600M-weight models get a stream of their own, alongside the others, with more memory.
GIANTS = {"vit_h_14", "regnet_y_128gf"}
# Started first (spread over the streams) so that no stream ends with a long tail of them.
# Split over two streams as [0::2], [1::2]: the two ViT-L (8 GB at peak each) fall in the same one.
LARGE = ["vit_l_16", "regnet_y_32gf", "vit_l_32", "regnet_x_32gf", "efficientnet_v2_l", "efficientnet_b7",
         "convnext_large", "swin_v2_b", "swin_b", "regnet_y_16gf", "regnet_x_16gf", "vgg19_bn", "vgg19", "vgg16_bn",
         "vgg16", "resnext101_64x4d", "resnext101_32x8d", "wide_resnet101_2", "efficientnet_v2_m", "convnext_base"]
BATCH = 8  # real Fashion-MNIST images per training step (BatchNorm needs more than one)
PRUNE_RATIO = 0.5


# ---------------------------------------------------------------- one architecture (worker process)

class Refused(Exception):
    """A stage cannot run because an earlier one it needs did not."""


def _cell(stage: str, fn, cells: dict, seconds: dict):
    from compression import CompressionError, first_line

    start = time.perf_counter()
    try:
        value, text = fn()
        cells[stage] = f"yes ({text})" if text else "yes"
        return value
    except CompressionError as exc:
        cells[stage] = first_line(exc)
    except Refused as exc:
        cells[stage] = f"not run: {exc}"
    except Exception as exc:  # noqa: BLE001 - recorded as a failure, never hidden: the matrix must show it
        cells[stage] = f"FAILS: {type(exc).__name__}: {first_line(exc)[:160]}"
    finally:
        seconds[stage] = round(time.perf_counter() - start, 2)
    return None


def _real_batches(channels: int, size: int, count: int):
    """`count` batches of real Fashion-MNIST test images (normalised as the pipeline does) and their labels."""
    import torch
    from torch.nn import functional as F

    from compression.data import load_fashion_mnist, to_model_input

    _, test, _ = load_fashion_mnist(download=False)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(test), generator=generator)[: BATCH * count]
    images, labels = test.images[order], test.labels[order] % 10
    x = to_model_input(images, channels=channels)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return [(x[i:i + BATCH].contiguous(), labels[i:i + BATCH]) for i in range(0, len(x), BATCH)]


def _sgd_steps(model, batches, loss_fn) -> float:
    """Plain SGD steps (no optimizer state: the largest models have ~600M weights); the last loss."""
    import math

    import torch

    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    loss = None
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = loss_fn(model, x, y)
        loss.backward()
        optimizer.step()
    model.eval()
    value = float(loss)
    if not math.isfinite(value):
        raise ValueError(f"training loss is {value}")
    return value


def _reloads_identically(model, path: Path, x) -> int:
    import torch

    from compression.checkpoint import load_model, save_model

    save_model(model, path)
    reloaded = load_model(path)
    with torch.no_grad():
        if not torch.equal(model.eval()(x), reloaded(x)):
            raise AssertionError("the reloaded model gives other outputs")
    return path.stat().st_size


class Measurement:
    """One architecture's cells and the seconds each took."""

    def __init__(self, arch: str, workdir: Path) -> None:
        self.arch, self.workdir, self.cells, self.seconds = arch, workdir, {}, {}

    def cell(self, stage: str, fn):
        return _cell(stage, fn, self.cells, self.seconds)

    def result(self, **info) -> dict:
        return {"arch": self.arch, **info, "cells": self.cells, "seconds": self.seconds}


def _build_cells(m: Measurement):
    """Both builds; the teacher at the smallest input that built, with that (channels, size); None if none did."""
    import torch

    from compression.models import build_model, count_params, skip_random_init

    def build(channels, size, random_init=True):
        def run():
            with skip_random_init() if not random_init else contextlib.nullcontext():
                model = build_model(m.arch, 10, channels, size).eval()
            with torch.no_grad():
                out = model(torch.zeros(2, channels, size, size))
            assert out.shape == (2, 10), f"output shape {tuple(out.shape)}"
            return model, f"{count_params(model) / 1e6:.1f}M params"
        return run

    teacher = m.cell("build_28_grey", build(1, 28))
    # Only the shapes matter for the second build: its weights are not drawn (the largest models take minutes).
    other = m.cell("build_64_rgb", build(3, 64, random_init=teacher is None))
    return (teacher, 1, 28) if teacher is not None else (other, 3, 64)


def _training_cells(m: Measurement, teacher, batches, x) -> None:
    """finetune, trim and distil on the teacher in memory."""
    import copy

    import torch

    from compression.distillation import distillation_loss
    from compression.models import count_params
    from compression.training import cross_entropy
    from compression.trimming import trim

    m.cell("finetune", lambda: (None, f"loss {_sgd_steps(teacher, batches[:1], cross_entropy()):.2f}"))

    def trimmed():
        student = trim(teacher, 1)
        with torch.no_grad():
            student.eval()(x)
        return student, f"params {count_params(teacher) / count_params(student):.1f}x fewer"
    student = m.cell("trim", trimmed)

    def distil():
        target = student if student is not None else copy.deepcopy(teacher)
        try:
            loss = _sgd_steps(target, batches[1:2], distillation_loss(teacher))
        finally:
            teacher.requires_grad_(True)  # distillation_loss froze it
        what = "into the trimmed student" if student is not None else "into a copy of the teacher: trim refused"
        return None, f"KD loss {loss:.2f}, {what}"
    m.cell("distil", distil)


def _int8_cells(m: Measurement, float_path: Path, batches, x, example, reference, float_bytes: int) -> None:
    import gc

    import torch

    from compression.checkpoint import load_model
    from compression.quantization import quantize

    def int8(mode):
        def run():
            calibration = [b for b, _ in batches] if mode == "static" else None
            quantized = quantize(load_model(float_path), mode, example, calibration, in_place=True)
            size_bytes = _reloads_identically(quantized, m.workdir / f"{mode}.pt", x)
            with torch.no_grad():
                agree = float((quantized(x).argmax(1) == reference.argmax(1)).float().mean())
            return None, (f"top-1 as float on {agree:.0%} of {len(x)} images, "
                          f"file {float_bytes / size_bytes:.1f}x smaller")
        return run
    for mode in ("static", "dynamic"):
        m.cell(f"int8_{mode}", int8(mode))
        gc.collect()


def _export_and_prune_cells(m: Measurement, float_path: Path, x, example, reference) -> None:
    import gc

    from compression import CompressionError
    from compression.checkpoint import load_model
    from compression.export import export_onnx, parity, session
    from compression.measure import count_macs
    from compression.pruning import prune_structured, prune_unstructured

    def onnx():
        model = load_model(float_path)
        check = parity(model, session(export_onnx(model, x, m.workdir / "model.onnx")), x)
        scale = max(1.0, float(reference.abs().max()))  # untrained Inception-v3 logits reach ~1e5
        if check["top1_agreement"] < 1.0 or check["max_abs_diff"] > 1e-4 * scale:
            raise CompressionError(f"ONNX differs from PyTorch: max abs diff {check['max_abs_diff']:.1e}, "
                                   f"top-1 agreement {check['top1_agreement']:.0%}")
        return None, f"max abs diff {check['max_abs_diff']:.0e}, top-1 100%"

    def unstructured():
        report = prune_unstructured(load_model(float_path), PRUNE_RATIO)
        return None, f"{report['weight_sparsity']:.0%} of conv/linear weights zero"

    def structured():
        pruned = load_model(float_path)
        macs = count_macs(pruned, example)
        report = prune_structured(pruned, example, PRUNE_RATIO)
        _reloads_identically(pruned, m.workdir / "pruned.pt", x)
        return None, f"params {report['param_ratio']:.1f}x, MACs {macs / count_macs(pruned, example):.1f}x fewer"

    for stage, fn in (("onnx", onnx), ("prune_unstructured", unstructured), ("prune_structured", structured)):
        m.cell(stage, fn)
        gc.collect()


def measure_architecture(arch: str, workdir: Path) -> dict:
    """Every stage on one architecture; {"cells": {column: text}, "seconds": {column: s}, ...}.

    After distillation the teacher lives in its file and each stage loads its own copy, so that one model
    (and what a stage derives from it) is alive at a time: the largest have ~600M weights."""
    import gc

    import torch

    from compression.models import count_params, example_input

    torch.manual_seed(0)
    m = Measurement(arch, workdir)
    teacher, channels, size = _build_cells(m)
    gc.collect()
    if teacher is None:
        for column in COLUMNS:
            m.cells.setdefault(column, "not run: the model does not build")
        return m.result()
    info = {"params": count_params(teacher), "stage_input": f"{size}x{size}x{channels}"}
    batches = _real_batches(channels, size, 3)
    x = batches[2][0]
    example = example_input(teacher, size=size)
    _training_cells(m, teacher, batches, x)
    gc.collect()
    # From here on the teacher is reloaded from its file for each stage, and only one model is alive at a time.
    float_path = workdir / "float.pt"
    float_bytes = _reloads_identically(teacher, float_path, x)
    with torch.no_grad():
        reference = teacher(x)
    del teacher
    gc.collect()
    _int8_cells(m, float_path, batches, x, example, reference, float_bytes)
    _export_and_prune_cells(m, float_path, x, example, reference)
    return m.result(**info)


def worker_main(archs: list[str], workdir: Path) -> None:
    """Measure `archs` one after the other in this process (torch is imported once), one RESULT line each."""
    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    threads = int(os.environ.get("SHRINKFLOW_BENCH_THREADS", "2"))
    for arch in archs:
        # A giant runs beside at most one other stream, and its big matrix products use both cores.
        torch.set_num_threads(2 if arch in GIANTS else threads)
        print(f"START {arch}", flush=True)
        (workdir / arch).mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        result = measure_architecture(arch, workdir / arch)
        result["wall_seconds"] = round(time.perf_counter() - start, 1)
        print("RESULT " + json.dumps(result), flush=True)
        shutil.rmtree(workdir / arch, ignore_errors=True)


# ---------------------------------------------------------------- the matrix (parent process)

def _memory_cap(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_workers(archs: list[str], workdir: Path, timeout: float, per_worker: int, report, threads: int = 2,
                memory_cap: int = MEMORY_CAP_BYTES) -> list[dict]:
    """Measure `archs` in worker processes of up to `per_worker` architectures each; an architecture whose
    worker dies or overruns `timeout` gets an error row and the rest go on in a fresh worker."""
    results, queue = {}, list(archs)
    while queue:
        group, queue = queue[:per_worker], queue[per_worker:]
        cmd = [sys.executable, str(Path(__file__).resolve()), "--workdir", str(workdir), "--worker", *group]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_memory_cap(memory_cap),
                                env={**os.environ, "SHRINKFLOW_BENCH_THREADS": str(threads)})
        current, deadline, started = None, time.monotonic() + timeout, time.monotonic()
        stderr_tail = collections.deque(maxlen=5)
        threading.Thread(target=stderr_tail.extend, args=(proc.stderr,), daemon=True).start()
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = proc.stdout.readline() if ready else None
            if line is None:  # the architecture overran its time
                proc.kill()
                results[current] = {"arch": current, "error": f"timed out after {timeout:.0f} s",
                                    "wall_seconds": timeout}
                report(results[current])
                break
            if not line:  # the worker ended
                proc.wait()
                if current and current not in results:
                    tail = (stderr_tail[-1].strip() if stderr_tail else "no error output")[:200]
                    how = (f"stopped by signal {-proc.returncode}" if proc.returncode < 0
                           else f"exited {proc.returncode}")
                    results[current] = {"arch": current, "error": f"worker {how}: {tail}",
                                        "wall_seconds": round(time.monotonic() - started, 1)}
                    report(results[current])
                break
            if line.startswith("START "):
                current, deadline, started = line.split()[1], time.monotonic() + timeout, time.monotonic()
            elif line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
                results[result["arch"]] = result
                report(result)
        queue = [a for a in group if a not in results] + queue
        proc.stdout.close()
    return [results[a] for a in archs]


def _summary(result: dict) -> str:
    if "error" in result:
        return result["error"]
    cells = result["cells"]
    marks = " ".join(f"{c}:{'Y' if cells[c].startswith('yes') else 'n'}" for c in COLUMNS)
    return marks


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(results: list[dict], command: str, total_seconds: float, measured: float | None = None) -> str:
    """The page; `measured`: when the results were taken (epoch seconds; default now)."""
    import platform

    import torch
    import torch_pruning
    import torchvision

    rows, counts = [], {c: 0 for c in COLUMNS}
    for r in sorted(results, key=lambda r: r["arch"]):
        cells = r.get("cells") or {c: f"not measured: {r['error']}" for c in COLUMNS}
        for c in COLUMNS:
            counts[c] += cells[c].startswith("yes")
        params = f"{r['params'] / 1e6:.1f}M" if r.get("params") else "-"
        rows.append([r["arch"], params, r.get("stage_input", "-"), *(cells[c] for c in COLUMNS),
                     f"{r['wall_seconds']:.0f}"])
    header = ["architecture", "params", "stage input", *COLUMNS.values(), "seconds"]
    lines = [
        "# Architecture support matrix",
        "",
        f"Generated by `{command}` (bench/architectures.py); do not edit by hand. Every cell was measured by that",
        "script: `yes` with what was measured, or the one-line reason the stage refused the architecture.",
        "",
        f"- {len(results)} architectures, {sum(r['wall_seconds'] for r in results) / 60:.0f} min of per-architecture "
        f"time ({f'{total_seconds / 60:.0f} min wall clock, ' if total_seconds else ''}parallel streams) on "
        f"{os.cpu_count()} shared CPU cores; "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, torch-pruning {torch_pruning.__version__}, "
        f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(measured))}.",
        "- Stages run at the smallest input the family allows (column *stage input*: 28x28 grey, Fashion-MNIST's "
        "own size, when the model builds there), on real Fashion-MNIST test images, 10 classes.",
        "- *finetune*: one SGD step on 8 images, loss finite. *trim*: `trim(model, 1)`. *distil*: one KD step from the "
        "fine-tuned teacher. *structured prune*: Torch-Pruning, per-layer ratio 0.5, then save, reload and "
        "identical outputs (reductions are params and MACs at the stage input). *unstructured*: global L1, 0.5. "
        "*int8*: torch.ao x86, static calibrated on 24 real images; reload gives identical outputs; file size "
        "against the float file. *ONNX*: dynamic batch, onnxruntime against PyTorch on 8 real images.",
        "- Small inputs: VGG, AlexNet, DenseNet, ConvNeXt and Inception-v3 drop stem pooling/striding until the "
        "feature map stays non-empty (`adaptations` in the model's `shrinkflow_spec`). ViT is built with "
        "`image_size` = the input rounded up to whole patches (28x28 with 16x16 patches: 32) and its patch "
        "convolution zero-pads the image to that grid; the spec records `vit-image-size-N` and checkpoints "
        "rebuild it. Swin pads its windows itself; its structured pruning removes MLP hidden units only.",
        *([f"- Not measured ({', '.join(sorted(r['arch'] for r in results if 'error' in r))}): the worker process "
           "was stopped (a timeout, or a signal: on this shared machine a memory guard stops a worker when the system "
           "runs low; the ~600M-weight models need ~12 GB at their peak)."] if any("error" in r for r in results)
          else []),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_escape(str(v)) for v in row) + " |" for row in rows),
        "",
        "## Summary",
        "",
        "| stage | yes |",
        "|---|---|",
        *(f"| {COLUMNS[c]} | {counts[c]} / {len(results)} |" for c in COLUMNS),
        "",
    ]
    return "\n".join(lines)


def render_saved(paths: list[Path], out: Path) -> int:
    """The page from the results of earlier runs (e.g. the two giants measured beside the others)."""
    rows, commands, wall = {}, [], 0.0
    for path in paths:
        saved = json.loads(path.read_text())
        if isinstance(saved, list):  # the first format: results only
            saved = {"results": saved, "command": f"python bench/architectures.py ... --json {path.name}"}
        rows.update({r["arch"]: r for r in saved["results"]})
        # Where that run wrote its own page does not matter here (it may have been a temporary file).
        commands.append(re.sub(r" --out \S+", "", saved["command"]))
        wall += saved.get("seconds") or 0.0
    measured = max(path.stat().st_mtime for path in paths)  # the last of the runs saved its results then
    out.write_text(render(list(rows.values()), "`, `".join(commands), wall or None, measured))
    print(f"wrote {out} ({len(rows)} architectures from {len(paths)} runs)", flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", help="architectures to measure (default: every one)")
    parser.add_argument("--quick", action="store_true", help="one small member per family")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "architectures.md")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds per architecture (twice that for the largest)")
    parser.add_argument("--jobs", type=int, default=1, help="workers at once for all but the largest models")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".work" / "architectures")
    parser.add_argument("--from-json", nargs="+", type=Path,
                        help="measure nothing: write the page from saved --json results (a later file's row wins)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    return parser


def _streams(archs: list[str], jobs: int) -> list[tuple[list[str], int, int]]:
    """(architectures, per worker process, memory cap) per stream, in the order they should start: the large
    models, the small ones, the giants."""
    others = sorted((a for a in archs if a not in GIANTS), key=lambda a: LARGE.index(a) if a in LARGE else len(LARGE))
    # Large models each in a fresh process (a process that held one keeps its address space fragmented and the
    # next build hits the memory cap); the small ones eight to a process (torch is imported once).
    large = [a for a in others if a in LARGE]
    small = [a for a in others if a not in LARGE]
    streams = [(large[i::jobs], 1, LARGE_MEMORY_CAP_BYTES) for i in range(jobs)]
    streams += [(small[i::jobs], 8, MEMORY_CAP_BYTES) for i in range(jobs)]
    return streams + [([a for a in archs if a in GIANTS], 1, GIANT_MEMORY_CAP_BYTES)]


class _Progress:
    """Results as they come: a progress line each, the --json file kept current (a run cut short still leaves
    what it measured), and an event set once every large model is done (the giants wait for it)."""

    def __init__(self, archs: list[str], json_path: Path | None, command: str) -> None:
        self.total, self.json_path, self.command = len(archs), json_path, command
        self.done, self.started = [], time.perf_counter()
        self.large_left = set(LARGE) & set(archs)
        self.large_done = threading.Event()
        if not self.large_left:
            self.large_done.set()

    def save_json(self, results: list[dict]) -> None:
        if self.json_path:
            self.json_path.parent.mkdir(parents=True, exist_ok=True)
            self.json_path.write_text(json.dumps({"command": self.command,
                                                  "seconds": time.perf_counter() - self.started,
                                                  "results": results}, indent=2) + "\n")

    def report(self, result: dict) -> None:
        self.done.append(result)
        self.save_json(self.done)
        print(f"[{len(self.done)}/{self.total}] {result['arch']}: {result['wall_seconds']:.0f} s  {_summary(result)}",
              flush=True)
        self.large_left.discard(result["arch"])
        if not self.large_left:
            self.large_done.set()


def measure_all(archs: list[str], args, command: str) -> tuple[list[dict], float]:
    progress = _Progress(archs, args.json, command)
    # Parallel streams of one torch thread each: most stages (graph tracing, export) are single-threaded Python.
    threads = 1 if args.jobs > 1 else 2

    def run_stream(stream):
        part, per_worker, memory_cap = stream
        if memory_cap == GIANT_MEMORY_CAP_BYTES:  # after the large models: both at once would not fit in memory
            progress.large_done.wait()
        return run_workers(part, args.workdir, args.timeout * (2 if per_worker == 1 else 1), per_worker,
                           progress.report, threads, memory_cap)

    print(f"measuring {len(archs)} architectures", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:  # `jobs` streams at a time, in _streams' order
        results = [r for part in pool.map(run_stream, _streams(archs, args.jobs)) for r in part]
    progress.save_json(results)
    return results, time.perf_counter() - progress.started


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.workdir)
        return 0
    if args.from_json:
        return render_saved(args.from_json, args.out)

    from compression.models import list_architectures

    known = list_architectures()
    archs = args.arch or (QUICK_ARCHS if args.quick else known)
    unknown = [a for a in archs if a not in known]
    if unknown:
        parser.error(f"unknown architectures: {', '.join(unknown)}")
    command = ("python bench/architectures.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    results, total = measure_all(archs, args, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results, command, total))
    print(f"wrote {args.out} ({len(results)} architectures, {total / 60:.1f} min)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
