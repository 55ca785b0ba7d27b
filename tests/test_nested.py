"""kiln.nested's jagged nested tensors against torch.nested's on CPU.

Each test builds the same NJT in kiln and in torch from one set of NumPy arrays, runs the same
user code on both (PyTorch tutorial style) and compares shapes (the ragged size prints as jN in
both; its number is a per-process counter, so it is compared as "j"), offsets, values and
gradients (float32, 1e-5).
"""

from __future__ import annotations

import logging
import re
import warnings

import numpy as np
import pytest
import torch

import kiln

logging.getLogger("torch.nested").setLevel(logging.ERROR)   # torch's SDPA backend chatter
TOL = dict(rtol=1e-5, atol=1e-5)
LENGTHS = (2, 5, 3)


def _arrays(lengths=LENGTHS, rest=(8,), seed=0) -> list:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, *rest)).astype(np.float32) for n in lengths]


def _both(lengths=LENGTHS, rest=(8,), seed=0, **kw):
    arrays = _arrays(lengths, rest, seed)
    k = kiln.nested.nested_tensor([kiln.tensor(a) for a in arrays], layout=kiln.jagged, **kw)
    t = torch.nested.nested_tensor([torch.tensor(a) for a in arrays], layout=torch.jagged, **kw)
    return k, t


def _shape(s) -> str:
    return re.sub(r"j\d+", "j", str(tuple(s)))


def _np(x) -> np.ndarray:
    return x.detach().numpy()


def _check(k, t, **tol):
    """Same type of result, shape, offsets and values (NJTs compared through their values)."""
    if isinstance(t, (tuple, list)):
        assert len(k) == len(t)
        for a, b in zip(k, t):
            _check(a, b, **tol)
        return
    assert k.is_nested == t.is_nested
    assert _shape(k.shape) == _shape(t.shape)
    assert str(k.dtype).split(".")[-1] == str(t.dtype).split(".")[-1]
    if t.is_nested:
        np.testing.assert_array_equal(_np(k.offsets()), _np(t.offsets()))
        k, t = k.values(), t.values()
    np.testing.assert_allclose(_np(k), _np(t), **(tol or TOL))


# ----------------------------------------------------------------------------- construction

@pytest.mark.parametrize("rest", [(), (8,), (3, 4)])
def test_construction_shape_and_metadata(rest):
    k, t = _both(rest=rest)
    _check(k, t)
    assert k.dim() == t.dim() and k.ndim == t.ndim and len(k) == len(t)
    assert k.size(0) == t.size(0) and str(k.size(1)).startswith("j")
    assert [k.size(d) for d in range(2, k.dim())] == [t.size(d) for d in range(2, t.dim())]
    assert k.layout is kiln.jagged and t.layout is torch.jagged
    assert k.lengths() is None and t.lengths() is None
    assert k.is_contiguous() == t.is_contiguous()
    assert not k.requires_grad and k.is_leaf


def test_repr_matches_torch():
    for kw in ({}, {"requires_grad": True}):
        k, t = _both(**kw)
        assert re.sub(r"j\d+", "j", repr(k)) == re.sub(r"j\d+", "j", repr(t))
    k, t = _both()
    kt, tt = k.unflatten(-1, [2, 4]).transpose(1, 2), t.unflatten(-1, [2, 4]).transpose(1, 2)
    assert re.sub(r"j\d+", "j", repr(kt)) == re.sub(r"j\d+", "j", repr(tt))
    assert str(k) == repr(k)


def test_dtype_argument_and_copy():
    k64 = kiln.nested.nested_tensor([kiln.ones(2, 3), kiln.ones(1, 3)], layout=kiln.jagged,
                                    dtype=kiln.float64)
    t64 = torch.nested.nested_tensor([torch.ones(2, 3), torch.ones(1, 3)], layout=torch.jagged,
                                     dtype=torch.float64)
    _check(k64, t64)
    source = kiln.zeros(2, 3)
    nt = kiln.nested.nested_tensor([source, kiln.zeros(1, 3)], layout=kiln.jagged)
    source.add_(1)
    assert float(nt.values().sum()) == 0.0        # nested_tensor copies


def test_nested_ints_name_one_offsets():
    k, _ = _both()
    other, _ = _both()
    assert k.size(1) is (k * 2).size(1)
    assert k.size(1) != other.size(1) and str(k.size(1)) != str(other.size(1))


def test_unbind_and_to_padded_tensor():
    k, t = _both()
    _check(k.unbind(), t.unbind())
    _check(kiln.unbind(k), torch.unbind(t))
    for pad in (0.0, -1.5):
        _check(k.to_padded_tensor(pad), t.to_padded_tensor(pad))
    _check(kiln.nested.to_padded_tensor(k, 2.0), torch.nested.to_padded_tensor(t, 2.0))
    for size in ((3, 7, 9), (3, 4, 8), (3, 2, 8)):        # only the ragged entry counts
        _check(k.to_padded_tensor(0.0, output_size=size),
               t.to_padded_tensor(0.0, output_size=size))
    kt, tt = k.unflatten(-1, [2, 4]).transpose(1, 2), t.unflatten(-1, [2, 4]).transpose(1, 2)
    _check(kt.to_padded_tensor(0.0), tt.to_padded_tensor(0.0))
    _check(kt.to_padded_tensor(1.0, (3, 2, 6, 4)), tt.to_padded_tensor(1.0, (3, 2, 6, 4)))
    _check(kt.unbind(), tt.unbind())


def test_indexing_iteration_numel_unsqueeze():
    k, t = _both(rest=(2, 4))
    _check(k[1], t[1])
    _check(k[-1], t[-1])
    _check(list(k), list(t))
    _check(k[..., :3], t[..., :3])
    _check(k[..., 1, 1:], t[..., 1, 1:])
    assert k.numel() == t.numel()
    for dim in (-1, 2, 3, 1):
        _check(k.unsqueeze(dim), t.unsqueeze(dim))
    with pytest.raises(NotImplementedError, match="indexing a nested tensor"):
        k[:, 0]


def test_from_jagged_shares_offsets_and_gradients():
    values = np.random.default_rng(1).standard_normal((7, 4)).astype(np.float32)
    kv, tv = kiln.tensor(values, requires_grad=True), torch.tensor(values, requires_grad=True)
    ko, to = kiln.tensor([0, 3, 7]), torch.tensor([0, 3, 7])
    k = kiln.nested.nested_tensor_from_jagged(kv, ko)
    t = torch.nested.nested_tensor_from_jagged(tv, to)
    _check(k, t)
    k2 = kiln.nested.nested_tensor_from_jagged(k.values() * 2, k.offsets())
    t2 = torch.nested.nested_tensor_from_jagged(t.values() * 2, t.offsets())
    _check(k + k2, t + t2)
    (k + k2).exp().sum().backward()
    (t + t2).exp().sum().backward()
    np.testing.assert_allclose(_np(kv.grad), _np(tv.grad), **TOL)
    kl = kiln.nested.nested_tensor_from_jagged(kv, lengths=kiln.tensor([3, 4]))
    tl = torch.nested.nested_tensor_from_jagged(tv, offsets=torch.tensor([0, 3, 7]))
    _check(kl, tl)


def test_as_nested_tensor_of_a_dense_batch_and_jagged_dim():
    dense = np.random.default_rng(11).standard_normal((3, 4, 2)).astype(np.float32)
    k = kiln.nested.as_nested_tensor(kiln.tensor(dense), layout=kiln.jagged)
    t = torch.nested.as_nested_tensor(torch.tensor(dense), layout=torch.jagged)
    _check(k, t)
    assert kiln.nested.as_nested_tensor(k, layout=kiln.jagged) is k
    values = np.random.default_rng(12).standard_normal((2, 7, 4)).astype(np.float32)
    k = kiln.nested.nested_tensor_from_jagged(kiln.tensor(values), kiln.tensor([0, 3, 7]),
                                              jagged_dim=2)
    t = torch.nested.nested_tensor_from_jagged(torch.tensor(values), torch.tensor([0, 3, 7]),
                                               jagged_dim=2)
    _check(k, t)
    _check(k.unbind(), t.unbind())


# ----------------------------------------------------------------------------- ops

UNARY = [
    lambda lib, x: lib.relu(x), lambda lib, x: lib.nn.functional.gelu(x),
    lambda lib, x: lib.nn.functional.silu(x), lambda lib, x: x.exp(), lambda lib, x: -x,
    lambda lib, x: x.tanh(), lambda lib, x: lib.sigmoid(x), lambda lib, x: abs(x),
    lambda lib, x: lib.nn.functional.gelu(x, approximate="tanh"),
    lambda lib, x: lib.nn.functional.leaky_relu(x, 0.2), lambda lib, x: x.clone(),
    lambda lib, x: x.detach(), lambda lib, x: x.to(lib.float64), lambda lib, x: x.double(),
    lambda lib, x: lib.nn.functional.dropout(x, 0.5, training=False),
]


@pytest.mark.parametrize("i", range(len(UNARY)))
def test_unary(i):
    k, t = _both()
    _check(UNARY[i](kiln, k), UNARY[i](torch, t))


BINARY = [
    lambda lib, x, y: x + 1, lambda lib, x, y: 2 - x, lambda lib, x, y: x * 3.5,
    lambda lib, x, y: 1 / (x.abs() + 1), lambda lib, x, y: x ** 2, lambda lib, x, y: x + y,
    lambda lib, x, y: x * y - y, lambda lib, x, y: lib.maximum(x, y), lambda lib, x, y: x > y,
    lambda lib, x, y: lib.where(x > 0, x, y), lambda lib, x, y: x / (y.abs() + 1),
]


@pytest.mark.parametrize("i", range(len(BINARY)))
def test_binary_with_numbers_and_nested(i):
    k, t = _both()
    ky = kiln.nested.nested_tensor_from_jagged(k.values().cos(), k.offsets())
    ty = torch.nested.nested_tensor_from_jagged(t.values().cos(), t.offsets())
    _check(BINARY[i](kiln, k, ky), BINARY[i](torch, t, ty))


@pytest.mark.parametrize("dense_shape", [(8,), (1, 8), (3, 1, 8), (1, 1, 8), (), (3, 5, 8)])
def test_binary_with_dense_broadcasts(dense_shape):
    k, t = _both()
    d = np.random.default_rng(2).standard_normal(dense_shape).astype(np.float32)
    _check(k + kiln.tensor(d), t + torch.tensor(d))
    _check(kiln.tensor(d) * k, torch.tensor(d) * t)


def test_dense_broadcast_after_transpose():
    k, t = _both()
    kt, tt = k.unflatten(-1, [2, 4]).transpose(1, 2), t.unflatten(-1, [2, 4]).transpose(1, 2)
    d = np.random.default_rng(3).standard_normal((3, 2, 1, 4)).astype(np.float32)
    _check(kt - kiln.tensor(d), tt - torch.tensor(d))


def test_linear_chunk_split_cat():
    k, t = _both()
    torch.manual_seed(0)
    tlin = torch.nn.Linear(8, 12)
    klin = kiln.nn.Linear(8, 12)
    klin.load_state_dict({n: kiln.tensor(p.detach().numpy()) for n, p in
                          tlin.state_dict().items()})
    ky, ty = klin(k), tlin(t)
    _check(ky, ty)
    _check(kiln.chunk(ky, 3, dim=-1), torch.chunk(ty, 3, dim=-1))
    _check(ky.split(5, -1), ty.split(5, -1))
    _check(kiln.cat([ky, k], dim=-1), torch.cat([ty, t], dim=-1))


def test_matmul_with_a_dense_matrix():
    k, t = _both()
    w = np.random.default_rng(8).standard_normal((8, 3)).astype(np.float32)
    _check(k @ kiln.tensor(w), t @ torch.tensor(w))
    with pytest.raises(RuntimeError):
        torch.matmul(t, torch.tensor(w[:, 0]))
    with pytest.raises(RuntimeError, match=r"kiln.nested: matmul\(\).*expected a matrix"):
        kiln.matmul(k, kiln.tensor(w[:, 0]))


def test_reshape_and_view_of_the_trailing_dims():
    k, t = _both()
    _check(k.reshape(3, -1, 2, 4), t.reshape(3, -1, 2, 4))
    _check(k.view(k.size(0), k.size(1), 4, 2), t.view(t.size(0), t.size(1), 4, 2))
    _check(k.view(-1, -1, 2, 2, 2).reshape(3, -1, 8), t.view(-1, -1, 2, 2, 2).reshape(3, -1, 8))
    for call in (lambda x: x.view(3, -1), lambda x: x.reshape(-1, 8)):
        with pytest.raises(RuntimeError):
            call(t)
        with pytest.raises(RuntimeError, match=r"kiln.nested: (view|reshape)\(\)"):
            call(k)


def test_unflatten_transpose_flatten():
    def moves(x):
        y = x.unflatten(-1, [3, 4])
        z = y.transpose(1, 2)
        return [y, z, z.transpose(1, 2), z.transpose(1, 2).flatten(-2), z.transpose(-1, -2),
                y.flatten(2, 3)]

    k, t = _both(rest=(12,))
    _check(moves(k), moves(t))


@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("shape", [(4,), (3, 4)])
def test_norms_over_the_last_dims(norm, shape):
    k, t = _both(rest=(3, 4))
    rng = np.random.default_rng(4)
    w, b = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    if norm == "layer_norm":
        _check(kiln.nn.functional.layer_norm(k, shape, kiln.tensor(w), kiln.tensor(b)),
               torch.nn.functional.layer_norm(t, shape, torch.tensor(w), torch.tensor(b)))
    else:
        _check(kiln.nn.functional.rms_norm(k, shape, kiln.tensor(w), eps=1e-6),
               torch.nn.functional.rms_norm(t, shape, torch.tensor(w), eps=1e-6))
    _check(kiln.nn.LayerNorm(4)(k), torch.nn.LayerNorm(4)(t))


@pytest.mark.parametrize("dim", [-1, 1, 2])
def test_softmax(dim):
    k, t = _both(rest=(2, 3))
    _check(kiln.softmax(k, dim=dim), torch.softmax(t, dim=dim))
    _check(k.softmax(dim, kiln.float64), t.softmax(dim, torch.float64))
    if dim != 1:                    # torch has no log_softmax over the ragged dim; kiln does
        _check(k.log_softmax(dim), t.log_softmax(dim))


@pytest.mark.parametrize("call", [
    lambda x: x.sum(-1), lambda x: x.mean(-1), lambda x: x.sum(-1, keepdim=True),
    lambda x: x.sum(1), lambda x: x.mean(1), lambda x: x.sum((0, 1)), lambda x: x.sum(),
    lambda x: x.mean(), lambda x: x.amax(-1), lambda x: x.sum((2, 3)),
    lambda x: x.mean((0, 1)), lambda x: x.sum(1, keepdim=True), lambda x: x.sum(2, True),
    lambda x: x.sum(-1, dtype=x.dtype),
])
def test_reductions(call):
    k, t = _both(rest=(2, 3))
    _check(call(k), call(t))


def test_reductions_after_transpose_move_the_ragged_dim():
    k, t = _both(rest=(2, 3))
    kt, tt = k.transpose(1, 2), t.transpose(1, 2)
    _check(kt.sum(1), tt.sum(1))
    _check(kt.sum(-1), tt.sum(-1))


def test_dropout_keeps_offsets_and_scales():
    k, _ = _both()
    kiln.manual_seed(0)
    out = kiln.nn.functional.dropout(k, 0.5)
    assert out.offsets() is k.offsets()
    got, src = _np(out.values()), _np(k.values())
    kept = got != 0
    np.testing.assert_allclose(got[kept], 2 * src[kept], **TOL)
    assert 0 < kept.mean() < 1


def _heads(lib, x, h):
    return x.unflatten(-1, [h, x.size(-1) // h]).transpose(1, 2)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")   # torch's internals
def test_sdpa_matches_torchs_nested_sdpa():
    k, t = _both(rest=(8,))
    ko, to = k.cos() * 0.5, t.cos() * 0.5
    kq, kk = _heads(kiln, k, 2), _heads(kiln, ko, 2)
    tq, tk = _heads(torch, t, 2), _heads(torch, to, 2)
    _check(kiln.nn.functional.scaled_dot_product_attention(kq, kk, kk),
           torch.nn.functional.scaled_dot_product_attention(tq, tk, tk))
    _check(kiln.nn.functional.scaled_dot_product_attention(kq, kk, kq, scale=0.3),
           torch.nn.functional.scaled_dot_product_attention(tq, tk, tq, scale=0.3))


def test_causal_sdpa_is_per_sequence_causal_attention():
    """torch's NJT SDPA has no CPU kernel for is_causal=True; each sequence is compared with
    torch's dense causal SDPA on that sequence."""
    k, t = _both(rest=(8,))
    out = kiln.nn.functional.scaled_dot_product_attention(
        _heads(kiln, k, 2), _heads(kiln, k.sin(), 2), _heads(kiln, k, 2), is_causal=True)
    assert _shape(out.shape) == "(3, 2, j, 4)"
    for piece, seq in zip(out.unbind(), t.unbind()):
        q = seq.unflatten(-1, [2, 4]).transpose(0, 1)
        ref = torch.nn.functional.scaled_dot_product_attention(
            q, seq.sin().unflatten(-1, [2, 4]).transpose(0, 1), q, is_causal=True)
        np.testing.assert_allclose(_np(piece), _np(ref), **TOL)


# ----------------------------------------------------------------------------- the tutorial

def _mha(lib, seed=0):
    """The packed-projection multi-head attention of PyTorch's transformer building blocks
    tutorial, written in `lib`; both libraries get the same weights."""
    nn, F = lib.nn, lib.nn.functional

    class MultiHeadAttention(nn.Module):
        def __init__(self, e_total, nheads, dropout=0.0):
            super().__init__()
            self.nheads, self.dropout = nheads, dropout
            self.packed_proj = nn.Linear(e_total, 3 * e_total)
            self.out_proj = nn.Linear(e_total, e_total)
            self.e_head = e_total // nheads

        def forward(self, x, is_causal=False):
            result = self.packed_proj(x)
            query, key, value = lib.chunk(result, 3, dim=-1)
            query = query.unflatten(-1, [self.nheads, self.e_head]).transpose(1, 2)
            key = key.unflatten(-1, [self.nheads, self.e_head]).transpose(1, 2)
            value = value.unflatten(-1, [self.nheads, self.e_head]).transpose(1, 2)
            attn = F.scaled_dot_product_attention(query, key, value, dropout_p=self.dropout,
                                                  is_causal=is_causal)
            return self.out_proj(attn.transpose(1, 2).flatten(-2))

    model = MultiHeadAttention(8, 2)
    rng = np.random.default_rng(seed)
    with lib.no_grad():
        for p in model.parameters():
            p.copy_(lib.tensor(rng.standard_normal(tuple(p.shape)).astype(np.float32) * 0.3))
    return model


@pytest.mark.parametrize("is_causal", [False, True])
def test_tutorial_mha_with_nested_input_and_its_gradients(is_causal):
    """torch's NJT SDPA has no CPU kernel for the tutorial's chunked (non-contiguous) q, k, v,
    so the reference is torch's same module run on each sequence as a batch of one: what the
    NJT computes, without padding. Gradients reach the inputs of as_nested_tensor and the
    Linear weights."""
    arrays = _arrays(seed=5)
    kxs = [kiln.tensor(a, requires_grad=True) for a in arrays]
    kmodel = _mha(kiln)
    kout = kmodel(kiln.nested.as_nested_tensor(kxs, layout=kiln.jagged), is_causal=is_causal)
    ((kout * kout).sum() + kout.sin().sum()).backward()
    txs = [torch.tensor(a, requires_grad=True) for a in arrays]
    tmodel = _mha(torch)
    touts = [tmodel(x[None], is_causal=is_causal)[0] for x in txs]
    sum((o * o).sum() + o.sin().sum() for o in touts).backward()
    for piece, ref in zip(kout.unbind(), touts):
        np.testing.assert_allclose(_np(piece), _np(ref), rtol=1e-4, atol=1e-5)
    for a, b in zip([x.grad for x in kxs] + [p.grad for p in kmodel.parameters()],
                    [x.grad for x in txs] + [p.grad for p in tmodel.parameters()]):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-4, atol=1e-5)


def test_leaf_nested_tensor_gets_a_nested_grad():
    k, t = _both(requires_grad=True)
    (k.sin() * 2).sum().backward()
    (t.sin() * 2).sum().backward()
    assert k.grad.is_nested and k.grad.offsets() is k.offsets()
    _check(k.grad, t.grad)


def test_gradients_through_the_ops_to_the_inputs():
    arrays = _arrays(rest=(2, 4), seed=7)
    grads = {}
    for lib in (kiln, torch):
        F = lib.nn.functional
        xs = [lib.tensor(a, requires_grad=True) for a in arrays]
        x = lib.nested.as_nested_tensor(xs, layout=lib.jagged)
        y = (F.layer_norm(F.gelu(x), (4,)).softmax(-1) * lib.arange(4.0)).transpose(1, 2)
        y = y.exp() * lib.arange(1.0, 5.0) - y
        z = F.rms_norm(y.transpose(1, 2).flatten(-2), (8,))
        (z * z).sum().backward()     # (torch has no backward for sum(dim) of an NJT)
        grads[lib] = [x_.grad for x_ in xs]
    for a, b in zip(grads[kiln], grads[torch]):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-4, atol=1e-5)


def test_detached_requires_grad_leaf_as_in_the_tutorial():
    k, t = _both()
    kq = k.detach().requires_grad_()
    tq = t.detach().requires_grad_()
    assert kq.is_leaf and kq.requires_grad and kq.is_nested
    kx1, kx3 = kiln.chunk(kq, 2, dim=-1)
    tx1, tx3 = torch.chunk(tq, 2, dim=-1)
    ky, ty = kiln.nn.functional.silu(kx1) * kx3, torch.nn.functional.silu(tx1) * tx3
    _check(ky, ty)
    ky.sum().backward()
    ty.sum().backward()
    _check(kq.grad, tq.grad)


def test_optimizers_step_nested_parameters():
    """SGD is compared with torch's SGD on the NJT; torch's Adam has no NJT kernels
    (addcmul_), so Adam is compared with torch's Adam on the packed values."""
    arrays = _arrays(seed=9)
    for kopt, topt, nested_reference in ((kiln.optim.SGD, torch.optim.SGD, True),
                                         (kiln.optim.Adam, torch.optim.Adam, False)):
        extra = {"momentum": 0.9} if kopt is kiln.optim.SGD else {}
        k = kiln.nested.nested_tensor([kiln.tensor(a) for a in arrays], layout=kiln.jagged,
                                      requires_grad=True)
        if nested_reference:
            t = torch.nested.nested_tensor([torch.tensor(a) for a in arrays],
                                            layout=torch.jagged, requires_grad=True)
        else:
            t = torch.tensor(np.concatenate(arrays), requires_grad=True)
        for x, opt in ((k, kopt([k], lr=0.1, **extra)), (t, topt([t], lr=0.1, **extra))):
            for _ in range(3):
                opt.zero_grad()
                (x.sin() * x).sum().backward()
                opt.step()
        assert k.is_nested
        got = _np(k.values())
        np.testing.assert_allclose(got, _np(t.values() if nested_reference else t), **TOL)


def test_gradients_of_per_sequence_ops_match_torch_per_sequence():
    """torch's NJTs have no backward for sums over the ragged dim; the reference is torch on
    each sequence: softmax over the ragged dim, sum/mean over it, padding, unbind."""
    arrays = _arrays(rest=(3,), seed=10)
    kxs = [kiln.tensor(a, requires_grad=True) for a in arrays]
    k = kiln.nested.as_nested_tensor(kxs, layout=kiln.jagged)
    soft = kiln.softmax(k * 2, dim=1)
    loss = (soft.sum(1) * kiln.arange(1.0, 4.0)).sum() + (k.mean(1) ** 2).sum() + \
        (k.to_padded_tensor(0.5) ** 2).sum() + k.unbind()[1].exp().sum() + k.amax(-1).sum()
    loss.backward()
    txs = [torch.tensor(a, requires_grad=True) for a in arrays]
    tloss = 0
    longest = max(len(a) for a in arrays)
    for i, x in enumerate(txs):
        tloss = tloss + (torch.softmax(x * 2, 0).sum(0) * torch.arange(1.0, 4.0)).sum() + \
            (x.mean(0) ** 2).sum() + (x ** 2).sum() + 0.25 * 3 * (longest - len(x)) + \
            (x.exp().sum() if i == 1 else 0) + x.amax(-1).sum()
    tloss.backward()
    np.testing.assert_allclose(float(loss.detach()), float(tloss.detach()), rtol=1e-5)
    for a, b in zip(kxs, txs):
        np.testing.assert_allclose(_np(a.grad), _np(b.grad), **TOL)


def test_compile_runs_nested_calls_eagerly():
    k, t = _both()

    def f(x):
        return kiln.relu(x) * 2 + 1

    compiled = kiln.compile(f)
    with pytest.warns(UserWarning, match="__torch_function__ of NestedTensor"):
        out = compiled(k)
    _check(out, torch.relu(t) * 2 + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(_np(compiled(kiln.ones(3))), [3.0, 3.0, 3.0])


# ----------------------------------------------------------------------------- errors

def test_unsupported_ops_name_the_function():
    k, _ = _both()
    for call, name in ((lambda: k.cumsum(1), "cumsum"), (lambda: kiln.flip(k, [2]), "flip"),
                       (lambda: k.mT, "mT")):
        with pytest.raises(NotImplementedError, match=f"kiln.nested: {name} is not supported"):
            call()


def test_mismatched_offsets_name_the_op():
    k, t = _both()
    k2, t2 = _both()
    with pytest.raises(RuntimeError):
        t + t2
    with pytest.raises(RuntimeError, match=r"add\(\).*do not share their offsets"):
        k + k2
    with pytest.raises(RuntimeError, match=r"cat\(\)"):
        kiln.cat([k, k2], dim=-1)


@pytest.mark.parametrize("call", [
    lambda lib, x: x + lib.ones(3, 8), lambda lib, x: x + lib.ones(3, 4, 8),
    lambda lib, x: x.transpose(0, 1), lambda lib, x: x.chunk(2, 1),
    lambda lib, x: lib.cat([x, x], dim=0), lambda lib, x: x.sum(0),
    lambda lib, x: lib.nn.functional.softmax(x, 0), lambda lib, x: x.unbind(1),
])
def test_bad_dims_and_shapes_raise_as_torch(call):
    k, t = _both()
    with pytest.raises((RuntimeError, ValueError)):
        call(torch, t)
    with pytest.raises(RuntimeError, match="kiln.nested"):
        call(kiln, k)


def test_bad_components_are_refused():
    with pytest.raises(RuntimeError):
        torch.nested.nested_tensor([torch.ones(2, 3), torch.ones(1, 4, 2)], layout=torch.jagged)
    with pytest.raises(RuntimeError, match="cannot represent"):
        kiln.nested.nested_tensor([kiln.ones(2, 3), kiln.ones(1, 4, 2)], layout=kiln.jagged)
    with pytest.raises(NotImplementedError, match="non-contiguous"):
        kiln.nested.nested_tensor_from_jagged(kiln.ones(4, 2), kiln.tensor([0, 1, 4]),
                                              lengths=kiln.tensor([1, 2]))
