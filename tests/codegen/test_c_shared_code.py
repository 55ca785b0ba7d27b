"""C kernels that compute alike but for where their inputs start (an RNN's cell at each time
step, reading its rows of one input projection) share one C function, each step's kernel a
call of it with its pointers moved (`kiln.codegen.lower._render_c`). Checked: the key that
groups them (`kernel.shared_form`), and compiled programs against eager kiln and PyTorch."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import kiln
from kiln.codegen.kernel import Load, lower, shared_form
from kiln.runtime import c_build
from tests.codegen.test_c_codegen import _graph

pytestmark = pytest.mark.skipif(c_build.compiler_problem() is not None,
                                reason="no working C compiler")


def _row_kernel(t: int, rows: int = 4, width: int = 6):
    """sigmoid(x[t] + h) for a (5, rows, width) x: its load of x starts at row block t."""
    x = np.ones((5, rows, width), np.float32)
    h = np.ones((rows, width), np.float32)
    return lower(_graph(lambda x, h: kiln.sigmoid(x[t] + h), [x, h]))


def test_kernels_reading_other_rows_of_one_input_share_a_form_with_their_shifts():
    forms = [shared_form(_row_kernel(t)) for t in range(5)]
    assert len({key for _, _, key in forms}) == 1
    assert [shifts for _, shifts, _ in forms] == [(24 * t, 0) for t in range(5)]
    # the shared form's loads start at the moved pointer; its values are numbered in order
    loads = [st for st in forms[3][0].body if isinstance(st, Load)]
    assert all("24" not in str(st.offset) and "72" not in str(st.offset) for st in loads)
    dests = [st.dest for st in forms[3][0].body if hasattr(st, "dest")]
    assert dests == [f"t{i}" for i in range(len(dests))]


def test_an_input_written_in_place_keeps_its_offsets():
    form, shifts, _ = shared_form(_row_kernel(2), fixed=frozenset({0}))
    assert shifts == (0, 0)
    assert any("48" in str(st.offset) for st in form.body if isinstance(st, Load))


def test_different_shapes_or_ops_do_not_share():
    keys = {shared_form(_row_kernel(1, rows=r))[2] for r in (4, 3)}
    assert len(keys) == 2


def _lstm_step(lib, seed=0):
    lib.manual_seed(seed)
    rnn, head = lib.nn.LSTM(6, 8, 2), lib.nn.Linear(8, 3)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = lib.optim.SGD(params, lr=0.1)

    def step(x, y):
        out, _ = rnn(x)
        loss = lib.nn.functional.cross_entropy(head(out).reshape(-1, 3), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    return step, params


def test_an_lstm_step_runs_one_function_per_kind_of_cell_and_matches_eager_and_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 4, 6), dtype=np.float32)
    y = rng.integers(0, 3, (7, 4))
    step, params = _lstm_step(kiln)
    eager, eager_params = _lstm_step(kiln)
    for p, q in zip(params, eager_params):
        with kiln.no_grad():
            p.copy_(q)
    tstep, tparams = _lstm_step(torch)
    with torch.no_grad():
        for p, q in zip(tparams, eager_params):
            p.copy_(torch.from_numpy(q.detach().numpy()))
    compiled = kiln.compile(step)
    for _ in range(3):
        got = compiled(kiln.from_numpy(x), kiln.from_numpy(y))
        want = eager(kiln.from_numpy(x), kiln.from_numpy(y))
        ref = tstep(torch.from_numpy(x), torch.from_numpy(y))
        np.testing.assert_allclose(got.item(), want.item(), rtol=1e-6)
        np.testing.assert_allclose(got.item(), ref.item(), rtol=1e-5)
    for p, q, r in zip(params, eager_params, tparams):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(p.detach().numpy(), r.detach().numpy(), rtol=1e-4,
                                   atol=1e-5)
    entry = max(compiled.entries.values(), key=lambda e: e.calls)
    source = entry.executor.module_source
    kernels = [s for s in entry.executor.steps if s[0] == "c"]
    shared = re.findall(r"static __attribute__\(\(noinline\)\) void (\w+_code)\(", source)
    calls = re.findall(r"one of (\d+) kernels sharing: (\w+_code)", source)
    # every time step's cell (forward and backward) calls a shared function, defined once
    assert len(shared) == len(set(shared)) and set(name for _, name in calls) == set(shared)
    assert len(calls) >= 2 * 7 * 2 - 4 and len(shared) <= 10 < len(kernels)
    assert re.search(r"inputs moved \(in\d by \d+ elements\)", source)
