"""The C backend's thin-product kernel (kiln.runtime.gemm_cpu): values against torch's matmul,
what it declines, and recurrent layers' training steps compiled (where their step products run
on it) against eager kiln and PyTorch."""

import numpy as np
import pytest
import torch

import kiln
from kiln.runtime import c_build, gemm_cpu

needs_cc = pytest.mark.skipif(c_build.compiler_problem() is not None, reason="no C compiler")


@pytest.fixture(autouse=True)
def _kernels_taken(monkeypatch):
    """The kernels run, and are checked, on every CPU: only kiln's choice of them waits for
    AVX-512 (`wide_vectors`), where they are faster than BLAS."""
    monkeypatch.setattr(gemm_cpu, "wide_vectors", lambda: True)


def test_without_wide_vectors_blas_runs_the_products(monkeypatch):
    monkeypatch.setattr(gemm_cpu, "wide_vectors", lambda: False)
    a, b = np.ones((20, 128), np.float32), np.ones((128, 512), np.float32)
    assert not gemm_cpu.takes(20, 128, 512) and not gemm_cpu.takes_windows(72, 64)
    assert gemm_cpu.thin_matmul(a, b) is None


def _torch_product(a, b):
    return torch.from_numpy(np.ascontiguousarray(a)) @ torch.from_numpy(np.ascontiguousarray(b))


@needs_cc
@pytest.mark.parametrize("m", [1, 2, 4, 5, 6, 13, 20, 32])
@pytest.mark.parametrize("k,n", [(128, 64), (128, 512), (300, 192)])
def test_thin_products_equal_torch(m, k, n):
    rng = np.random.default_rng(m * 1000 + k + n)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    got = gemm_cpu.thin_matmul(a, b)
    assert got is not None and got.shape == (m, n) and got.dtype == np.float32
    # one float32 sum over k per element, against torch's blocked sums: rounding apart
    np.testing.assert_allclose(got, _torch_product(a, b).numpy(), rtol=1e-5, atol=2e-5)


@needs_cc
def test_strided_operands_and_a_given_output():
    rng = np.random.default_rng(1)
    wide = rng.standard_normal((20, 400), dtype=np.float32)
    a = wide[:, 100:356]                        # rows 400 apart
    tall = rng.standard_normal((256, 640), dtype=np.float32)
    b = tall[:, 64:576]                         # rows 640 apart
    at = np.ascontiguousarray(rng.standard_normal((256, 7), dtype=np.float32)).T  # transposed
    out = np.full((20, 512), np.nan, np.float32)
    assert gemm_cpu.thin_matmul(a, b, out) is out
    np.testing.assert_allclose(out, _torch_product(a, b).numpy(), rtol=1e-5, atol=2e-5)
    got = gemm_cpu.thin_matmul(at, b)           # its left operand copied to contiguous rows
    np.testing.assert_allclose(got, _torch_product(at, b).numpy(), rtol=1e-5, atol=2e-5)
    # a transposed right operand only through its contiguous copy
    w = rng.standard_normal((512, 256), dtype=np.float32)
    assert gemm_cpu.thin_matmul(a, w.T) is None
    got = gemm_cpu.thin_matmul(a, w.T, packed=np.ascontiguousarray(w.T))
    np.testing.assert_allclose(got, _torch_product(a, w.T).numpy(), rtol=1e-5, atol=2e-5)


@needs_cc
def test_non_finite_values_propagate_as_in_torch():
    a = np.ones((3, 128), np.float32)
    b = np.ones((128, 64), np.float32)
    a[1, 5] = np.inf
    b[7, 3] = np.nan
    got = gemm_cpu.thin_matmul(a, b)
    np.testing.assert_array_equal(got, _torch_product(a, b).numpy())


@pytest.mark.parametrize("shape_a,shape_b,dtype", [
    ((33, 128), (128, 64), np.float32),        # too many rows
    ((8, 64), (64, 128), np.float32),          # inner dimension too short
    ((8, 128), (128, 100), np.float32),        # columns not a multiple of 64
    ((8, 128), (128, 64), np.float64),
])
def test_declines_what_it_does_not_take(shape_a, shape_b, dtype):
    a, b = np.ones(shape_a, dtype), np.ones(shape_b, dtype)
    assert gemm_cpu.thin_matmul(a, b) is None


def _train(lib, mode, steps, compiled, state=None, keep=None):
    """Losses and final parameters of `steps` SGD steps of a 2-layer `mode` (hidden 128:
    gate products 20x128 @ 128x(128 * gates)) over 7 time steps, batch 20; the compiled step
    is appended to `keep` when given."""
    nn = lib.nn
    lib.manual_seed(0)
    rnn = getattr(nn, mode)(64, 128, 2)
    head = nn.Linear(128, 10)
    params = list(rnn.parameters()) + list(head.parameters())
    if state is not None:
        with lib.no_grad():
            for p, v in zip(params, state):
                p.copy_(lib.from_numpy(v.copy()))
    opt = lib.optim.SGD(params, lr=0.1)
    rng = np.random.default_rng(3)
    x = lib.from_numpy(rng.standard_normal((7, 20, 64), dtype=np.float32))
    y = lib.from_numpy(rng.integers(0, 10, (7 * 20,)))

    def step(x, y):
        out = rnn(x)[0]
        loss = nn.functional.cross_entropy(head(out).reshape(-1, 10), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    run = kiln.compile(step) if compiled else step
    if keep is not None:
        keep.append(run)
    losses = [run(x, y).item() for _ in range(steps)]
    return losses, [p.detach().numpy().copy() for p in params]


@needs_cc
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_recurrent_training_steps_compiled_equal_eager_and_torch(mode, monkeypatch):
    calls = []
    kernel = gemm_cpu.kernel

    def counted():
        fn = kernel()
        calls.append(fn)
        return fn
    monkeypatch.setattr(gemm_cpu, "kernel", counted)
    eager_losses, eager_params = _train(kiln, mode, 4, compiled=False)
    assert not calls                            # eager runs no compiled program
    state = _train(kiln, mode, 0, compiled=False)[1]
    comp_losses, comp_params = _train(kiln, mode, 4, compiled=True, state=state)
    assert calls                                # the step products ran on the kernel
    torch_losses, torch_params = _train(torch, mode, 4, compiled=False, state=state)
    np.testing.assert_allclose(comp_losses, eager_losses, rtol=1e-5)
    np.testing.assert_allclose(comp_losses, torch_losses, rtol=1e-5)
    for pc, pe, pt in zip(comp_params, eager_params, torch_params):
        np.testing.assert_allclose(pc, pe, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pc, pt, rtol=1e-5, atol=1e-6)


@needs_cc
def test_without_the_kernel_the_products_run_on_numpy(monkeypatch):
    # no kernel (no compiler at run time): the untransposed thin products still compute right
    monkeypatch.setattr(gemm_cpu, "kernel", lambda: None)
    state = _train(kiln, "LSTM", 0, compiled=False)[1]
    comp_losses, comp_params = _train(kiln, "LSTM", 2, compiled=True, state=state)
    torch_losses, torch_params = _train(torch, "LSTM", 2, compiled=False, state=state)
    np.testing.assert_allclose(comp_losses, torch_losses, rtol=1e-5)
    for pc, pt in zip(comp_params, torch_params):
        np.testing.assert_allclose(pc, pt, rtol=1e-5, atol=1e-6)


@needs_cc
def test_gate_gradients_are_stored_in_place_by_the_kernels_computing_them():
    """Each backward time step's LSTM gate gradients (pieces side by side in the (batch, 4 *
    hidden) gradient the step's products read) are stored there by the kernel computing them:
    no kernel only copies pieces together (one per step and layer did)."""
    runs = []
    _train(kiln, "LSTM", 1, compiled=True, keep=runs)
    (entry,) = runs[0].entries.values()
    kernels = [st.graph for st in entry.executor.program.steps if st.kind == "c"]
    assert not [g for g in kernels if {n.op for n in g.nodes} <= {"pad", "add"}]
    stored = [g for g in kernels if any(n.op == "pad" for n in g.nodes)]
    assert len(stored) >= 2 * 6           # 2 layers, 7 steps (the last may differ)
