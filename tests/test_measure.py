"""Interleaved speed rounds on tiny real models (milliseconds)."""

import torch
from torch import nn

from compression.measure import SPEED_KEYS, interleaved_speed, median_speed

QUICK = {"warmup": 1, "repeats": 3, "throughput_batch": 4, "throughput_repeats": 1, "min_seconds": 0.0}


def _tiny_models() -> tuple[dict[str, nn.Module], dict[str, torch.Tensor], list[str]]:
    """Two small models, an example input for each, and the list in which they note their name on every
    forward pass."""
    turns = []
    models = {"wide": nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3)),
              "narrow": nn.Sequential(nn.Flatten(), nn.Linear(16, 3))}
    for name, model in models.items():
        model.register_forward_hook(lambda module, args, out, name=name: turns.append(name))
    return models, {name: torch.zeros(4, 1, 4, 4) for name in models}, turns


def _rounds(turns: list[str]) -> list[str]:
    """The order in which the models had their turns: consecutive calls of one model collapsed."""
    return [name for i, name in enumerate(turns) if i == 0 or turns[i - 1] != name]


def test_every_model_is_timed_once_per_round_taking_turns():
    models, examples, turns = _tiny_models()
    speeds = interleaved_speed(models, examples, rounds=3, **QUICK)
    assert _rounds(turns) == ["wide", "narrow"] * 3
    assert set(speeds) == {"wide", "narrow"}
    for figures in speeds.values():
        assert set(figures) == set(SPEED_KEYS) and all(v > 0 for v in figures.values())


def test_figures_already_measured_count_as_the_first_round():
    models, examples, turns = _tiny_models()
    slow = {"latency_p50_ms": 1e9, "latency_p95_ms": 1e9, "throughput_ips": 1e-9}
    speeds = interleaved_speed(models, examples, rounds=2, measured={"wide": slow, "narrow": slow}, **QUICK)
    assert _rounds(turns) == ["wide", "narrow"]  # one more round only
    # The median of two rounds lies between them: half the made-up first round's figure, half a real one.
    assert all(1e8 < speeds[name]["latency_p50_ms"] < 1e9 for name in models)
    assert interleaved_speed(models, examples, rounds=1, measured={"wide": slow, "narrow": slow}, **QUICK) == \
        {"wide": slow, "narrow": slow}


def test_median_per_model_and_figure():
    samples = {"a": [{"latency_p50_ms": 3.0, "latency_p95_ms": 5.0, "throughput_ips": 10.0},
                     {"latency_p50_ms": 1.0, "latency_p95_ms": 9.0, "throughput_ips": 30.0},
                     {"latency_p50_ms": 2.0, "latency_p95_ms": 4.0, "throughput_ips": 20.0, "threads": 1}],
               "b": [{"latency_p50_ms": 7.0, "latency_p95_ms": 8.0, "throughput_ips": 1.0}]}
    assert median_speed(samples) == {"a": {"latency_p50_ms": 2.0, "latency_p95_ms": 5.0, "throughput_ips": 20.0},
                                     "b": {"latency_p50_ms": 7.0, "latency_p95_ms": 8.0, "throughput_ips": 1.0}}
