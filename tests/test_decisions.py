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
