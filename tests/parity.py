"""The one parity helper: feed identical data to PyTorch and kiln, compare values and gradients.

    check_op(lambda t, x, y: t.add(x, y), [(3, 4), (4,)])

`fn(lib, *tensors)` is run with `lib` = torch and with `lib` = kiln on the same random data.
Outputs must agree in shape, dtype and value; gradients of every floating-point input
(through a random upstream gradient) must agree too.
"""

from __future__ import annotations

import numpy as np
import torch

import kiln

DTYPES = {np.float32: (torch.float32, kiln.float32), np.float64: (torch.float64, kiln.float64),
          np.int64: (torch.int64, kiln.int64), np.int32: (torch.int32, kiln.int32),
          np.bool_: (torch.bool, kiln.bool), np.float16: (torch.float16, kiln.float16),
          np.uint8: (torch.uint8, kiln.uint8), np.complex64: (torch.complex64, kiln.complex64),
          np.complex128: (torch.complex128, kiln.complex128)}

TOL = {np.float64: (1e-10, 1e-10), np.float32: (1e-5, 1e-5), np.float16: (1e-2, 1e-2),
       np.complex128: (1e-10, 1e-10), np.complex64: (1e-5, 1e-5)}


def random_array(shape, dtype=np.float32, low=-2.0, high=2.0, rng=None):
    rng = rng or np.random.default_rng(0)
    if dtype == np.bool_:
        return rng.random(shape) > 0.5
    if np.issubdtype(dtype, np.integer):
        return rng.integers(int(low), int(high) + 1, size=shape).astype(dtype)
    if np.issubdtype(dtype, np.complexfloating):     # both parts uniform in [low, high)
        return (rng.uniform(low, high, size=shape) +
                1j * rng.uniform(low, high, size=shape)).astype(dtype)
    return rng.uniform(low, high, size=shape).astype(dtype)


def to_torch(a, requires_grad=False):
    t = torch.from_numpy(np.array(a, copy=True))
    return t.requires_grad_(requires_grad) if requires_grad else t


def to_kiln(a, requires_grad=False, device="cpu"):
    return kiln.tensor(np.array(a, copy=True), device=device, requires_grad=requires_grad)


def _flat(out):
    if isinstance(out, (tuple, list)):
        return [o for x in out for o in _flat(x)]
    return [out]


def assert_close(k, t, atol, rtol, what="output"):
    if isinstance(t, torch.Tensor):
        assert isinstance(k, kiln.Tensor), f"{what}: kiln returned {type(k).__name__}"
        assert tuple(k.shape) == tuple(t.shape), f"{what}: shape {tuple(k.shape)} != " \
                                                 f"torch {tuple(t.shape)}"
        assert k.dtype.name == str(t.dtype).replace("torch.", ""), \
            f"{what}: dtype {k.dtype.name} != torch {t.dtype}"
        kv, tv = k.detach().cpu().numpy(), t.detach().resolve_conj().numpy()
        if tv.dtype == np.bool_ or np.issubdtype(tv.dtype, np.integer):
            np.testing.assert_array_equal(kv, tv, err_msg=what)
        else:
            np.testing.assert_allclose(kv, tv, atol=atol, rtol=rtol, err_msg=what)
    else:
        if isinstance(t, float):
            assert abs(k - t) <= atol + rtol * abs(t), f"{what}: {k} != {t}"
        else:
            assert k == t, f"{what}: {k} != {t}"


def check_op(fn, inputs, *, dtype=np.float32, grad=True, atol=None, rtol=None, low=-2.0,
             high=2.0, seed=0, device="cpu"):
    """Compare `fn(torch, ...)` with `fn(kiln, ...)` on the same data, values and gradients.

    Args:
        fn: `fn(lib, *tensors)`; `lib` is the module (torch or kiln).
        inputs: per input, a shape tuple (random data of `dtype`) or a ready NumPy array.
        grad: also compare gradients of the floating-point inputs.
        device: where kiln's tensors live ("cuda" runs kiln on CuPy; torch stays on the CPU).
    """
    rng = np.random.default_rng(seed)
    arrays = [random_array(x, dtype, low, high, rng) if isinstance(x, tuple) else np.asarray(x)
              for x in inputs]
    floats = [np.issubdtype(a.dtype, np.inexact) for a in arrays]     # complex too
    tt = [to_torch(a, grad and f) for a, f in zip(arrays, floats)]
    kt = [to_kiln(a, grad and f, device) for a, f in zip(arrays, floats)]
    t_out, k_out = fn(torch, *tt), fn(kiln, *kt)
    base = min((a.dtype.type for a in arrays if np.issubdtype(a.dtype, np.inexact)),
               key=lambda d: np.finfo(d).bits, default=np.float64)
    a_tol, r_tol = TOL.get(base, (1e-5, 1e-5))
    atol = a_tol if atol is None else atol
    rtol = r_tol if rtol is None else rtol
    t_flat, k_flat = _flat(t_out), _flat(k_out)
    assert len(t_flat) == len(k_flat), f"{len(k_flat)} outputs, torch has {len(t_flat)}"
    for i, (k, t) in enumerate(zip(k_flat, t_flat)):
        assert_close(k, t, atol, rtol, f"output {i}")
    if not grad or not any(floats):
        return k_out
    diff_t = [(k, t) for k, t in zip(k_flat, t_flat)
              if isinstance(t, torch.Tensor) and t.requires_grad]
    if not diff_t:
        return k_out
    t_loss, k_loss = 0, 0
    for j, (k, t) in enumerate(diff_t):
        if t.is_complex():        # a real loss of a complex output: weigh both parts
            t, k = torch.view_as_real(t.resolve_conj()), kiln.view_as_real(k)
        w = random_array(tuple(t.shape), np.float64, -1, 1, np.random.default_rng(seed + j))
        t_loss = t_loss + (t * to_torch(w.astype(t.detach().numpy().dtype))).sum()
        k_loss = k_loss + (k * to_kiln(w.astype(t.detach().numpy().dtype), device=device)).sum()
    t_loss.backward()
    k_loss.backward()
    for i, (k, t) in enumerate(zip(kt, tt)):
        if t.requires_grad:
            if t.grad is None:
                assert k.grad is None or np.all(k.grad.cpu().numpy() == 0), \
                    f"grad {i}: torch None"
                continue
            assert k.grad is not None, f"grad of input {i} is None, torch has one"
            assert_close(k.grad, t.grad, atol * 10, rtol * 10, f"grad of input {i}")
    return k_out
