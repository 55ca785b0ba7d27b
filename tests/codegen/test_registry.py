"""Registry tests: every primitive a kernel computes has a spelling in every renderer, the shared
scalar decompositions compute their functions, and a primitive's own facts are well-formed."""

import math

import numpy as np
import pytest

import kiln
from kiln.codegen import c as cgen
from kiln.codegen import triton as tgen
from kiln.codegen.common import KERNEL_OPS, computed_primitives, missing_spellings
from kiln.codegen.kernel import LoweringError, lower
from kiln.codegen.scalar import Dialect, decompositions, function_body
from kiln.compiler import trace
from kiln.ir.ops import (CHEAP, COPIED, CREATION, ELEMENTWISE, EXPENSIVE, MOVEMENT, PRIMITIVES,
                         REDUCE, SAVED, P, _float_unary, define)
from kiln.ir.primitive import ScalarMath, undefine
from kiln.ir.interpreter import interpret
from kiln.runtime import c_build
from kiln.runtime.triton_launch import run_kernel

RENDERERS = {"c": cgen.OPS, "triton": tgen.OPS}


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_every_computed_primitive_has_a_spelling(renderer):
    assert "add" in computed_primitives() and "full" in computed_primitives()
    assert missing_spellings(RENDERERS[renderer]) == []


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_no_spelling_of_an_op_that_does_not_exist(renderer):
    stale = set(RENDERERS[renderer]) - set(computed_primitives()) - KERNEL_OPS
    assert not stale, stale


def test_a_primitive_without_a_spelling_is_caught():
    """A new elementwise primitive with no entry in the renderers' tables: the registry check
    names it, and rendering a kernel with it fails with that name (the group would run on
    NumPy, which the check above keeps from happening silently)."""
    define("fake_softsign", ELEMENTWISE, _float_unary, lambda xp, x: x / (1 + xp.abs(x)),
           None, arity=1)
    try:
        for table in RENDERERS.values():
            assert missing_spellings(table) == ["fake_softsign"]
        x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
        graph = trace(lambda t: P.fake_softsign(t * 2.0) + 1.0, kiln.tensor(x)).graphs[0]
        kernel = lower(graph)
        with pytest.raises(LoweringError, match="fake_softsign has no C spelling"):
            cgen.render_c(kernel)
        with pytest.raises(LoweringError, match="fake_softsign has no Triton spelling"):
            tgen.render_triton(kernel)
        # one table entry per renderer is all it takes
        spellings = {"c": lambda a, d, s: f"{a[0]} / (1.0f + fabsf({a[0]}))",
                     "triton": lambda a, d, s: f"{a[0]} / (1.0 + tl.abs({a[0]}))"}
        for name, table in RENDERERS.items():
            table["fake_softsign"] = spellings[name]
            assert missing_spellings(table) == []
        assert "fabsf(" in cgen.render_c(kernel).source
        assert "tl.abs(" in tgen.render_triton(kernel).source
    finally:
        undefine("fake_softsign")
        for table in RENDERERS.values():
            table.pop("fake_softsign", None)
    assert "fake_softsign" not in PRIMITIVES and not hasattr(P, "fake_softsign")
    assert all(missing_spellings(t) == [] for t in RENDERERS.values())


def test_a_primitive_with_scalar_math_needs_no_table_entry():
    """Scalar math on the primitive is spelled by both renderers: a helper in each, computing
    the op (the C one checked against NumPy)."""
    define("fake_softsign", ELEMENTWISE, _float_unary, lambda xp, x: x / (1 + xp.abs(x)),
           None, arity=1, scalar=ScalarMath("x / (1.0 + abs(x))"))
    try:
        assert all(missing_spellings(t) == [] for t in RENDERERS.values())
        x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
        graph = trace(lambda t: P.fake_softsign(t * 2.0) + 1.0, kiln.tensor(x)).graphs[0]
        kernel = lower(graph)
        ck = cgen.render_c(kernel)
        assert "kiln_fake_softsignf(" in ck.source and "kiln_fake_softsignf" in ck.helpers
        assert "def _fake_softsign(x):" in tgen.render_triton(kernel).source
        lib = c_build.load(c_build.start_build(cgen.c_module([ck])))
        out = np.empty_like(x)
        fn = c_build.kernel_function(lib, ck.name, 2)
        fn(c_build.data_pointer(x), c_build.data_pointer(out))
        np.testing.assert_allclose(out, 2 * x / (1 + np.abs(2 * x)) + 1, rtol=1e-6)
    finally:
        undefine("fake_softsign")
    assert all(missing_spellings(t) == [] for t in RENDERERS.values())


# ----------------------------------------------------------------------------- every spelling runs

# attributes a primitive needs, and pow's exponent (renderers take literal exponents only)
ATTRS = {"cast": {"dtype": kiln.float64}}
LITERAL_SECOND = {"pow": 3.0}


def _sample_inputs(prim) -> list:
    """Arrays a primitive accepts: float32 in [-2, 2) away from 0, or in [0.5, 2) where that
    gives NaN (log, sqrt), else int32 in [1, 9); `where` gets a bool condition."""
    rng = np.random.default_rng(len(prim.name))
    floats = [rng.uniform(0.5, 2.0, (3, 5)).astype(np.float32) for _ in range(prim.arity)]
    signed = [a * np.where(rng.random(a.shape) < 0.5, -1, 1).astype(np.float32) for a in floats]
    try:
        with np.errstate(all="ignore"):
            out = prim.impl(np, *signed, **ATTRS.get(prim.name, {}))
        if prim.name != "where" and not np.isnan(np.asarray(out, float)).any():
            floats = signed
    except TypeError:                   # not a float op (bitwise): int32 below
        pass
    if prim.name == "where":
        return [floats[0] > 1.2] + floats[1:]
    ints = [rng.integers(1, 9, (3, 5)).astype(np.int32) for _ in range(prim.arity)]
    for arrays in (floats, ints):
        try:
            with np.errstate(all="ignore"):
                prim.impl(np, *arrays, **ATTRS.get(prim.name, {}))
            prim.infer(tuple(a.shape for a in arrays),
                       tuple(kiln.tensor(a).dtype for a in arrays), **ATTRS.get(prim.name, {}))
            return arrays
        except Exception:               # noqa: BLE001 - this dtype is not one the op takes
            continue
    raise AssertionError(f"no sample inputs for {prim.name}")


@pytest.fixture(scope="module")
def elementwise_graphs() -> dict:
    """Per elementwise primitive, a traced graph `op(inputs) * 1` and its input arrays."""
    graphs = {}
    for name in computed_primitives():
        prim = PRIMITIVES[name]
        if prim.kind != ELEMENTWISE:
            continue                    # creations are covered by tests/codegen/cases.py
        arrays = _sample_inputs(prim)
        if name in LITERAL_SECOND:
            arrays = arrays[:1]

        def call(*ts, name=name):
            args = ts + ((LITERAL_SECOND[name],) if name in LITERAL_SECOND else ())
            return getattr(P, name)(*args, **ATTRS.get(name, {})) * 1
        graphs[name] = (trace(call, *[kiln.tensor(a) for a in arrays]).graphs[0], arrays)
    return graphs


def _assert_matches(name, got, graph, arrays):
    want, _ = interpret(graph, arrays)
    assert got.shape == want[0].shape and got.dtype == want[0].dtype, name
    if want[0].dtype.kind in "biu":
        np.testing.assert_array_equal(got, want[0], err_msg=name)
    else:
        np.testing.assert_allclose(got, want[0], rtol=2e-6, atol=1e-6, err_msg=name)


def test_every_elementwise_primitive_computes_its_definition_in_c(elementwise_graphs):
    """Each elementwise primitive's C kernel equals the IR interpreter (the primitive's impl)."""
    kernels = {name: cgen.render_c(lower(g), name=f"k_{name}")
               for name, (g, _) in elementwise_graphs.items()}
    lib = c_build.load(c_build.start_build(cgen.c_module(list(kernels.values()))))
    for name, (graph, arrays) in elementwise_graphs.items():
        out = np.empty(graph.outputs[0].shape, graph.outputs[0].dtype.np)
        fn = c_build.kernel_function(lib, kernels[name].name, len(arrays) + 1)
        ins = [np.ascontiguousarray(a) for a in arrays]
        fn(*[c_build.data_pointer(a) for a in ins + [out]])
        _assert_matches(name, out, graph, arrays)


def test_every_elementwise_primitive_computes_its_definition_in_triton(elementwise_graphs):
    """The same in Triton's interpreter."""
    assert len(elementwise_graphs) > 30
    for name, (graph, arrays) in elementwise_graphs.items():
        (got,) = run_kernel(graph, arrays)
        _assert_matches(name, got, graph, arrays)


# ----------------------------------------------------------------------------- decompositions

NUMPY = Dialect({"exp": "np.exp", "log": "np.log", "expm1": "np.expm1", "abs": "np.abs"},
                lambda op: f"np_{op}", lambda c, a, b: f"np.where({c}, {a}, {b})", True,
                lambda text: text, "np.inf")
REFERENCE = {"erf": np.vectorize(math.erf, otypes=[np.float64]), "log1p": np.log1p,
             "tanh": np.tanh, "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "sign": np.sign}


def _numpy_function(name):
    """The primitive's scalar math as a NumPy function (calls to other primitives' scalar
    math included)."""
    scope = {"np": np}
    for op, rule in decompositions().items():
        body = "\n".join(f"    {line}" for line in function_body(rule, NUMPY))
        exec(f"def np_{op}({', '.join(rule.params)}):\n{body}\n", scope)
    return scope[f"np_{name}"]


@pytest.mark.parametrize("name", sorted(decompositions()))
def test_scalar_decomposition_computes_its_function(name):
    """Each shared decomposition, spelled as NumPy and run in float32, is within 4 float32 ulps
    of the float64 result (NaN and infinities kept)."""
    assert name in REFERENCE, f"add a NumPy reference for the scalar math of {name}"
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(5000) * s for s in (1e-3, 0.3, 1, 4, 30)]
                       + [[0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30]])
    x32 = x.astype(np.float32)
    with np.errstate(all="ignore"):
        got = _numpy_function(name)(x32).astype(np.float32)
        want = REFERENCE[name](x32.astype(np.float64))
    assert np.array_equal(np.isnan(got), np.isnan(want)), name
    ok = ~np.isnan(want)
    # a result below float32's normal range may flush to zero (sigmoid(-100) in float32)
    ulp = np.maximum(np.spacing(np.abs(want[ok]).astype(np.float32)).astype(np.float64),
                     np.finfo(np.float32).smallest_normal / 4)
    with np.errstate(all="ignore"):
        err = np.abs(got[ok].astype(np.float64) - want[ok]) / ulp
    err[got[ok] == want[ok].astype(np.float32)] = 0
    assert err.max() <= 4, (name, err.max())


@pytest.mark.parametrize("name", sorted(decompositions()))
def test_each_decomposition_is_a_helper_of_both_renderers(name):
    assert f"KILN_HELPER float kiln_{name}f(" in cgen.HELPERS[f"kiln_{name}f"]
    assert f"def _{name}(" in tgen.HELPERS[f"_{name}"]


# ----------------------------------------------------------------------------- primitive facts

def test_primitive_facts_are_well_formed():
    for name, p in PRIMITIVES.items():
        assert p.cost in (CHEAP, EXPENSIVE), name
        assert p.output is None or callable(p.output) or p.output in (SAVED, COPIED), name
        if p.ufunc is not None:
            assert isinstance(getattr(np, p.ufunc, None), np.ufunc), (name, p.ufunc)
        if isinstance(p.reads, tuple) and p.arity is not None:
            assert all(0 <= i < p.arity for i in p.reads), name
        assert not p.view or p.kind == MOVEMENT, name
        assert not p.extern or p.kind in (ELEMENTWISE, REDUCE, MOVEMENT, CREATION), name
        if p.decompose is not None:
            assert p.decompose.__code__.co_argcount >= 1 + (p.arity or 0), name   # b, inputs
