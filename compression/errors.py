"""Which failures are the user's to fix, in one place for the command line and the stage runner.

Bad input (a config, a file, a model name, a server address the user gave) ends a command as one line on
stderr and exit 2; anything else is a failed run (exit 1, traceback in the log). A task retries a failure
only when a retry can fix it: a connection that failed may work a moment later (a server restarting), so it
is retried first and, if it persists, reported as bad input; other bad input and a ValueError are the same
on every try.

Classes are matched by name along the exception's MRO, so the layers above (tasks.config.ConfigError,
cli's NotFoundError, Prefect's ParameterTypeError) are classified without this module importing them.
"""

from __future__ import annotations

# The user's to fix. The OSError family: a path that is missing, is a directory, or may not be read or written.
BAD_INPUT = frozenset({"ConfigError", "CompressionError", "NotFoundError", "ParameterTypeError", "ConnectionError",
                       "FileNotFoundError", "IsADirectoryError", "NotADirectoryError", "PermissionError",
                       "FileExistsError"})
# Bad input that may be a moment's trouble rather than a mistake.
TRANSIENT = frozenset({"ConnectionError", "TimeoutError"})
# Not failures: work stopped on purpose, which a retry would only start again.
STOPPED = frozenset({"TrialPruned"})


class TrialPruned(Exception):
    """A search trial stopped by its pruner after `step` epochs at val accuracy `value`: not a failure.

    Raised from a training's epoch callback; the layers above end the trial's runs as stopped (MLflow KILLED,
    tag search.state PRUNED) and tell the study PRUNED. Its args are (step, value), so it pickles across
    processes (a Dask worker to the flow) as it is."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(step, value)
        self.step, self.value = step, value

    def __str__(self) -> str:
        return f"pruned after epoch {self.step} at val accuracy {self.value:.4f}"


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def is_bad_input(exc: BaseException) -> bool:
    """Whether the user can fix this failure by changing what they gave (one line, exit 2)."""
    return bool(_names(exc) & BAD_INPUT)


def retry_may_fix(exc: BaseException) -> bool:
    """Whether a task should try again: transient failures and unexpected ones, never bad input, a
    ValueError (the same inputs give the same answer) or work stopped on purpose."""
    names = _names(exc)
    if names & STOPPED:
        return False
    if names & TRANSIENT:
        return True
    return not (names & BAD_INPUT or isinstance(exc, ValueError))
