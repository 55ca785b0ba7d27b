"""Index expressions: a run of coordinates that spells out part of their linear index is
written as that part (`merge_digits`), with the same value at every index."""

import itertools
import math
import operator

import numpy as np
import pytest

import kiln
from kiln.codegen.kernel import BinOp, Const, IndexVar, Load, Var, add, lower, merge_digits, mul
from kiln.compiler import trace
from kiln.ir.interpreter import interpret
from kiln.runtime.triton_launch import run_kernel

_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "//": operator.floordiv,
        "%": operator.mod}


def _value(e, env: dict) -> int:
    if isinstance(e, Var):
        return env[e.name]
    if isinstance(e, Const):
        return e.value
    return _OPS[e.op](_value(e.a, env), _value(e.b, env))


def _digits(shape: tuple, linear: str = "rindex", prefix: str = "r") -> tuple:
    """The index vars of `linear` over `shape`, as the lowering makes them."""
    strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
    return tuple(IndexVar(f"{prefix}{i}", linear, s, 0 if i == 0 else d, "elem")
                 for i, (s, d) in enumerate(zip(strides, shape)))


def _offset(coords: list, strides: list, const: int = 0):
    out = Const(const)
    for c, s in zip(coords, strides):
        out = add(out, mul(c, s))
    return out


def _assert_same(e, merged, digits, extent: int) -> None:
    for index in range(extent):
        env = {"rindex": index, "row": 5}
        for iv in digits:
            env[iv.name] = _value(iv.expr(), env)
        assert _value(e, env) == _value(merged, env), (e, merged, index)


def _has_division(e) -> bool:
    return isinstance(e, BinOp) and (e.op in ("//", "%") or _has_division(e.a) or
                                     _has_division(e.b))


@pytest.mark.parametrize("shape", [(64, 8, 8), (4, 3, 5, 2), (7, 6)])
def test_all_digits_in_order_become_the_linear_index(shape):
    digits = _digits(shape)
    row_major = [math.prod(shape[i + 1:]) for i in range(len(shape))]
    e = add(mul(_offset([Var(iv.name) for iv in digits], row_major), 16), Var("row"))
    merged = merge_digits(e, digits)
    assert not _has_division(merged) and "rindex" in str(merged)
    _assert_same(e, merged, digits, math.prod(shape))


@pytest.mark.parametrize("shape", [(64, 8, 8), (4, 3, 5, 2)])
def test_every_partial_run_keeps_its_value(shape):
    # any subset of the digits with any strides: merged or not, the value is the same
    digits = _digits(shape)
    rng = np.random.default_rng(0)
    row_major = [math.prod(shape[i + 1:]) for i in range(len(shape))]
    for keep in itertools.product([False, True], repeat=len(shape)):
        for scale in (1, 3):
            strides = [s * scale if k else int(rng.integers(1, 50))
                       for s, k in zip(row_major, keep)]
            e = _offset([Var(iv.name) for iv in digits], strides, const=2)
            _assert_same(e, merge_digits(e, digits), digits, math.prod(shape))


def test_a_transposed_channels_last_read_loads_without_division():
    # batch norm's statistics of a channels-last buffer seen as NCHW: the load walks rindex
    def stats(y):
        x = y.reshape(8, 4, 4, 16).permute(0, 3, 1, 2)
        return x.sum((0, 2, 3), keepdim=True)
    y = kiln.randn(128, 16)
    (program,) = trace(stats, y).programs
    kernel = lower(program.graph)
    (load,) = [s for s in kernel.body if isinstance(s, Load)]
    assert not _has_division(load.offset), str(load.offset)
    arrays = [y.numpy()]
    want, _ = interpret(program.graph, arrays)
    got = run_kernel(program.graph, arrays)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)


def _loop_nest(shape: tuple, groups: tuple) -> list:
    """(var, size, stride) per loop, as the C renderer nests a pointwise kernel over `shape`
    with the dims of each group (consecutive dim indices) merged into one loop."""
    loops = []
    for g in groups:
        size = math.prod(shape[i] for i in g)
        loops.append((f"g{g[0]}", size, math.prod(shape[g[-1] + 1:])))
    return loops


@pytest.mark.parametrize("shape, groups", [
    ((4, 3, 5), ((0,), (1,), (2,))),
    ((4, 3, 5), ((0,), (1, 2))),
    ((2, 3, 4, 5), ((0, 1), (2,), (3,))),
    ((2, 1, 6, 4), ((0,), (1, 2), (3,))),
])
def test_loop_digits_keep_every_value(shape, groups):
    from kiln.codegen.c import loop_digits
    numel = math.prod(shape)
    loops = _loop_nest(shape, groups)
    strides = [s for _, _, s in loops]
    bounds = sorted(set(strides) | {numel})
    x = Var("xindex")
    spelled = [BinOp("%", x, Const(m)) for m in bounds[1:]]
    spelled += [BinOp("//", x, Const(d)) for d in strides]
    spelled += [BinOp("%", BinOp("//", x, Const(d)), Const(top // d))
                for d in strides for top in bounds if top > d]
    spelled.append(add(mul(BinOp("%", x, Const(bounds[1])), 7), Const(3)))
    others = [BinOp("%", x, Const(7)), BinOp("//", x, Const(7))]   # no run of loops spells these
    for e in spelled + others:
        rewritten = loop_digits(e, loops, numel)
        for linear in range(numel):
            env = {"xindex": linear}
            for var, size, stride in loops:
                env[var] = linear // stride % size
            assert _value(rewritten, env) == _value(e, env), (e, rewritten, linear)
        if e in spelled:
            assert not _has_division(rewritten) and "xindex" not in _names(rewritten), rewritten
        else:
            assert rewritten == e


def _names(e) -> set:
    if isinstance(e, Var):
        return {e.name}
    if isinstance(e, BinOp):
        return _names(e.a) | _names(e.b)
    return set()
