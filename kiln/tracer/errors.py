"""Errors for the user, and where in their code they happened: the tracer's leaf module.

Every other tracer module raises through these, so this file imports nothing of kiln (a leaf
breaks what was once a dispatch/autograd/tensor import cycle).
"""

from __future__ import annotations

import os
import sys

_KILN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_IN_KILN: dict = {}             # a code object's file name -> whether it is in the kiln package


def user_frame(skip_kiln: bool = True, frame=None):
    """The innermost frame outside the kiln package (from `frame`, default the caller's), or
    None: the user's code."""
    frame = frame or sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        inside = _IN_KILN.get(path)
        if inside is None:          # a tracer asks for every op: abspath once per file
            inside = _IN_KILN[path] = os.path.abspath(path).startswith(_KILN_DIR)
        if not (skip_kiln and inside):
            return frame
        frame = frame.f_back
    return None


def user_stacklevel() -> int:
    """The `stacklevel` for a warning raised by the caller that names the user's line: the
    caller's callers up to the first frame outside kiln (wrappers such as autocast's between)."""
    frame, level = sys._getframe(2), 2
    while frame is not None and user_frame(frame=frame) is not frame:
        frame, level = frame.f_back, level + 1
    return level


def user_location(skip_kiln: bool = True) -> str:
    """`file:line` of the innermost frame outside the kiln package: the user's line."""
    frame = user_frame(skip_kiln, sys._getframe(1))
    return "<unknown>" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"


def op_error(op: str, message: str, kind: type = RuntimeError) -> Exception:
    """An exception for the user: which op, what went wrong, and where in their code. It
    remembers the op (`kiln_op`), so that a composite it fails inside can name itself first."""
    error = kind(f"{op}: {message} (at {user_location()})")
    error.kiln_op = op
    return error


def in_composite(error: BaseException, name: str) -> None:
    """`error` raised inside the composite `name` (mse_loss's `sub`, multi_margin_loss's
    `gather`): its message is prefixed with `name`, the op the user called, when it names an
    inner op; the exception class and the inner message are kept. Errors not made by
    `op_error` (the user's own, from a callback) are left as they are."""
    op = getattr(error, "kiln_op", None)
    if op is None or op == name or len(error.args) != 1 or not isinstance(error.args[0], str):
        return
    error.args = (f"{name}: {error.args[0]}",)
    error.kiln_op = name


def named_dim_error(dim) -> TypeError:
    """A dimension given by name (`x.sum('C')`): PyTorch's named tensors, gone since 2.13."""
    return op_error("dim", f"expected an int, got the name {dim!r}: dimensions by name were "
                    "PyTorch's named tensors, which PyTorch 2.13 removed (kiln follows it); "
                    "pass the dimension's index instead", TypeError)


class GraphBreak(Exception):
    """The traced function read a tensor's value into Python at `location`."""

    def __init__(self, reason: str, location: str):
        super().__init__(f"{reason} at {location}")
        self.reason, self.location = reason, location
