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


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def is_bad_input(exc: BaseException) -> bool:
    """Whether the user can fix this failure by changing what they gave (one line, exit 2)."""
    return bool(_names(exc) & BAD_INPUT)


def retry_may_fix(exc: BaseException) -> bool:
    """Whether a task should try again: transient failures and unexpected ones, never bad input or a
    ValueError (the same inputs give the same answer)."""
    names = _names(exc)
    if names & TRANSIENT:
        return True
    return not (names & BAD_INPUT or isinstance(exc, ValueError))
