"""Automatic mixed precision (kiln.autocast) against torch 2.13's CPU autocast: the dtype and the
value each op's cast policy gives, nesting and enabled=False, gradients of a small MLP and CNN
trained with GradScaler, compiled functions inside and outside autocast, and the CUDA policy
(dtypes) under the fake CUDA.

The tests are parametrized over `LOW_DTYPES`, the autocast dtypes kiln has (float16 today; a
name added there, bfloat16, runs every case again; the CUDA cases take those kiln has on CUDA).
Values are compared in float32 with the tolerance of the low dtype (`TOL`): half precision
rounds each product's inputs, and the two libraries accumulate differently.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import kiln

LOW_DTYPES = ["float16", "bfloat16"]
CUDA_LOW_DTYPES = [d for d in LOW_DTYPES if d != "bfloat16"]     # kiln has no CUDA bfloat16
# (rtol, atol) for values computed from inputs rounded to the low dtype
TOL = {"float16": (1e-2, 1e-2), "bfloat16": (5e-2, 5e-2)}


def _rng():
    return np.random.default_rng(0)


def _name(dtype) -> str:
    return str(dtype).replace("torch.", "").replace("kiln.", "")


def _assert_same(k, t, low: str, what: str = "") -> None:
    assert _name(k.dtype) == _name(t.dtype), f"{what}: kiln {k.dtype} != torch {t.dtype}"
    assert tuple(k.shape) == tuple(t.shape), f"{what}: kiln {k.shape} != torch {t.shape}"
    rtol, atol = TOL[low]
    np.testing.assert_allclose(k.detach().float().numpy(), t.detach().float().numpy(),
                               rtol=rtol, atol=atol, err_msg=what)


# ----------------------------------------------------------------------------- op policies

R = _rng()
A, B, V, W = (R.uniform(-1, 1, s).astype(np.float32) for s in ((4, 6), (6, 5), (6,), (5, 6)))
X3 = R.uniform(-1, 1, (2, 4, 6)).astype(np.float32)
IMG = R.uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
KER = R.uniform(-0.5, 0.5, (5, 3, 3, 3)).astype(np.float32)
KER1 = R.uniform(-0.5, 0.5, (5, 4, 3)).astype(np.float32)
VOL = R.uniform(-1, 1, (1, 2, 4, 4, 4)).astype(np.float32)
LOGITS = R.uniform(-2, 2, (4, 6)).astype(np.float32)
TARGET = np.array([0, 3, 5, 1])
POS = R.uniform(0.1, 1, (4, 6)).astype(np.float32)
SQUARE = (R.uniform(-1, 1, (4, 4)) + 4 * np.eye(4)).astype(np.float32)
SIGNS = np.sign(R.uniform(-1, 1, (4, 6))).astype(np.float32)

# name -> fn(lib, F, tensor) where tensor(array, low=False) builds that library's input, in the
# autocast dtype when `low` is set. Inputs in float32 unless the case says otherwise.
LOWER_CASES = {
    "mm": lambda L, F, T: L.mm(T(A), T(B)),
    "matmul operator": lambda L, F, T: T(A) @ T(B),
    "matmul batched": lambda L, F, T: L.matmul(T(X3), T(B)),
    "bmm": lambda L, F, T: L.bmm(T(X3), T(X3).transpose(1, 2)),
    "addmm": lambda L, F, T: L.addmm(T(V[:5]), T(A), T(B)),
    "baddbmm": lambda L, F, T: L.baddbmm(T(X3[:, :, :4]), T(X3), T(X3).transpose(1, 2)),
    "addbmm": lambda L, F, T: L.addbmm(T(A[:, :4]), T(X3), T(X3).transpose(1, 2)),
    "linear": lambda L, F, T: F.linear(T(A), T(W), T(V[:5])),
    "linear mixed input": lambda L, F, T: F.linear(T(A, low=True), T(W)),
    "conv1d": lambda L, F, T: F.conv1d(T(X3), T(KER1), T(V[:5]), padding=1),
    "conv2d": lambda L, F, T: F.conv2d(T(IMG), T(KER), T(V[:5]), stride=2),
    "conv3d": lambda L, F, T: F.conv3d(T(VOL), T(KER[:2, :2, :, :, None].repeat(2, 4))),
    "conv_transpose1d": lambda L, F, T: F.conv_transpose1d(T(X3), T(KER1.transpose(1, 0, 2))),
    "conv_transpose2d": lambda L, F, T: F.conv_transpose2d(T(IMG), T(KER.transpose(1, 0, 2, 3))),
    "prelu": lambda L, F, T: F.prelu(T(A), T(np.array([0.25], np.float32))),
    "scaled_dot_product_attention": lambda L, F, T: F.scaled_dot_product_attention(
        T(X3), T(X3), T(X3)),
    "einsum": lambda L, F, T: L.einsum("ij,jk->ik", T(A), T(B)),
    "tensordot": lambda L, F, T: L.tensordot(T(A), T(B), dims=1),
    "nn.Linear": lambda L, F, T: _seeded_linear(L)(T(A)),
    "linalg.multi_dot": lambda L, F, T: L.linalg.multi_dot([T(A), T(B), T(W)]),
    "linalg.vecdot": lambda L, F, T: L.linalg.vecdot(T(A), T(A)),
}

FP32_CASES = {       # low-precision inputs come out in float32 (torch's CPU fp32 list)
    "mse_loss": lambda L, F, T: F.mse_loss(T(A, low=True), T(A * 0.5, low=True)),
    "l1_loss": lambda L, F, T: F.l1_loss(T(A, low=True), T(A * 0.5, low=True)),
    "smooth_l1_loss": lambda L, F, T: F.smooth_l1_loss(T(A, low=True), T(A * 2, low=True)),
    "huber_loss": lambda L, F, T: F.huber_loss(T(A, low=True), T(A * 2, low=True)),
    "nll_loss": lambda L, F, T: F.nll_loss(T(LOGITS, low=True), T(TARGET)),
    "cross_entropy": lambda L, F, T: F.cross_entropy(T(LOGITS, low=True), T(TARGET)),
    "kl_div": lambda L, F, T: F.kl_div(T(LOGITS, low=True), T(POS, low=True),
                                       reduction="batchmean"),
    "binary_cross_entropy": lambda L, F, T: F.binary_cross_entropy(T(POS * 0.9, low=True),
                                                                   T(POS, low=True)),
    "binary_cross_entropy_with_logits": lambda L, F, T: F.binary_cross_entropy_with_logits(
        T(LOGITS, low=True), T(POS, low=True)),
    "soft_margin_loss": lambda L, F, T: F.soft_margin_loss(T(A, low=True), T(SIGNS[:, :6])),
    "hinge_embedding_loss": lambda L, F, T: F.hinge_embedding_loss(T(A, low=True), T(SIGNS)),
    "poisson_nll_loss": lambda L, F, T: F.poisson_nll_loss(T(A, low=True), T(POS, low=True)),
    "margin_ranking_loss": lambda L, F, T: F.margin_ranking_loss(
        T(V, low=True), T(V[::-1].copy(), low=True), T(np.sign(V))),
    "cosine_embedding_loss": lambda L, F, T: F.cosine_embedding_loss(
        T(A, low=True), T(A[::-1].copy(), low=True), T(np.array([1.0, -1, 1, -1], np.float32))),
    "triplet_margin_loss": lambda L, F, T: F.triplet_margin_loss(
        T(A, low=True), T(A * 0.5, low=True), T(A[::-1].copy(), low=True)),
    "multi_margin_loss": lambda L, F, T: F.multi_margin_loss(T(LOGITS, low=True), T(TARGET)),
    "prod": lambda L, F, T: L.prod(T(POS + 0.5, low=True), 1),
    "cdist": lambda L, F, T: L.cdist(T(A, low=True), T(A * 2, low=True)),
    "trace": lambda L, F, T: L.trace(T(A[:, :4], low=True)),
    "pad reflect": lambda L, F, T: F.pad(T(IMG, low=True), (1, 1, 2, 2), mode="reflect"),
    "pad replicate": lambda L, F, T: F.pad(T(IMG, low=True), (1, 1, 2, 2), mode="replicate"),
    "quantile": lambda L, F, T: L.quantile(T(A, low=True), 0.3),
    "inverse": lambda L, F, T: L.inverse(T(SQUARE, low=True)),
    "Tensor.inverse": lambda L, F, T: T(SQUARE, low=True).inverse(),
    "linalg.inv": lambda L, F, T: L.linalg.inv(T(SQUARE, low=True)),
    "linalg.solve": lambda L, F, T: L.linalg.solve(T(SQUARE, low=True), T(SQUARE[:, :2])),
    "linalg.svdvals": lambda L, F, T: L.linalg.svdvals(T(SQUARE, low=True)),
    "linalg.eigvalsh": lambda L, F, T: L.linalg.eigvalsh(T(SQUARE @ SQUARE.T, low=True)),
    "max_pool3d": lambda L, F, T: F.max_pool3d(T(VOL, low=True), 2),
    "avg_pool3d": lambda L, F, T: F.avg_pool3d(T(VOL, low=True), 2),
    "adaptive_avg_pool3d": lambda L, F, T: F.adaptive_avg_pool3d(T(VOL, low=True), 2),
}

UNLISTED_CASES = {   # no CPU policy: each keeps its inputs' dtype, low or float32
    "exp": lambda L, F, T, low: L.exp(T(A, low=low)),
    "softmax": lambda L, F, T, low: L.softmax(T(A, low=low), -1),
    "log_softmax": lambda L, F, T, low: F.log_softmax(T(A, low=low), -1),
    "sum": lambda L, F, T, low: T(A, low=low).sum(0),
    "cumsum": lambda L, F, T, low: L.cumsum(T(A, low=low), 1),
    "layer_norm": lambda L, F, T, low: F.layer_norm(T(A, low=low), (6,)),
    "group_norm": lambda L, F, T, low: F.group_norm(T(IMG, low=low), 3),
    "gelu": lambda L, F, T, low: F.gelu(T(A, low=low)),
    "pad constant": lambda L, F, T, low: F.pad(T(IMG, low=low), (1, 1)),
    "mean": lambda L, F, T, low: T(A, low=low).mean(1),
    "add mixed": lambda L, F, T, low: T(A, low=low) + T(A),
    "mv": lambda L, F, T, low: L.mv(T(A, low=low), T(V, low=low)),
    "dot": lambda L, F, T, low: L.dot(T(V, low=low), T(V[::-1].copy(), low=low)),
    "outer": lambda L, F, T, low: L.outer(T(V, low=low), T(V, low=low)),
    "addmv": lambda L, F, T, low: L.addmv(T(V[:4], low=low), T(A, low=low), T(V, low=low)),
    "addr": lambda L, F, T, low: L.addr(T(A, low=low), T(V[:4], low=low), T(V, low=low)),
    "normalize": lambda L, F, T, low: F.normalize(T(A, low=low)),
    "batch_norm": lambda L, F, T, low: F.batch_norm(T(IMG, low=low), None, None, training=True),
}

PROMOTE_CASES = {    # the widest floating input wins
    "cat low+f32": lambda L, F, T: L.cat([T(A, low=True), T(A)]),
    "cat low+low": lambda L, F, T: L.cat([T(A, low=True), T(A, low=True)]),
    "stack low+f32": lambda L, F, T: L.stack([T(A), T(A, low=True)]),
    "index_copy": lambda L, F, T: T(A, low=True).index_copy(0, T(np.array([2])), T(A[:1])),
}


def _seeded_linear(lib):
    torch.manual_seed(0)
    ref = torch.nn.Linear(6, 5)
    layer = lib.nn.Linear(6, 5)
    if lib is kiln:
        layer.load_state_dict({k: kiln.tensor(v.detach().numpy())
                               for k, v in ref.state_dict().items()})
    else:
        layer.load_state_dict(ref.state_dict())
    return layer


def _run_case(lib, fn, low: str, *extra):
    low_dtype = getattr(lib, low)

    def T(array, low=False):
        t = lib.tensor(np.ascontiguousarray(array))
        return t.to(low_dtype) if low else t
    with lib.autocast("cpu", dtype=low_dtype):
        return fn(lib, lib.nn.functional, T, *extra)


@pytest.mark.parametrize("low", LOW_DTYPES)
@pytest.mark.parametrize("case", sorted(LOWER_CASES))
def test_lower_precision_ops_compute_in_the_autocast_dtype(case, low) -> None:
    t = _run_case(torch, LOWER_CASES[case], low)
    k = _run_case(kiln, LOWER_CASES[case], low)
    assert _name(t.dtype) == low        # the reference itself is in the low dtype
    _assert_same(k, t, low, case)


@pytest.mark.parametrize("low", LOW_DTYPES)
@pytest.mark.parametrize("case", sorted(FP32_CASES))
def test_fp32_ops_compute_in_float32(case, low) -> None:
    t = _run_case(torch, FP32_CASES[case], low)
    k = _run_case(kiln, FP32_CASES[case], low)
    assert t.dtype is torch.float32
    _assert_same(k, t, low, case)


@pytest.mark.parametrize("low", LOW_DTYPES)
@pytest.mark.parametrize("inputs_low", [False, True], ids=["f32-inputs", "low-inputs"])
@pytest.mark.parametrize("case", sorted(UNLISTED_CASES))
def test_ops_without_a_cpu_policy_keep_their_dtype(case, inputs_low, low) -> None:
    t = _run_case(torch, UNLISTED_CASES[case], low, inputs_low)
    k = _run_case(kiln, UNLISTED_CASES[case], low, inputs_low)
    _assert_same(k, t, low, case)


@pytest.mark.parametrize("low", LOW_DTYPES)
@pytest.mark.parametrize("case", sorted(PROMOTE_CASES))
def test_promote_ops_take_the_widest_input(case, low) -> None:
    t = _run_case(torch, PROMOTE_CASES[case], low)
    k = _run_case(kiln, PROMOTE_CASES[case], low)
    _assert_same(k, t, low, case)


@pytest.mark.parametrize("low", LOW_DTYPES)
def test_float64_and_integer_tensors_are_never_cast(low) -> None:
    a = kiln.tensor(A, dtype=kiln.float64)
    with kiln.autocast("cpu", dtype=getattr(kiln, low)):
        assert (a @ a.T).dtype is kiln.float64
        assert kiln.nn.functional.mse_loss(a, a * 2).dtype is kiln.float64
        ints = kiln.tensor(TARGET)
        assert kiln.cat([ints, ints]).dtype is kiln.int64
    np.testing.assert_allclose((a @ a.T).numpy(), A.astype(np.float64) @ A.T, rtol=1e-12)


def _seq():
    return _rng().normal(size=(2, 5, 8)).astype(np.float32)


MODULE_CASES = {      # a layer with torch's weights, called on the same input
    "MultiheadAttention": (lambda L: L.nn.MultiheadAttention(8, 2, batch_first=True),
                           lambda m, x: m(x, x, x)[0], _seq),
    "TransformerEncoderLayer": (lambda L: L.nn.TransformerEncoderLayer(
        8, 2, 16, dropout=0.0, batch_first=True), lambda m, x: m(x), _seq),
    "LayerNorm": (lambda L: L.nn.LayerNorm(8), lambda m, x: m(x), _seq),
    "BatchNorm1d": (lambda L: L.nn.BatchNorm1d(5), lambda m, x: m(x), _seq),
    "Bilinear": (lambda L: L.nn.Bilinear(8, 8, 3), lambda m, x: m(x, x), _seq),
    "GRU": (lambda L: L.nn.GRU(8, 4, batch_first=True), lambda m, x: m(x)[0], _seq),
    "Conv3d": (lambda L: L.nn.Conv3d(5, 2, 3, padding=1), lambda m, x: m(x),
               lambda: _rng().normal(size=(1, 5, 4, 4, 3)).astype(np.float32)),
    "ConvTranspose1d": (lambda L: L.nn.ConvTranspose1d(5, 2, 3), lambda m, x: m(x), _seq),
}


@pytest.mark.parametrize("low", LOW_DTYPES)
@pytest.mark.parametrize("case", sorted(MODULE_CASES))
def test_layers_under_autocast_match_torch(case, low) -> None:
    make, call, data = MODULE_CASES[case]
    torch.manual_seed(0)
    ref = make(torch)
    layer = make(kiln)
    layer.load_state_dict({k: kiln.tensor(v.detach().numpy())
                           for k, v in ref.state_dict().items()})
    x = data()
    with torch.autocast("cpu", dtype=getattr(torch, low)):
        t = call(ref, torch.tensor(x))
    with kiln.autocast("cpu", dtype=getattr(kiln, low)):
        k = call(layer, kiln.tensor(x))
    _assert_same(k, t, low, case)


@pytest.mark.parametrize("low", LOW_DTYPES)
def test_weight_cast_cache_keeps_gradients_and_fresh_values(low) -> None:
    # a weight used twice in one region is cast once; backward inside the region (gradient
    # accumulation) and an update of the weight inside it still give the right gradients
    grads = {}
    for lib in (torch, kiln):
        w = lib.tensor(B, requires_grad=True)
        x = lib.tensor(A)
        with lib.autocast("cpu", dtype=getattr(lib, low)):
            for _ in range(2):
                ((x @ w) * (x @ w)).float().sum().backward()
            with lib.no_grad():
                scaled = x @ w
        grads[lib.__name__] = w.grad.numpy().copy(), scaled.float().numpy()
    np.testing.assert_allclose(grads["kiln"][0], grads["torch"][0], *TOL[low])
    np.testing.assert_allclose(grads["kiln"][1], grads["torch"][1], *TOL[low])
    w = kiln.tensor(B, requires_grad=True)
    with kiln.autocast("cpu", dtype=getattr(kiln, low)):
        first = kiln.tensor(A) @ w
        with kiln.no_grad():
            w.mul_(2.0)                 # a new version: the cached cast is not reused
        second = kiln.tensor(A) @ w
    np.testing.assert_allclose(second.detach().float().numpy(),
                               2 * first.detach().float().numpy(), *TOL[low])


def _wrapped_for_autocast(fn) -> bool:
    while fn is not None:
        if getattr(fn, "_autocast_name", None) is not None:
            return True
        fn = getattr(fn, "__wrapped__", None)
    return False


def test_every_name_of_the_tables_reaches_a_kiln_op() -> None:
    # a registry test: a misspelt name, or an op exported without its policy, fails here
    from kiln.tracer import autocast
    not_in_kiln: set = set()          # (eigvals, of complex results, came with complex)
    namespaces = (kiln, kiln.nn.functional, kiln.linalg, kiln.Tensor)
    for name in sorted(autocast.policy_names() - not_in_kiln):
        found = [getattr(ns, name) for ns in namespaces if callable(getattr(ns, name, None))]
        assert found, f"autocast's tables name {name}, which kiln does not have"
        assert any(_wrapped_for_autocast(fn) for fn in found), f"{name} has no autocast policy"
    for name in not_in_kiln:
        assert not any(hasattr(ns, name) for ns in namespaces), f"kiln has {name} now"


# ----------------------------------------------------------------------------- the state

@pytest.mark.parametrize("low", LOW_DTYPES)
def test_nesting_enabled_false_and_decorator_restore_the_state_as_torch(low) -> None:
    def trace(lib):
        kd = getattr(lib, low)
        x = lib.tensor(A)
        seen = []

        @lib.autocast("cpu", dtype=kd)
        def decorated(y):
            return (y @ y.T).dtype

        seen.append(((x @ x.T).dtype, lib.is_autocast_enabled("cpu")))
        with lib.autocast("cpu", dtype=kd):
            seen.append(((x @ x.T).dtype, lib.is_autocast_enabled("cpu"),
                         lib.get_autocast_dtype("cpu")))
            with lib.autocast("cpu", enabled=False):
                seen.append(((x @ x.T).dtype, lib.is_autocast_enabled("cpu")))
                seen.append(decorated(x))
            with lib.autocast("cpu", dtype=kd):
                seen.append(((x @ x.T).dtype, lib.is_autocast_enabled("cpu")))
            seen.append(((x @ x.T).dtype, lib.is_autocast_enabled("cpu")))
            seen.append(lib.is_autocast_enabled())          # the legacy form asks about CUDA
        seen.append(((x @ x.T).dtype, lib.is_autocast_enabled("cpu")))
        seen.append(decorated(x))
        return [tuple(_name(v) if not isinstance(v, bool) else v for v in
                      (s if isinstance(s, tuple) else (s,))) for s in seen]

    assert trace(kiln) == trace(torch)


def test_the_state_is_per_thread_as_torch() -> None:
    import threading
    seen = {}

    def other(lib):
        x = lib.ones(2, 2)
        seen[lib.__name__] = (lib.is_autocast_enabled("cpu"), _name((x @ x).dtype))

    for lib in (torch, kiln):
        with lib.autocast("cpu", dtype=lib.float16):
            thread = threading.Thread(target=other, args=(lib,))
            thread.start()
            thread.join()
            assert (lib.ones(2, 2) @ lib.ones(2, 2)).dtype is lib.float16
    assert seen["kiln"] == seen["torch"] == (False, "float32")


def test_set_autocast_enabled_and_dtype_as_torch() -> None:
    for lib in (torch, kiln):
        assert not lib.is_autocast_enabled("cpu")
        lib.set_autocast_enabled("cpu", True)
        lib.set_autocast_dtype("cpu", lib.float16)
        try:
            x = lib.ones(2, 2)
            assert lib.is_autocast_enabled("cpu") and (x @ x).dtype is lib.float16
            assert lib.get_autocast_dtype("cpu") is lib.float16
        finally:
            lib.set_autocast_enabled("cpu", False)
            # back to the default (kiln takes the name where it has no bfloat16)
            lib.set_autocast_dtype("cpu", getattr(lib, "bfloat16", "bfloat16"))
        assert (lib.ones(2, 2) @ lib.ones(2, 2)).dtype is lib.float32
    assert kiln.get_autocast_dtype("cuda") is kiln.float16


def test_unsupported_dtypes_and_device_types_as_torch() -> None:
    for lib in (torch, kiln):
        with pytest.warns(UserWarning, match="CPU Autocast only supports"):
            region = lib.autocast("cpu", dtype=lib.float32)
        with region:
            assert not lib.is_autocast_enabled("cpu")
        with pytest.raises(ValueError, match="device_type"):
            lib.autocast(3)
        with pytest.raises(RuntimeError):
            lib.autocast("tpu")
        with pytest.raises(TypeError, match="requires a callable"):
            lib.autocast("cpu", dtype=lib.float16)(3)


def test_missing_default_dtype_names_it_and_the_way_out() -> None:
    if hasattr(kiln, "bfloat16"):
        pytest.skip("this kiln has bfloat16")
    with pytest.raises(RuntimeError, match=r"bfloat16.*dtype=torch.float16"):
        kiln.autocast("cpu")
    with kiln.autocast("cpu", enabled=False):      # disabled: nothing to look up
        pass


def test_older_namespaces_warn_and_work_as_torch() -> None:
    for lib in (torch, kiln):
        with pytest.warns(FutureWarning, match="torch.cpu.amp.autocast"):
            region = lib.cpu.amp.autocast(dtype=lib.float16)
        with region:
            assert lib.is_autocast_enabled("cpu")
            assert (lib.ones(2, 2) @ lib.ones(2, 2)).dtype is lib.float16
        with pytest.warns(FutureWarning, match="torch.cpu.amp.GradScaler"):
            assert lib.cpu.amp.GradScaler().get_scale() == 2.0 ** 16
        assert lib.amp.autocast is lib.autocast
    if not kiln.cuda.is_available():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with kiln.cuda.amp.autocast():
                assert not kiln.is_autocast_enabled("cuda")
        assert {w.category for w in caught} == {FutureWarning, UserWarning}


@pytest.mark.parametrize("low", LOW_DTYPES)
def test_custom_fwd_casts_inputs_and_custom_bwd_replays_the_state(low) -> None:
    seen = {}

    def make(lib):
        class Square(lib.autograd.Function):
            @staticmethod
            @lib.amp.custom_fwd(device_type="cpu", cast_inputs=lib.float32)
            def forward(ctx, x):
                ctx.save_for_backward(x)
                seen[lib.__name__, "fwd"] = (_name(x.dtype), lib.is_autocast_enabled("cpu"))
                return x * x

            @staticmethod
            @lib.amp.custom_bwd(device_type="cpu")
            def backward(ctx, g):
                (x,) = ctx.saved_tensors
                seen[lib.__name__, "bwd"] = lib.is_autocast_enabled("cpu")
                return 2 * x * g
        return Square

    grads = {}
    for lib in (torch, kiln):
        x = lib.tensor(A[0]).to(getattr(lib, low)).requires_grad_(True)
        with lib.autocast("cpu", dtype=getattr(lib, low)):
            y = make(lib).apply(x)
        y.sum().backward()
        grads[lib.__name__] = (_name(y.dtype), _name(x.grad.dtype), x.grad.float().numpy())
    for part in ("fwd", "bwd"):
        assert seen["kiln", part] == seen["torch", part]
    assert grads["kiln"][:2] == grads["torch"][:2]
    np.testing.assert_allclose(grads["kiln"][2], grads["torch"][2], *TOL[low])


# ----------------------------------------------------------------------------- training

def _models(lib):
    """A small CNN with an MLP head (conv, pool, linear, GELU, LayerNorm), torch's weights."""
    torch.manual_seed(0)
    ref = (torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                               torch.nn.Linear(64, 16), torch.nn.GELU(),
                               torch.nn.LayerNorm(16), torch.nn.Linear(16, 5)))
    if lib is torch:
        return ref
    nn = kiln.nn
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(64, 16), nn.GELU(), nn.LayerNorm(16),
                          nn.Linear(16, 5))
    model.load_state_dict({k: kiln.tensor(v.detach().numpy())
                           for k, v in ref.state_dict().items()})
    return model


@pytest.mark.parametrize("low", LOW_DTYPES)
def test_training_steps_with_grad_scaler_match_torch(low) -> None:
    rng = _rng()
    batches = [(rng.uniform(-1, 1, (6, 3, 8, 8)).astype(np.float32),
                rng.integers(0, 5, 6)) for _ in range(3)]
    out = {}
    for lib in (torch, kiln):
        model = _models(lib)
        opt = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        scaler = lib.amp.GradScaler("cpu", init_scale=2.0 ** 10)
        losses, grads = [], []
        for x, y in batches:
            with lib.autocast("cpu", dtype=getattr(lib, low)):
                logits = model(lib.tensor(x))
                loss = lib.nn.functional.cross_entropy(logits, lib.tensor(y))
            losses.append((_name(logits.dtype), _name(loss.dtype), float(loss.detach())))
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            grads.append([(_name(p.grad.dtype), p.grad.numpy().copy())
                          for p in model.parameters()])
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
        out[lib.__name__] = losses, grads, [p.detach().numpy().copy()
                                            for p in model.parameters()]
    (kl, kg, kw), (tl, tg, tw) = out["kiln"], out["torch"]
    rtol, atol = TOL[low]
    for (kd, kld, kv), (td, tld, tv) in zip(kl, tl):
        assert (kd, kld) == (td, tld) == (low, "float32")
        assert abs(kv - tv) <= atol + rtol * abs(tv)
    for step_k, step_t in zip(kg, tg):
        for (kd, kv), (td, tv) in zip(step_k, step_t):
            assert kd == td == "float32"
            np.testing.assert_allclose(kv, tv, rtol=rtol, atol=atol)
    for kv, tv in zip(kw, tw):
        np.testing.assert_allclose(kv, tv, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- compile

@pytest.mark.parametrize("low", LOW_DTYPES)
def test_compiled_function_follows_the_autocast_state_of_each_call(low) -> None:
    kd = getattr(kiln, low)
    model = _models(kiln)
    y = kiln.tensor(np.array([0, 1, 2, 3]))

    def step(x):
        logits = model(x)
        return logits, kiln.nn.functional.cross_entropy(logits, y)

    compiled = kiln.compile(step)
    x = kiln.tensor(_rng().uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32))
    for autocasting in (False, True, False, True):
        with kiln.autocast("cpu", dtype=kd, enabled=autocasting):
            eager = step(x)
            runs = [compiled(x), compiled(x)]       # the trace's run (or a replay), a replay
        # a fused kernel keeps its intermediates in float32 where eager rounds each op's result
        # to the low dtype: one low-dtype rounding apart, and float32's otherwise
        rtol, atol = TOL[low] if autocasting else (1e-5, 1e-6)
        for got in runs:
            for e, g in zip(eager, got):
                assert g.dtype is e.dtype
                np.testing.assert_allclose(g.detach().float().numpy(),
                                           e.detach().float().numpy(), rtol=rtol, atol=atol)
        assert got[0].dtype is (kd if autocasting else kiln.float32)
    assert len(compiled.entries) == 2        # one per autocast state, each replayed
    from kiln import dump
    guards = dict(dump.compiled_notes(compiled))["guards"]
    assert "autocast off" in guards and f"autocast cpu {low}" in guards


@pytest.mark.parametrize("low", LOW_DTYPES)
def test_compiled_training_step_under_autocast_matches_eager(low) -> None:
    kd = getattr(kiln, low)
    grads = {}
    for mode in ("eager", "compiled"):
        model = _models(kiln)
        y = kiln.tensor(np.array([0, 1, 2, 3]))

        def step(x):
            with kiln.autocast("cpu", dtype=kd):
                loss = kiln.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss
        run = kiln.compile(step) if mode == "compiled" else step
        x = kiln.tensor(_rng().uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32))
        losses = [float(run(x)) for _ in range(2)]
        grads[mode] = losses, [p.grad.numpy().copy() for p in model.parameters()]
    assert grads["compiled"][0] == pytest.approx(grads["eager"][0], rel=1e-6)
    for e, c in zip(grads["eager"][1], grads["compiled"][1]):
        np.testing.assert_allclose(c, e, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- CUDA policy

CUDA_DTYPES = {   # op -> the result dtype for float32 ("f") and autocast-dtype ("h") inputs
    "mm": (lambda F, f, h: kiln.mm(f, f.T), "low"),
    "linear": (lambda F, f, h: F.linear(f, f), "low"),
    "mv": (lambda F, f, h: kiln.mv(f, f[0]), "low"),
    "exp": (lambda F, f, h: kiln.exp(h), "float32"),
    "pow": (lambda F, f, h: h ** 2, "float32"),
    "softmax": (lambda F, f, h: F.softmax(h, -1), "float32"),
    "softmax given dtype": (lambda F, f, h: kiln.softmax(h, -1, dtype=kiln.float16), "float16"),
    "sum": (lambda F, f, h: h.sum(), "float32"),
    "cumsum": (lambda F, f, h: kiln.cumsum(h, 0), "float32"),
    "layer_norm": (lambda F, f, h: F.layer_norm(h, (4,)), "float32"),
    "mse_loss": (lambda F, f, h: F.mse_loss(h, h), "float32"),
    "cross_entropy": (lambda F, f, h: F.cross_entropy(h, kiln.zeros(4, dtype=kiln.int64,
                                                                    device="cuda")), "float32"),
    "addcmul": (lambda F, f, h: kiln.addcmul(h, h, f), "float32"),
    "addcmul low": (lambda F, f, h: kiln.addcmul(h, h, h), "low"),
    "gelu keeps": (lambda F, f, h: F.gelu(h), "low"),
    "mean keeps": (lambda F, f, h: h.mean(), "low"),
    "float64 untouched": (lambda F, f, h: kiln.exp(f.double()), "float64"),
    "integer sum untouched": (lambda F, f, h: (f > 0).long().sum(), "int64"),
    "interpolate": (lambda F, f, h: F.interpolate(h[None], scale_factor=2), "float32"),
    "linalg.vector_norm": (lambda F, f, h: kiln.linalg.vector_norm(h), "float32"),
    "scatter_add": (lambda F, f, h: h.scatter_add(0, kiln.zeros(1, 4, dtype=kiln.int64,
                                                                device="cuda"), f[:1]),
                    "float32"),
    "einsum": (lambda F, f, h: kiln.einsum("ij,kj->ik", f, f), "low"),
}


@pytest.mark.gpu
@pytest.mark.parametrize("low", CUDA_LOW_DTYPES)
@pytest.mark.parametrize("case", sorted(CUDA_DTYPES))
def test_cuda_policies_give_torchs_dtypes(case, low) -> None:
    fn, expected = CUDA_DTYPES[case]
    kd = getattr(kiln, low)
    f = kiln.tensor(A[:, :4], device="cuda")
    with kiln.autocast("cuda", dtype=kd):
        out = fn(kiln.nn.functional, f, f.to(kd))
    kiln.cuda.synchronize()      # reads the index checks queued on the device: none left over
    assert out.device.type == "cuda"
    assert out.dtype.name == (low if expected == "low" else expected)
    if expected == "low" and case == "mm":
        np.testing.assert_allclose(out.float().cpu().numpy(), A[:, :4] @ A[:, :4].T,
                                   *TOL[low])


@pytest.mark.gpu
def test_cuda_autocast_in_bfloat16_is_refused_as_on_a_gpu_without_it() -> None:
    with pytest.raises(RuntimeError, match="does not support bfloat16"):
        kiln.autocast("cuda", dtype=getattr(kiln, "bfloat16", "bfloat16"))
    with kiln.autocast("cuda", dtype=getattr(kiln, "bfloat16", "bfloat16"), enabled=False):
        assert not kiln.is_autocast_enabled("cuda")


@pytest.mark.gpu
def test_cuda_autocast_leaves_cpu_tensors_and_bans_bce() -> None:
    x = kiln.tensor(A)
    with kiln.autocast("cuda"):
        assert kiln.is_autocast_enabled() and not kiln.is_autocast_enabled("cpu")
        assert (x @ x.T).dtype is kiln.float32
        p = kiln.tensor(POS, device="cuda")
        with pytest.raises(RuntimeError, match="unsafe to autocast"):
            kiln.nn.functional.binary_cross_entropy(p * 0.5, p)
