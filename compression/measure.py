"""What a model costs and how well it does: accuracy, parameters, MACs, size on disk, CPU latency."""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from compression.accuracy import top1_accuracy
from compression.data import Batches
from compression.models import count_params, quantization_info
from compression.training import predict


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    pred = logits.argmax(1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1).float()).tolist()
    return {"accuracy": top1_accuracy(logits, labels), "per_class_accuracy": per_class,
            "confusion": confusion.tolist()}


def evaluate_classifier(model: nn.Module, batches: Batches) -> dict:
    logits, labels = predict(model, batches)
    return classification_metrics(logits, labels, logits.shape[1])


def count_nonzero_params(model: nn.Module) -> tuple[int, int]:
    if q := quantization_info(model):  # int8 weights live in packed params, not in parameters()
        return q["float_params"], q["float_nonzero_params"]
    total = count_params(model)
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return total, nonzero


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass over `example` (FLOPs / 2), every aten op counted.

    A quantized model reports the MACs its float original was measured at (the same arithmetic in int8)."""
    if q := quantization_info(model):
        return q["float_macs"] * example.shape[0]
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example)
    model.train(was_training)
    return counter.get_total_flops() // 2


def file_size(path: str | Path) -> int:
    """The one size measure: a model as shipped, the bytes of its file (save_model's .pt or an ONNX file),
    what a comparison's and a search budget's size_bytes are. Weights alone would leave out what a model file
    also holds (an int8 model's scales, the classes and normalisation inference needs)."""
    return Path(path).stat().st_size


@contextmanager
def torch_threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def timed_calls(call, single, batch, warmup: int = 5, repeats: int = 30, throughput_repeats: int = 5,
                min_seconds: float = 0.25) -> dict:
    """Batch-1 latency percentiles (ms) of `call(single)` and throughput (images/s) of `call(batch)`,
    after warm-up. Any runtime: PyTorch here, onnxruntime in compression.export.

    Throughput is the batch size over the median batch time, with batches timed for at least
    `throughput_repeats` calls and `min_seconds`: a total over a few calls let one stall of a shared CPU
    move a small model's figure by half."""
    for _ in range(warmup):
        call(single)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call(single)
        times.append((time.perf_counter() - t) * 1000)
    for _ in range(2):
        call(batch)
    batch_times, start = [], time.perf_counter()
    while len(batch_times) < throughput_repeats or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        call(batch)
        batch_times.append(time.perf_counter() - t)
    q = statistics.quantiles(times, n=20)
    return {"latency_p50_ms": statistics.median(times), "latency_p95_ms": q[18],
            "throughput_ips": len(batch) / statistics.median(batch_times)}


def latency_inputs(example: torch.Tensor, throughput_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    single = example[:1].cpu()
    return single, single.expand(throughput_batch, *example.shape[1:]).contiguous()


@torch.no_grad()
def cpu_latency(model: nn.Module, example: torch.Tensor, threads: int = 1, warmup: int = 5,
                repeats: int = 30, throughput_batch: int = 64, throughput_repeats: int = 5,
                min_seconds: float = 0.25) -> dict:
    """PyTorch CPU speed with a fixed thread count (see timed_calls)."""
    model = model.eval().cpu()
    with torch_threads(threads):
        timings = timed_calls(model, *latency_inputs(example, throughput_batch), warmup, repeats, throughput_repeats,
                              min_seconds)
    return {**timings, "threads": threads}


SPEED_KEYS = ("latency_p50_ms", "latency_p95_ms", "throughput_ips")


def median_speed(samples: dict[str, list[dict]]) -> dict[str, dict]:
    """Per model, the median of each speed figure over its rounds."""
    return {name: {key: statistics.median(s[key] for s in rounds) for key in SPEED_KEYS}
            for name, rounds in samples.items()}


def interleaved_speed(models: dict[str, nn.Module], examples: dict[str, torch.Tensor], rounds: int,
                      measured: dict[str, dict] | None = None, **timing) -> dict[str, dict]:
    """CPU speed of every model as its median over `rounds` rounds in which the models take turns: a slow
    patch of a shared machine then hits all of them alike instead of one of them.

    `measured` holds figures already taken for every model (e.g. by profile); they count as the first round.
    `timing` goes to cpu_latency (threads, repeats, ...).
    """
    samples = {name: [measured[name]] if measured else [] for name in models}
    for _ in range(rounds - (1 if measured else 0)):
        for name, model in models.items():
            samples[name].append(cpu_latency(model, examples[name], **timing))
    return median_speed(samples)


def profile(model: nn.Module, example: torch.Tensor, threads: int = 1, **timing) -> dict:
    """Cost figures of a model: params (total, non-zero), MACs and CPU speed (`timing` goes to cpu_latency:
    repeats, throughput_batch, min_seconds). Its size is its file's (`file_size`)."""
    total, nonzero = count_nonzero_params(model)
    return {"params": total, "nonzero_params": nonzero, "macs": count_macs(model, example[:1]),
            **cpu_latency(model, example, threads, **timing)}
