"""kiln's complex tensors (complex64, complex128) against torch 2.13's CPU: dtype facts and type
promotion, creation and random streams, printing, ops and their gradients (PyTorch's
conjugate-Wirtinger convention), views between real and complex, optimizers on complex
parameters, checkpoints, kiln.compile's eager fallback, and a llama-style rotary embedding
trained in both."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import kiln
from tests.parity import check_op, random_array

CDTYPES = [np.complex64, np.complex128]
# check_op's tolerances (gradients get 10x): values to float32/float64 rounding of results
TIGHT = {np.complex64: dict(atol=1e-7, rtol=1e-6), np.complex128: dict(atol=1e-13, rtol=1e-12),
         np.float32: dict(atol=1e-7, rtol=1e-6), np.float64: dict(atol=1e-13, rtol=1e-12)}
PAIRS = [(torch.complex64, kiln.complex64), (torch.complex128, kiln.complex128)]


def _z(shape, dtype=np.complex64, seed=0):
    return random_array(shape, dtype, rng=np.random.default_rng(seed))


def _np(t):
    """A torch or kiln tensor's values as a NumPy array (torch's lazy conjugate resolved)."""
    if isinstance(t, torch.Tensor):
        return t.detach().resolve_conj().numpy()
    return t.detach().cpu().numpy()


# ----------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("tdt,kdt", PAIRS)
def test_complex_dtype_facts_match_torch(tdt, kdt):
    assert kdt.is_complex is tdt.is_complex is True
    assert kdt.is_floating_point is tdt.is_floating_point is False
    assert kdt.itemsize == tdt.itemsize and kdt.is_signed is tdt.is_signed is True
    assert kdt.to_real().name == str(tdt.to_real()).replace("torch.", "")
    real = getattr(kiln, str(tdt.to_real()).replace("torch.", ""))
    assert real.to_complex() is kdt and kdt.to_complex() is kdt
    x = kiln.zeros(2, dtype=kdt)
    assert x.is_complex() and not x.is_floating_point() and x.element_size() == tdt.itemsize
    assert kiln.cfloat is kiln.complex64 and kiln.cdouble is kiln.complex128


def test_complex32_is_refused_clearly():
    assert kiln.chalf is kiln.complex32 and kiln.complex32.is_complex
    with pytest.raises(RuntimeError, match="no complex32.*complex64"):
        kiln.zeros(2, dtype=kiln.chalf)


OPERANDS = {
    "f32": lambda L: L.ones(2), "f64": lambda L: L.ones(2, dtype=L.float64),
    "i64": lambda L: L.ones(2, dtype=L.int64), "b": lambda L: L.ones(2, dtype=L.bool),
    "c64": lambda L: L.ones(2, dtype=L.complex64), "c128": lambda L: L.ones(2, dtype=L.complex128),
    "0d_c64": lambda L: L.tensor(1j, dtype=L.complex64),
    "0d_c128": lambda L: L.tensor(1j, dtype=L.complex128),
    "0d_f64": lambda L: L.tensor(1.0, dtype=L.float64),
    "py_complex": lambda L: 2 - 1j, "py_float": lambda L: 0.5, "py_int": lambda L: 3,
}
PROMOTIONS = [(a, b) for a in ("f32", "f64", "i64", "b", "c64", "c128", "0d_f64")
              for b in ("c64", "c128", "0d_c64", "0d_c128", "py_complex", "py_float", "py_int")]


@pytest.mark.parametrize("a,b", PROMOTIONS)
def test_promotion_with_complex_matches_torch(a, b):
    t = OPERANDS[a](torch) * OPERANDS[b](torch)
    k = OPERANDS[a](kiln) * OPERANDS[b](kiln)
    assert k.dtype.name == str(t.dtype).replace("torch.", "")
    np.testing.assert_allclose(_np(k), _np(t))


def test_python_complex_data_and_the_default_dtype():
    for data in ([1 + 2j, 3.0], 1j, [[1, 2j]], np.array([1 + 1j], dtype=np.complex128)):
        k, t = kiln.tensor(data), torch.tensor(data)
        assert k.dtype.name == str(t.dtype).replace("torch.", "")
        np.testing.assert_array_equal(_np(k), _np(t))
    kiln.set_default_dtype(kiln.float64)
    torch.set_default_dtype(torch.float64)
    try:
        assert kiln.tensor([1j]).dtype is kiln.complex128 is getattr(
            kiln, str(torch.tensor([1j]).dtype).replace("torch.", ""))
        assert (kiln.ones(2) * 1j).dtype is kiln.complex128
    finally:
        kiln.set_default_dtype(kiln.float32)
        torch.set_default_dtype(torch.float32)


# ----------------------------------------------------------------------------- creation

@pytest.mark.parametrize("tdt,kdt", PAIRS)
def test_factories_make_complex_tensors(tdt, kdt):
    for make in (lambda L, d: L.zeros(2, 3, dtype=d), lambda L, d: L.ones(4, dtype=d),
                 lambda L, d: L.full((2, 2), 1.5 - 2j, dtype=d),
                 lambda L, d: L.full((3,), 2 + 1j),
                 lambda L, d: L.zeros_like(L.ones(3), dtype=d),
                 lambda L, d: L.eye(3, dtype=d)):
        t, k = make(torch, tdt), make(kiln, kdt)
        assert k.dtype.name == str(t.dtype).replace("torch.", "")
        np.testing.assert_array_equal(_np(k), _np(t))


@pytest.mark.parametrize("tdt,kdt", PAIRS)
@pytest.mark.parametrize("n", [3, 40])       # below and above the vectorized normal's 16
def test_randn_and_rand_draw_torchs_stream(tdt, kdt, n):
    """PyTorch draws a complex tensor's real view (real and imaginary parts interleaved), the
    normals with std 1/sqrt(2). Uniforms agree bit for bit; normals as kiln's real ones do:
    exactly below 16 values, to the last bits of the vectorized math above."""
    for draw in ("randn", "rand"):
        torch.manual_seed(3)
        kiln.manual_seed(3)
        t = getattr(torch, draw)(n, 2, dtype=tdt)
        k = getattr(kiln, draw)(n, 2, dtype=kdt)
        assert k.dtype is kdt
        if draw == "rand" or n == 3:
            np.testing.assert_array_equal(_np(k), _np(t))
        else:
            np.testing.assert_allclose(_np(k), _np(t), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("tdt,kdt", PAIRS)
def test_inplace_normal_and_uniform_on_complex_tensors_draw_torchs_stream(tdt, kdt):
    for draw, args in (("normal_", (0.5, 2.0)), ("uniform_", (-1.0, 3.0))):
        torch.manual_seed(5)
        kiln.manual_seed(5)
        t = getattr(torch.empty(2, 3, dtype=tdt), draw)(*args)
        k = getattr(kiln.empty(2, 3, dtype=kdt), draw)(*args)
        if draw == "uniform_":
            np.testing.assert_array_equal(_np(k), _np(t))
        else:                               # normals: to the last bits of the math
            np.testing.assert_allclose(_np(k), _np(t), rtol=1e-6 if kdt is kiln.complex64
                                       else 1e-14)


# ----------------------------------------------------------------------------- python values

@pytest.mark.parametrize("data", [[1 + 2j], [1.5 - 2j, -3.25 + 0j], [[1e-5 + 2j, 3 - 1j]],
                                  [[1.5 + 2.25j, -3 - 1j], [0j, 100.123 + 7j]], 1 + 2j,
                                  [float("nan") + 1j, 2j]])
@pytest.mark.parametrize("tdt,kdt", PAIRS)
def test_printing_matches_torch(data, tdt, kdt):
    t, k = torch.tensor(data, dtype=tdt), kiln.tensor(data, dtype=kdt)
    assert repr(k) == repr(t).replace("torch.", "kiln.")
    t.requires_grad_()
    k.requires_grad_()
    assert repr(k) == repr(t).replace("torch.", "kiln.")


def test_item_tolist_numpy_give_python_complex():
    k = kiln.tensor([[1 + 2j, -0.5j]], dtype=kiln.complex128)
    t = torch.tensor([[1 + 2j, -0.5j]], dtype=torch.complex128)
    assert k[0, 0].item() == t[0, 0].item() == 1 + 2j and type(k[0, 1].item()) is complex
    assert k.tolist() == t.tolist()
    assert k.numpy().dtype == np.complex128 and complex(k[0, 0]) == 1 + 2j


# ----------------------------------------------------------------------------- ops

UNARY = {
    "neg": lambda L, x: -x, "exp": lambda L, x: x.exp(), "log": lambda L, x: L.log(x),
    "sqrt": lambda L, x: x.sqrt(), "sin": lambda L, x: L.sin(x), "cos": lambda L, x: x.cos(),
    "tanh": lambda L, x: L.tanh(x), "sigmoid": lambda L, x: L.sigmoid(x),
    "abs": lambda L, x: x.abs(), "angle": lambda L, x: x.angle(),
    "conj": lambda L, x: x.conj() * 1, "conj_physical": lambda L, x: L.conj_physical(x),
    "real": lambda L, x: x.real * 2, "imag": lambda L, x: x.imag * 2,
    "square": lambda L, x: x * x, "pow_int": lambda L, x: x ** 3, "reciprocal": lambda L, x: 1 / x,
    "sgn": lambda L, x: L.sgn(x), "view_as_real": lambda L, x: L.view_as_real(x) * 1,
    "sum": lambda L, x: x.sum(), "sum_dim": lambda L, x: x.sum(1, keepdim=True),
    "mean": lambda L, x: x.mean(0), "prod": lambda L, x: x.prod(1),
    "cumsum": lambda L, x: x.cumsum(0), "cumprod": lambda L, x: x.cumprod(1),
    "logsumexp": lambda L, x: L.logsumexp(x, 1),
    "layout": lambda L, x: L.cat([x.reshape(4, 3).t()[1:], L.stack([x[0], x[1]])]).t()[:, :3],
    "index": lambda L, x: x[[0, 2], 1:] + x.view(-1)[:3].flip(0).unsqueeze(0).expand(2, 3),
    "transpose_matmul": lambda L, x: x.t() @ x, "adjoint": lambda L, x: x.mH @ x,
    "real_times_complex": lambda L, x: x.real * x + 2.5,
    "python_complex": lambda L, x: (x + (1 - 2j)) * 1j - 3j / (x + 4),
    "norm": lambda L, x: x.norm() + x.norm(p=1, dim=0).sum(),
    "linalg_norms": lambda L, x: L.linalg.vector_norm(x, dim=1) + L.linalg.matrix_norm(x),
    "var_std": lambda L, x: x.var(0) + x.std(),
    "vdot": lambda L, x: L.vdot(x[0], x[1]),
    "einsum": lambda L, x: L.einsum("ij,kj->ik", x, x.conj()),
}


@pytest.mark.parametrize("dtype", CDTYPES, ids=["c64", "c128"])
@pytest.mark.parametrize("name", sorted(UNARY))
def test_op_values_and_gradients_match_torch(name, dtype):
    check_op(UNARY[name], [(3, 4)], dtype=dtype, low=-1.5, high=1.5, seed=1, **TIGHT[dtype])


BINARY = {
    "add": lambda L, x, y: x + y, "sub": lambda L, x, y: x - y, "mul": lambda L, x, y: x * y,
    "div": lambda L, x, y: x / y, "matmul": lambda L, x, y: x @ y.t(),
    "broadcast_mul": lambda L, x, y: x[:, :1] * y[0],
    "where": lambda L, x, y: L.where(x.real > 0, x, y),
    "pow": lambda L, x, y: x ** y,
}


@pytest.mark.parametrize("dtype", CDTYPES, ids=["c64", "c128"])
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_op_values_and_gradients_match_torch(name, dtype):
    check_op(BINARY[name], [(3, 4), (3, 4)], dtype=dtype, low=0.2, high=1.5, seed=2,
             **TIGHT[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_real_inputs_to_complex_results_match_torch(dtype):
    """polar, complex and a real tensor times a complex one give the real inputs real
    gradients, the real parts of the complex ones, as PyTorch."""
    tight = TIGHT[dtype]
    check_op(lambda L, r, a: L.polar(r, a), [(2, 3), (2, 3)], dtype=dtype, low=0.1, **tight)
    check_op(lambda L, re, im: L.complex(re, im) * L.complex(im, re[0]), [(2, 3), (2, 3)],
             dtype=dtype, **tight)
    check_op(lambda L, x: L.view_as_complex(x) ** 2, [(4, 2)], dtype=dtype, **tight)
    check_op(lambda L, x, y: x * L.view_as_complex(y), [(3,), (3, 2)], dtype=dtype, **tight)
    check_op(lambda L, x: x.to(L.complex128).exp().angle(), [(5,)], dtype=dtype, **tight)


@pytest.mark.parametrize("tdt,kdt", PAIRS)
def test_comparisons_and_closeness(tdt, kdt):
    a = _z((6,), seed=3)
    b = a.copy()
    b[::2] += 1e-9 + 1e-9j
    b[1] += 1j
    ta, tb = torch.tensor(a, dtype=tdt), torch.tensor(b, dtype=tdt)
    ka, kb = kiln.tensor(a, dtype=kdt), kiln.tensor(b, dtype=kdt)
    assert (ka == kb).tolist() == (ta == tb).tolist()
    assert (ka != kb).tolist() == (ta != tb).tolist()
    assert kiln.isclose(ka, kb).tolist() == torch.isclose(ta, tb).tolist()
    assert kiln.allclose(ka, kb) is torch.allclose(ta, tb) is False
    assert kiln.allclose(ka, ka + 1e-9) is torch.allclose(ta, ta + 1e-9) is True
    assert kiln.isreal(ka - ka.imag * 1j).tolist() == torch.isreal(ta - ta.imag * 1j).tolist()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
def test_linalg_eig_and_eigvals_match_torch(dtype):
    """Eigenvalues in LAPACK's order, unit eigenvectors (equal up to each column's phase, which
    is arbitrary), and the gradient of a loss that does not depend on those phases."""
    rng = np.random.default_rng(12)
    a = rng.standard_normal((2, 4, 4)) + (1j * rng.standard_normal((2, 4, 4))
                                          if np.issubdtype(dtype, np.complexfloating) else 0)
    a = a.astype(dtype)
    w = rng.uniform(-1, 1, (2, 4, 4))
    out = {}
    for lib in (torch, kiln):
        A = lib.tensor(a, requires_grad=True)
        values, vectors = lib.linalg.eig(A)
        loss = (values.real * values.imag).sum() + ((vectors.abs() ** 2) * lib.tensor(w)).sum() \
            + lib.linalg.eigvals(A).abs().sum()
        loss.backward()
        out[lib.__name__] = _np(values), _np(vectors), _np(A.grad), _np(lib.linalg.inv(
            A.detach().to(lib.complex128) * (1 + 1j)))
    tol = 1e-4 if dtype in (np.float32, np.complex64) else 1e-9
    (tv, tV, tg, ti), (kv, kV, kg, ki) = out["torch"], out["kiln"]
    assert kv.dtype == tv.dtype and kV.dtype == tV.dtype and kg.dtype == tg.dtype
    np.testing.assert_allclose(kv, tv, rtol=tol, atol=tol)
    phases = np.abs(np.einsum("bij,bij->bj", kV.conj(), tV))     # |<kiln column, torch's>|
    np.testing.assert_allclose(phases, 1.0, atol=tol)
    np.testing.assert_allclose(kg, tg, rtol=tol, atol=tol)
    np.testing.assert_allclose(ki, ti, rtol=1e-9, atol=1e-9)     # inv of a complex matrix


def test_complex_ordering_is_refused_as_torch_refuses_it():
    k, t = kiln.tensor([1 + 1j, 2j]), torch.tensor([1 + 1j, 2j])
    for op in (lambda x: x < x, lambda x: x >= 1, lambda x: x.max(), lambda x: x.argmax(),
               lambda x: x.clamp(0, 1), lambda x: x.relu(), lambda x: x.sort(),
               lambda x: x.floor(), lambda x: x.topk(1)):
        with pytest.raises(RuntimeError):
            op(t)
        with pytest.raises(RuntimeError, match="complex"):
            op(k)


def test_backward_of_a_complex_scalar_raises_as_torch():
    z = kiln.tensor([1 + 1j], requires_grad=True)
    with pytest.raises(RuntimeError, match="only for real scalar outputs"):
        (z * z).sum().backward()
    with pytest.raises(RuntimeError, match="only for real scalar outputs"):
        torch.tensor([1 + 1j], requires_grad=True).sum().backward()
    # a gradient given explicitly is PyTorch's vector-Jacobian product
    zt = torch.tensor([1 + 1j, 2 - 1j], requires_grad=True)
    zk = kiln.tensor([1 + 1j, 2 - 1j], requires_grad=True)
    (zt * zt).backward(torch.tensor([1 - 2j, 0.5j]))
    (zk * zk).backward(kiln.tensor([1 - 2j, 0.5j]))
    np.testing.assert_allclose(_np(zk.grad), _np(zt.grad), rtol=1e-6)


# ----------------------------------------------------------------------------- views

def test_real_imag_and_view_as_real_are_views_of_the_complex_memory():
    k = kiln.tensor([1 + 2j, 3 - 1j])
    t = torch.tensor([1 + 2j, 3 - 1j])
    for x in (k, t):
        x.real.mul_(2)
        x.imag.add_(1)
        (torch if x is t else kiln).view_as_real(x)[1, 0] = 7.0
    np.testing.assert_array_equal(_np(k), _np(t))
    k.imag = kiln.tensor([0.5, 0.25])
    t.imag = torch.tensor([0.5, 0.25])
    np.testing.assert_array_equal(_np(k), _np(t))
    r = kiln.tensor([[1.0, 2.0], [3.0, 4.0]])
    z = kiln.view_as_complex(r)
    z.mul_(1j)                                        # writes r's memory
    assert r.tolist() == [[-2.0, 1.0], [-4.0, 3.0]]
    # view_as_real of a strided complex tensor (a transpose) is a view too
    m = kiln.tensor(_z((3, 4), np.complex128))
    tm = torch.tensor(m.numpy())
    np.testing.assert_array_equal(_np(kiln.view_as_real(m.t())), _np(torch.view_as_real(tm.t())))
    with pytest.raises(RuntimeError, match="last dimension of size 2"):
        kiln.view_as_complex(kiln.ones(3, 3))
    # a write through a part-view of a tensor with history: refused (kiln's autograd cannot
    # route it), never a silently wrong gradient; a value requiring grad written into a fresh
    # tensor's parts gets torch's gradient
    y = kiln.tensor([1 + 2j], requires_grad=True) * 1
    with pytest.raises(RuntimeError, match="cannot track an in-place write through .real"):
        y.real.mul_(2)
    grads = []
    for lib in (torch, kiln):
        v = lib.tensor([0.5, -2.0], requires_grad=True)
        z = lib.zeros(2, dtype=lib.complex64)
        z.imag.copy_(v * 3)
        (z * lib.tensor([1 + 1j, 2 - 1j])).abs().sum().backward()
        grads.append(_np(v.grad))
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-6)


# ----------------------------------------------------------------------------- optimizers

@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
                                     ("Adam", dict(lr=0.05)),
                                     ("AdamW", dict(lr=0.05, weight_decay=0.1, amsgrad=True))])
def test_optimizers_on_complex_parameters_match_torch(name, kw):
    """PyTorch updates a complex parameter on its real view: Adam's second moment is per real
    and imaginary part (a complex square would be wrong); 5 steps, the same values."""
    w0, x = _z((3, 4), seed=4), _z((5, 3), seed=5)
    results = []
    for lib in (torch, kiln):
        w = lib.nn.Parameter(lib.tensor(w0))
        opt = getattr(lib.optim, name)([w], **kw)
        losses = []
        for _ in range(5):
            opt.zero_grad()
            loss = ((lib.tensor(x) @ w).abs() ** 2).mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        state = {k: _np(v) for k, v in opt.state[w].items() if isinstance(v, lib.Tensor)}
        results.append((losses, _np(w), state))
    (tl, tw, ts), (kl, kw_, ks) = results
    np.testing.assert_allclose(kl, tl, rtol=1e-5)
    np.testing.assert_allclose(kw_, tw, rtol=1e-5, atol=1e-6)
    assert sorted(ks) == sorted(ts)
    for key in ts:
        assert ks[key].dtype == ts[key].dtype          # complex state, as PyTorch keeps it
        np.testing.assert_allclose(ks[key], ts[key], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- checkpoints

def test_complex_state_dict_round_trips_through_save_and_load(tmp_path):
    import safetensors.numpy
    model = kiln.nn.Linear(3, 2)
    model.w = kiln.nn.Parameter(kiln.randn(3, 4, dtype=kiln.cfloat))
    opt = kiln.optim.Adam(model.parameters())
    (model.w.abs().sum() + model(kiln.randn(1, 3)).sum()).backward()
    opt.step()
    z128 = kiln.tensor(_z((2, 3), np.complex128)).t()
    path = tmp_path / "c.kiln"
    kiln.save({"model": model.state_dict(), "opt": opt.state_dict(), "z": z128}, path)
    back = kiln.load(path)
    assert back["model"]["w"].dtype is kiln.complex64
    np.testing.assert_array_equal(back["model"]["w"].numpy(), model.w.detach().numpy())
    assert back["z"].dtype is kiln.complex128 and back["z"].tolist() == z128.tolist()
    exp_avg = opt.state[model.w]["exp_avg"]
    saved = [s["exp_avg"] for s in back["opt"]["state"].values() if s["exp_avg"].is_complex()]
    assert len(saved) == 1 and saved[0].tolist() == exp_avg.tolist()
    # the complex64 tensor is safetensors' C64, which the safetensors package reads
    kiln.save({"w": model.w.detach()}, tmp_path / "w.kiln")
    raw = safetensors.numpy.load_file(str(tmp_path / "w.kiln"))
    assert any(a.dtype == np.complex64 and np.array_equal(a, model.w.detach().numpy())
               for a in raw.values())
    # and a torch complex tensor written by safetensors loads into kiln
    import safetensors.torch
    t = torch.randn(2, 3, dtype=torch.cfloat)
    safetensors.torch.save_file({"t": t}, str(tmp_path / "t.safetensors"))
    loaded = kiln.load(tmp_path / "t.safetensors")
    assert loaded["t"].dtype is kiln.complex64 and np.array_equal(loaded["t"].numpy(), t.numpy())


# ----------------------------------------------------------------------------- compile

def test_compiled_function_with_complex_tensors_runs_eagerly_and_equals_eager():
    w = kiln.randn(4, 3, dtype=kiln.cfloat)

    def spectral(x):                       # a complex tensor reached by name
        return kiln.fft.irfft2(kiln.fft.rfft2(x)[..., :3] * w, s=(4, 4)).pow(2).sum()

    def made_inside(x):                    # complex made from real inputs only
        return (kiln.fft.rfft(x) * (1 + 2j)).abs().sum() + kiln.polar(x, x).imag.sum()

    x = kiln.randn(2, 4, 4, requires_grad=True)
    for fn, named in ((spectral, "w: complex64[4, 3]"), (made_inside, "fft_r2c")):
        compiled = kiln.compile(fn)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                x.grad = None
                a = compiled(x)
                a.backward()
                ga = x.grad.clone()
                x.grad = None
                b = fn(x)
                b.backward()
                assert a.item() == b.item() and ga.tolist() == x.grad.tolist()
        messages = [str(c.message) for c in caught]
        assert len(messages) == 1 and "complex" in messages[0] and named in messages[0]
        with pytest.raises(kiln.compiler.GraphBreak, match="complex"):
            kiln.compile(fn, fullgraph=True)(x)


# ----------------------------------------------------------------------------- llama RoPE

def _rope_module(lib, dim: int, heads: int, seq: int, weights: dict):
    """Attention with llama's rotary embedding, written as users write it (complex
    frequencies from torch.polar; queries and keys rotated through view_as_complex)."""
    nn = lib.nn

    def precompute_freqs_cis(head_dim: int, end: int, theta: float = 10000.0):
        freqs = 1.0 / (theta ** (lib.arange(0, head_dim, 2)[: head_dim // 2].float()
                                 / head_dim))
        t = lib.arange(end, device=freqs.device)
        freqs = lib.outer(t, freqs).float()
        return lib.polar(lib.ones_like(freqs), freqs)

    def reshape_for_broadcast(freqs_cis, x):
        shape = [d if i == 1 or i == x.ndim - 1 else 1 for i, d in enumerate(x.shape)]
        return freqs_cis.view(*shape)

    def apply_rotary_emb(xq, xk, freqs_cis):
        xq_ = lib.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
        xk_ = lib.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
        freqs_cis = reshape_for_broadcast(freqs_cis, xq_)
        xq_out = lib.view_as_real(xq_ * freqs_cis).flatten(3)
        xk_out = lib.view_as_real(xk_ * freqs_cis).flatten(3)
        return xq_out.type_as(xq), xk_out.type_as(xk)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads, self.head_dim = heads, dim // heads
            self.wq = nn.Linear(dim, dim, bias=False)
            self.wk = nn.Linear(dim, dim, bias=False)
            self.wv = nn.Linear(dim, dim, bias=False)
            self.wo = nn.Linear(dim, dim, bias=False)
            self.freqs_cis = precompute_freqs_cis(self.head_dim, seq)

        def forward(self, x):
            b, s, _ = x.shape
            q = self.wq(x).view(b, s, self.heads, self.head_dim)
            k = self.wk(x).view(b, s, self.heads, self.head_dim)
            v = self.wv(x).view(b, s, self.heads, self.head_dim)
            q, k = apply_rotary_emb(q, k, self.freqs_cis[:s])
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            att = (q @ k.transpose(2, 3)) / self.head_dim ** 0.5
            out = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, s, -1)
            return self.wo(out)

    model = Attention()
    with lib.no_grad():
        for name, p in model.named_parameters():
            p.copy_(lib.tensor(weights[name]))
    return model


def test_llama_rotary_embedding_trains_as_in_torch():
    dim, heads, seq = 16, 2, 6
    rng = np.random.default_rng(7)
    weights = {n: rng.normal(0, 0.3, (dim, dim)).astype(np.float32)
               for n in ("wq.weight", "wk.weight", "wv.weight", "wo.weight")}
    x = rng.normal(size=(3, seq, dim)).astype(np.float32)
    y = rng.normal(size=(3, seq, dim)).astype(np.float32)
    losses = {}
    for lib in (torch, kiln):
        model = _rope_module(lib, dim, heads, seq, weights)
        assert model.freqs_cis.dtype == lib.complex64
        opt = lib.optim.Adam(model.parameters(), lr=1e-2)
        out = []
        for _ in range(5):
            opt.zero_grad()
            loss = ((model(lib.tensor(x)) - lib.tensor(y)) ** 2).mean()
            loss.backward()
            opt.step()
            out.append(loss.item())
        losses[lib.__name__] = out
    np.testing.assert_allclose(losses["kiln"], losses["torch"], rtol=1e-5)
    assert losses["kiln"][-1] < losses["kiln"][0]
    # the training step under kiln.compile: eager (the rotation is complex), the same bits
    model = _rope_module(kiln, dim, heads, seq, weights)
    opt = kiln.optim.Adam(model.parameters(), lr=1e-2)

    @kiln.compile
    def step(x, y):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        return loss
    with pytest.warns(UserWarning, match="complex"):
        compiled = [step(kiln.tensor(x), kiln.tensor(y)).item() for _ in range(5)]
    assert compiled == losses["kiln"]


# ----------------------------------------------------------------------------- CUDA

@pytest.mark.gpu
def test_complex_on_cuda_matches_the_cpu():
    a, b = _z((3, 4), seed=8), _z((3, 4), seed=9)
    for dtype in (kiln.complex64, kiln.complex128):
        ca = kiln.tensor(a, dtype=dtype, device="cuda", requires_grad=True)
        cb = kiln.tensor(b, dtype=dtype, device="cuda")
        ha = kiln.tensor(a, dtype=dtype, requires_grad=True)
        hb = kiln.tensor(b, dtype=dtype)
        outs = []
        for x, y in ((ca, cb), (ha, hb)):
            z = (x * y + x.exp() / (y + 2)).sum(0)
            spec = kiln.fft.fft(x) + kiln.fft.ifft2(y, norm="ortho")
            loss = z.abs().sum() + kiln.view_as_real(spec).pow(2).sum() + x.angle().sum()
            loss.backward()
            outs.append((z, spec, x.grad, kiln.fft.irfft(x, n=6), kiln.fft.rfft(x.real)))
        for c, h in zip(*outs):
            assert c.device.type == "cuda" and c.dtype is h.dtype
            np.testing.assert_allclose(c.cpu().detach().numpy(), h.detach().numpy(),
                                       rtol=1e-5, atol=1e-5)
    z = kiln.randn(2, 3, dtype=kiln.cfloat, device="cuda")
    assert z.device.type == "cuda" and z.cpu().dtype is kiln.complex64


# ----------------------------------------------------------------------------- conjugating ops

def _both(fn_t, fn_k, *arrays):
    """fn on torch tensors and on kiln tensors of the same complex128 values."""
    return (fn_t(*[torch.from_numpy(a) for a in arrays]),
            fn_k(*[kiln.tensor(a) for a in arrays]))


_CONJUGATING = {
    "H": (lambda m: m.H, [(3, 4)]),
    "vecdot": (lambda t, x, y: t.linalg.vecdot(x, y), [(2, 5), (2, 5)]),
    "cov": (lambda t, x: t.cov(x), [(3, 6)]),
    "corrcoef": (lambda t, x: t.corrcoef(x), [(3, 6)]),
    "norm_nuc": (lambda t, x: t.norm(x, p="nuc"), [(4, 3)]),
    "svdvals": (lambda t, x: t.linalg.svdvals(x), [(2, 3, 5)]),
    "matrix_norm_2": (lambda t, x: t.linalg.matrix_norm(x, 2), [(4, 4)]),
    "matrix_norm_fro_dtype": (lambda t, x: t.linalg.matrix_norm(x, dtype=t.complex128),
                              [(3, 4)]),
    "cond": (lambda t, x: t.linalg.cond(x), [(4, 4)]),
    "solve": (lambda t, a, b: t.linalg.solve(a, b), [(4, 4), (4, 2)]),
    "solve_right": (lambda t, a, b: t.linalg.solve(a, b, left=False), [(3, 3), (2, 3)]),
    "pinv": (lambda t, a: t.linalg.pinv(a), [(2, 5, 3)]),
    "lstsq": (lambda t, a, b: t.linalg.lstsq(a, b, driver="gelsd").solution, [(5, 3), (5, 2)]),
    "logsumexp_0d": (lambda t, x: t.logsumexp(x * 30, 0), [()]),
    "float_power": (lambda t, x, y: t.float_power(x, y), [(4,), (4,)]),
    "logaddexp": (lambda t, x, y: t.logaddexp(x, y), [(5,), (5,)]),
    "logcumsumexp": (lambda t, x: t.logcumsumexp(x * 4, 0), [(6, 2)]),
    "vander": (lambda t, x: t.linalg.vander(x), [(4,)]),
    "masked_var": (lambda t, x: t.masked.var(x, 0), [(5, 2)]),
    "silu": (lambda t, x: t.nn.functional.silu(x), [(5,)]),
    "istft_two_sided": (lambda t, x: t.istft(x, 6, window=t.ones(6, dtype=t.float64),
                                             onesided=False), [(6, 3)]),
}


@pytest.mark.parametrize("name", sorted(_CONJUGATING))
def test_complex_values_match_torch(name):
    """Ops whose complex result conjugates, wraps an imaginary part or keeps the complex dtype
    (each once gave a silent wrong answer): values and dtype as torch's."""
    fn, shapes = _CONJUGATING[name]
    arrays = [np.asarray(_z(s, np.complex128, seed=i)) for i, s in enumerate(shapes)]
    if name == "H":
        t, k = _both(fn, fn, *arrays)
    else:
        t, k = _both(lambda *a: fn(torch, *a), lambda *a: fn(kiln, *a), *arrays)
    assert str(k.dtype).split(".")[-1] == str(t.dtype).split(".")[-1]
    np.testing.assert_allclose(_np(k), _np(t), rtol=1e-10, atol=1e-10)


def test_cholesky_inverse_and_solve_of_complex_factors_match_torch():
    a = _z((3, 3), np.complex128)
    A = a @ a.conj().T + 3 * np.eye(3)
    L = np.linalg.cholesky(A)
    B = _z((3, 2), np.complex128, seed=1)
    for upper, F in ((False, L), (True, L.conj().T)):
        t_inv = torch.cholesky_inverse(torch.from_numpy(F), upper=upper)
        k_inv = kiln.cholesky_inverse(kiln.tensor(F), upper=upper)
        np.testing.assert_allclose(_np(k_inv), _np(t_inv), rtol=1e-10, atol=1e-10)
        t_sol = torch.cholesky_solve(torch.from_numpy(B), torch.from_numpy(F), upper=upper)
        k_sol = kiln.cholesky_solve(kiln.tensor(B), kiln.tensor(F), upper=upper)
        np.testing.assert_allclose(_np(k_sol), _np(t_sol), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["logaddexp2", "copysign", "nextafter", "xlogy", "igamma"])
def test_binary_ops_without_complex_kernel_refuse_as_torch(name):
    """torch has no complex kernel for these: kiln raises too, not a real-part answer."""
    z = _z((3,))
    with pytest.raises(NotImplementedError):
        getattr(torch, name)(torch.from_numpy(np.asarray(z)), torch.from_numpy(np.asarray(z)))
    with pytest.raises(NotImplementedError, match="complex"):
        getattr(kiln, name)(kiln.tensor(z), kiln.tensor(z))


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4)])
def test_H_refuses_what_is_not_a_matrix_as_torch(shape):
    with pytest.raises(RuntimeError, match="only supported on matrices"):
        torch.zeros(shape, dtype=torch.complex64).H
    with pytest.raises(RuntimeError, match="only supported on matrices"):
        kiln.zeros(shape, dtype=kiln.complex64).H
