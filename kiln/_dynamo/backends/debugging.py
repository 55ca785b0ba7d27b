"""torch._dynamo.backends.debugging's `get_nop_func`: a graph compiler that compiles nothing."""

from __future__ import annotations


def nop(gm, example_inputs):
    """The graph itself, run as it is: the compiler of aot_autograd's "aot_eager"."""
    return gm


def get_nop_func():
    """The nop graph compiler, `(gm, example_inputs) -> gm` (PyTorch's boxed_nop, unboxed:
    kiln calls what a compiler returns with the function's arguments)."""
    return nop
