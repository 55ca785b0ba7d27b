"""`torch.distributed.elastic.multiprocessing.errors.record`: the decorator torchrun-style
scripts put on `main`. An exception escaping `main` is written, as torchelastic's JSON error
file, to `$TORCHELASTIC_ERROR_FILE` when the launcher set one, and raised on; `sys.exit(0)`
inside returns None, as in PyTorch. kiln's launcher (`python -m kiln.distributed.run`) reports
a failing rank itself, so without the variable the decorator only passes the call through."""

from __future__ import annotations

import functools
import json
import os
import time
import traceback
from typing import Callable

__all__ = ["record", "ChildFailedError", "ErrorHandler", "get_error_handler"]


class ChildFailedError(Exception):
    """A child process of an elastic agent failed (`failures`: rank -> what it reported)."""

    def __init__(self, name: str, failures: dict):
        self.name, self.failures = name, failures
        super().__init__(f"{name} FAILED: ranks {sorted(failures)}")

    def get_first_failure(self):
        rank = min(self.failures)
        return rank, self.failures[rank]


class ErrorHandler:
    """Writes an exception as torchelastic's error file (`TORCHELASTIC_ERROR_FILE`)."""

    def initialize(self) -> None:
        pass

    def record_exception(self, e: BaseException) -> None:
        path = os.environ.get("TORCHELASTIC_ERROR_FILE")
        if not path:
            return
        data = {"message": {"message": f"{type(e).__name__}: {e}", "extraInfo": {
            "py_callstack": "".join(traceback.format_exception(type(e), e, e.__traceback__)),
            "timestamp": str(int(time.time()))}}}
        with open(path, "w") as f:
            json.dump(data, f)


def get_error_handler() -> ErrorHandler:
    return ErrorHandler()


def record(fn: Callable, error_handler: ErrorHandler | None = None) -> Callable:
    handler = error_handler or get_error_handler()

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        handler.initialize()
        try:
            return fn(*args, **kwargs)
        except SystemExit as done:
            if done.code == 0:
                return None
            raise
        except Exception as e:
            handler.record_exception(e)
            raise
    return wrapper
