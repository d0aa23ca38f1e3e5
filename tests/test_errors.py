"""One taxonomy of failures (compression/errors.py) for the command line (exit 2 or 1) and the stage runner
(retry or not)."""

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
