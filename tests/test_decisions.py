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


def test_the_accuracy_budget_passes_a_tie_and_fails_past_it():
    from compression.budget import within_drop, within_limit

    # float32 accuracies read back as float64: 0.9186 - 0.01 is not exactly 0.9086
    teacher, at_limit = float(np.float32(0.9186)), float(np.float32(0.9086))
    assert within_drop(at_limit, teacher, teacher - at_limit)
    assert within_drop(0.90, 0.91, 0.01) and not within_drop(0.8999, 0.91, 0.01)
    assert within_drop(0.95, 0.91, 0.0)  # better than the reference is always within
    assert within_limit(0.0) and within_limit(-0.3) and within_limit(5e-10) and not within_limit(1e-6)
