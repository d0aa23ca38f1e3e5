"""Decisions made once in the pure core: which failures are the user's (compression/errors.py: the command
line's exit 2 or 1, the stage runner's retry or not) and the accuracy budget (compression/budget.py)."""

import numpy as np
import pytest

from compression import CompressionError
from compression.errors import is_bad_input, retry_may_fix


def _user_errors():
    from cli.main import NotFoundError
    from tasks.config import ConfigError

    return [ConfigError("prune.ratio: too big"), NotFoundError("run x not found"), CompressionError("bad model"),
            FileNotFoundError("no such file"), IsADirectoryError("/ is a directory"), PermissionError("denied")]


@pytest.mark.parametrize("index", range(6))
def test_what_the_user_gave_is_bad_input_and_never_retried(index):
    exc = _user_errors()[index]
    assert is_bad_input(exc) and not retry_may_fix(exc)


def test_an_unreachable_server_is_retried_first_then_reported_as_bad_input():
    for exc in (ConnectionError("MLflow tracking server is unreachable"), ConnectionRefusedError("refused")):
        assert is_bad_input(exc) and retry_may_fix(exc)
    assert retry_may_fix(TimeoutError("slow")) and not is_bad_input(TimeoutError("slow"))


def test_a_failed_run_is_not_bad_input():
    assert not is_bad_input(RuntimeError("CUDA error")) and retry_may_fix(RuntimeError("CUDA error"))
    # the same inputs give the same ValueError: no retry, but not the user's input either
    assert not is_bad_input(ValueError("shape mismatch")) and not retry_may_fix(ValueError("shape mismatch"))


def test_a_pruned_trial_is_neither_bad_input_nor_retried_and_crosses_processes_as_it_is():
    import pickle

    from compression.errors import TrialPruned

    stop = pickle.loads(pickle.dumps(TrialPruned(2, 0.3125)))
    assert (stop.step, stop.value, str(stop)) == (2, 0.3125, "pruned after epoch 2 at val accuracy 0.3125")
    assert not is_bad_input(stop) and not retry_may_fix(stop)


def test_the_accuracy_budget_passes_a_tie_and_fails_past_it():
    from compression.budget import within_drop, within_limit

    # float32 accuracies read back as float64: 0.9186 - 0.01 is not exactly 0.9086
    teacher, at_limit = float(np.float32(0.9186)), float(np.float32(0.9086))
    assert within_drop(at_limit, teacher, teacher - at_limit)
    assert within_drop(0.90, 0.91, 0.01) and not within_drop(0.8999, 0.91, 0.01)
    assert within_drop(0.95, 0.91, 0.0)  # better than the reference is always within
    assert within_limit(0.0) and within_limit(-0.3) and within_limit(5e-10) and not within_limit(1e-6)


def test_an_int8_model_past_the_drop_is_rejected_with_its_reason():
    from compression.budget import int8_rejection

    assert int8_rejection(0.90, 0.895, 0.01) is None
    assert int8_rejection(0.90, 0.89, 0.01) is None  # a tie passes
    assert int8_rejection(0.90, 0.88, 0.01) == "val accuracy drop 0.0200 > 0.01"
    assert int8_rejection(0.90, 0.95, 0.0) is None


def _trial(number, accuracy, macs, state="COMPLETE"):
    return {"number": number, "state": state, "accuracy": accuracy, "macs": macs}


def test_the_search_retrains_feasible_trials_first_then_the_most_accurate():
    from compression.search import rank_for_retraining

    trials = [_trial(0, 0.95, 900), _trial(1, 0.89, 100), _trial(2, 0.91, 400), _trial(3, 0.93, 500),
              _trial(4, 0.99, 50, state="FAIL")]
    # budget 600 MACs, teacher 0.92, max drop 0.02: trials 2 and 3 are feasible; 0 is over budget, 1 too inaccurate
    ranked = [t["number"] for t in rank_for_retraining(trials, "macs", 600, 0.92, 0.02)]
    assert ranked == [3, 2, 0, 1]
    # on latency the trials were not timed: accurate enough first, then the fewest MACs
    ranked = [t["number"] for t in rank_for_retraining(trials, "latency_ms", 5.0, 0.92, 0.02)]
    assert ranked == [2, 3, 0, 1]


# ---------------------------------------------------------------- one accuracy (compression/accuracy.py)

def test_accuracy_is_the_exact_ratio_of_top1_hits():
    import torch

    from compression.accuracy import agreement, matching_share, ratio, top1_accuracy, top1_hits

    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 5.0], [4.0, 0.0, 0.0], [1.0, 2.0, 0.0]])
    labels = torch.tensor([0, 1, 1, -1, 1])  # -1: an unlabelled image, never a hit
    assert top1_hits(logits, labels).tolist() == [True, True, False, False, True]
    assert top1_accuracy(logits, labels) == 3 / 5  # exactly, not a float32 mean
    assert top1_accuracy(logits.numpy(), labels.numpy()) == 3 / 5
    assert ratio(0, 0) == 0.0 and matching_share(torch.tensor([0, 2]), torch.tensor([0, 1])) == 0.5
    assert agreement(logits, logits.flip(0)) == 1 / 5  # only the middle image keeps its class


def test_every_accuracy_of_the_core_goes_through_the_one_function():
    """No accuracy is computed by hand elsewhere in compression/ (argmax compared with labels)."""
    import re
    from pathlib import Path

    by_hand = re.compile(r"argmax\(1\)\s*==|==\s*\w+\.argmax\(1\)|\.float\(\)\.mean\(\)")
    root = Path(__file__).resolve().parents[1]
    offenders = [f"{p.name}:{i}" for folder in ("compression", "tasks") for p in sorted((root / folder).glob("*.py"))
                 if p.name != "accuracy.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if by_hand.search(line)]
    assert offenders == []


# ---------------------------------------------------------------- stage outputs (tasks/outputs.py)

def test_a_stage_output_is_its_own_cache_record():
    import dataclasses

    from tasks.outputs import Distilled, Pruned, Quantized
    from tasks.stage import _finished, _rebuilt, _record_of

    kd = {"name": "student_kd", "path": "/x/kd.pt", "sha256": "ab", "run_id": "r1"}
    made = _finished(Distilled(kd), "run-7", "distill")
    assert made.run_id == "run-7" and made.stage == "distill" and made.baseline is None
    record = _record_of(made)
    assert record == {"run_id": "run-7", "stage": "distill", "kd": kd, "baseline": None}
    assert _rebuilt(Distilled, {**record, "from_a_newer_version": 1}) == made
    assert _rebuilt(Distilled, {"run_id": "r", "stage": "distill"}) is None  # no kd: the stage runs again
    assert _rebuilt(None, record) is record  # a ModelRef stage's record is the ref itself
    assert Quantized(static=kd).of("static") == kd and Quantized(static=kd).of("dynamic") is None
    assert Pruned(structured=None, unstructured=kd).next_model is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.kd = None


def test_the_output_type_comes_from_the_stage_functions_return_annotation():
    from tasks.distill import distill
    from tasks.fetch import fetch_pretrained
    from tasks.outputs import Distilled
    from tasks.stage import _output_type

    assert _output_type(distill.fn.__wrapped_stage__) is Distilled
    assert _output_type(fetch_pretrained.fn.__wrapped_stage__) is None  # returns a ModelRef


# ---------------------------------------------------------------- what gets exported (compression/selection.py)

def test_export_targets_are_the_reference_the_final_model_and_its_own_int8_copy():
    from compression.selection import export_targets

    ref = lambda name, sha, source=None: {"name": name, "sha256": sha, "source_sha256": source}  # noqa: E731
    teacher, kd, pruned = ref("teacher", "t"), ref("student_kd", "k"), ref("pruned", "p")
    candidates = {r["name"]: r for r in (teacher, kd, pruned, ref("quantized_static", "q", "p"),
                                         ref("quantized_dynamic", "d", "p"))}
    floats, int8 = export_targets(candidates, pruned)
    assert list(floats) == ["teacher", "pruned"] and list(int8) == ["quantized_static"]
    # an int8 copy of another float model is not exported with this one
    floats, int8 = export_targets({**candidates, "quantized_static": ref("quantized_static", "q", "k")}, pruned)
    assert int8 == {}
    # a single-stage flow whose final model is its reference exports it once
    assert export_targets({"teacher": teacher}, teacher) == ({"teacher": teacher}, {})
