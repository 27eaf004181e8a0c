"""The one boundary of every command-line tool: a user's mistake is one line, exit 2.

Every `python -m ...` tool of the package (`lambda_keras.convert_timm`, `training.*`,
`export.*`) decorates its `main(argv)` with `entry_point(prog)` and parses its
arguments with `ArgumentParser`. Then:

  * an error the user can fix (a subclass of `UserError`, or an `OSError` such as a
    missing file, a full disk or a denied permission) prints
    `python -m X: error: <one line>` on stderr and returns 2;
  * a bad command line does the same (argparse's usage block is left out; `--help`
    still prints it);
  * running out of memory (TensorFlow's `ResourceExhaustedError`, XLA's
    `RESOURCE_EXHAUSTED` under JAX, Python's `MemoryError`) does the same, naming the
    allocation that failed: the input or the model is too large for the machine;
  * Ctrl-C returns 130 with one line;
  * anything else is a bug in this package and keeps its traceback.

Importing this module imports neither Keras nor TensorFlow.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from typing import Callable, NoReturn, Sequence

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130


class UserError(Exception):
    """An input, a file or a machine state the user can fix; the message says what to do."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (`prog: error: message`) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USER_ERROR_EXIT, f"{self.prog}: error: {_one_line(message)} (see --help)\n")


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum, else the one-line usage error."""

    def parse(text: str) -> int:
        if not text.lstrip("-").isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, not {text!r}")
        return int(text)

    return parse


def entry_point(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Wraps `main(argv) -> exit status` in the boundary described in the module doc."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def guarded(argv: Sequence[str] | None = None) -> int:
            try:
                return main(argv)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return INTERRUPTED_EXIT
            except Exception as error:  # pylint: disable=broad-except
                message = user_message(error)
                if message is None:
                    raise
                print(f"{prog}: error: {message}", file=sys.stderr)
                return USER_ERROR_EXIT

        return guarded

    return decorate


def user_message(error: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug."""
    if isinstance(error, UserError):
        return _one_line(str(error))
    if isinstance(error, OSError):
        # What os.makedirs raises for a file where a folder was asked for (--model_dir,
        # --output): "File exists" alone reads as if the folder were in the way.
        if isinstance(error, FileExistsError) and error.filename is not None and os.path.isfile(error.filename):
            return _one_line(f"{error.filename} is a file, not a folder ({error.strerror})")
        if error.filename is not None and error.strerror:
            return _one_line(f"{error.filename}: {error.strerror}")
        return _one_line(str(error) or type(error).__name__)
    out_of_memory = out_of_memory_detail(error)
    if out_of_memory is not None:
        return _one_line(f"out of memory ({out_of_memory}): the input or the model is too large for this machine")
    tf_errors = _tensorflow_errors()
    # TensorFlow's file system reports a missing or unreadable path (local or gs://) as
    # these, not as OSError, and a file where a folder should be as a failed precondition.
    if tf_errors is not None and (
        isinstance(error, (tf_errors.NotFoundError, tf_errors.PermissionDeniedError, tf_errors.UnavailableError))
        or (isinstance(error, tf_errors.FailedPreconditionError) and error.message.endswith("is not a directory"))
    ):
        return _one_line(error.message)
    return None


# TensorFlow's message names the tensor: "OOM when allocating tensor with shape[64,400]
# and type float on /job:localhost/replica:0/task:0/device:CPU:0 by allocator mklcpu".
_TENSORFLOW_ALLOCATION = re.compile(r"OOM when allocating tensor with shape\[[^\]]*\] and type \w+ on \S+")


def out_of_memory_detail(error: BaseException) -> str | None:
    """What failed to allocate when ``error`` is, or was raised while handling, an
    out-of-memory error; else None.

    TensorFlow raises ``ResourceExhaustedError`` (its message also lists the graph
    node); XLA, under JAX, a ``JaxRuntimeError`` whose message starts with
    ``RESOURCE_EXHAUSTED``; NumPy and Python a ``MemoryError``. The chain matters:
    Keras's `fit` under JAX, cleaning up after an out-of-memory error, fails on the
    variables it had emptied for the step, and that error is the one raised.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        detail = _allocation_that_failed(error)
        if detail is not None:
            return detail
        error = error.__cause__ or error.__context__
    return None


def _allocation_that_failed(error: BaseException) -> str | None:
    if isinstance(error, MemoryError):
        return str(error) or "MemoryError"
    tf_errors = _tensorflow_errors()
    if tf_errors is not None and isinstance(error, tf_errors.ResourceExhaustedError):
        allocation = _TENSORFLOW_ALLOCATION.search(error.message)
        return allocation.group(0) if allocation else error.message.splitlines()[0]
    message = str(error)
    if type(error).__module__.startswith(("jax", "jaxlib")) and message.startswith("RESOURCE_EXHAUSTED"):
        return message.splitlines()[0]
    return None


def _tensorflow_errors():
    """`tf.errors` when the tool has imported TensorFlow, else None (this module never does)."""
    return getattr(sys.modules.get("tensorflow"), "errors", None)


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip()) or "(no message)"
