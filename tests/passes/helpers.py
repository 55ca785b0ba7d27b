"""Shared fixtures for pass tests: the tracer corpus, traced once, and result comparison."""

from __future__ import annotations

import functools

import numpy as np

import kiln
from kiln.ir.interpreter import interpret
from kiln.passes.cleanup import optimize
from tests.tracer.test_trace_corpus import CASES


@functools.lru_cache(maxsize=None)
def traced(name: str):
    """(graph, input arrays) of one corpus case, traced once per test session."""
    kiln.manual_seed(0)
    fn, args = CASES[name]()
    captured = kiln.compiler.trace(fn, *args, _snapshot=True)
    (program,) = captured.programs
    return program.graph, [np.array(a) for a in program.snapshots]


def assert_same_results(before, after, inputs, rtol=1e-6, atol=1e-6) -> None:
    """Interpreting `after` gives `before`'s outputs and write-backs (NaNs where NaNs are)."""
    want_out, want_mut = interpret(before, [a.copy() for a in inputs])
    got_out, got_mut = interpret(after, [a.copy() for a in inputs])
    assert len(got_out) == len(want_out) and len(got_mut) == len(want_mut)
    for got, want in zip(got_out + got_mut, want_out + want_mut):
        assert np.shape(got) == np.shape(want)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)


def trace_random_program(program, seed):
    """(graph, input arrays) of one hypothesis-drawn program from the tracer's strategies."""
    from kiln.tracer.trace import flatten
    from tests.tracer.test_random_programs import _build

    shapes, steps, grad = program
    rng = np.random.default_rng(seed)
    inputs = [kiln.tensor(rng.uniform(-2, 2, s), requires_grad=grad) for s in shapes]
    body = _build(shapes, steps)

    def fn(*xs):
        outs = body(*xs)
        if grad:
            sum(o.sum() for o in outs).backward()
            return [o.detach() for o in outs]
        return outs
    captured = kiln.compiler.trace(fn, *inputs, _snapshot=True)
    (prog,) = captured.programs
    assert len(flatten(captured.result)[0]) == prog.num_user_outputs
    return prog.graph, [np.array(a) for a in prog.snapshots]


def traced_optimized(fn, *args):
    """`fn` traced on `args` and cleaned up: (the optimized graph, its input arrays)."""
    (program,) = kiln.compiler.trace(fn, *args, _snapshot=True).programs
    optimized, _ = optimize(program.graph)
    return optimized, [np.array(a) for a in program.snapshots]


def nodes_of(graph, op: str) -> list:
    """The nodes of `graph` computing `op`."""
    return [n for n in graph.nodes if n.op == op]
