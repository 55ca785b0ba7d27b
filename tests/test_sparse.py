"""Sparse COO tensors against PyTorch: construction, coalescing, conversion, the products a graph
network uses (with gradients to the dense operand), elementwise rules, a GCN trained the way
pytorch/examples' gcn script trains one, and what compile does with them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import kiln
import kiln.nn as knn
import kiln.nn.functional as KF


def k2n(t):
    return np.asarray(t.detach().numpy()) if isinstance(t, kiln.Tensor) else \
        t.detach().numpy()


def both(indices, values, size=None, **kw):
    sized = () if size is None else (size,)
    return (kiln.sparse_coo_tensor(indices, values, *sized, **kw),
            torch.sparse_coo_tensor(indices, values, *sized, check_invariants=True, **kw))


def same_sparse(k, t):
    """Same layout, size, entries (after coalescing both) and dense form."""
    assert k.is_sparse and k.layout is kiln.sparse_coo
    assert tuple(k.shape) == tuple(t.shape) and k.dtype.name == str(t.dtype).split(".")[1]
    kc, tc = k.coalesce(), t.coalesce()
    np.testing.assert_array_equal(k2n(kc.indices()), tc.indices().numpy())
    np.testing.assert_allclose(k2n(kc.values()), tc.values().numpy(), rtol=1e-6)
    np.testing.assert_allclose(k2n(k.to_dense()), t.to_dense().numpy(), rtol=1e-6)


IDX = np.array([[0, 1, 1, 0, 2], [2, 0, 2, 2, 1]])


def test_construction_duplicates_and_coalesce_match_torch():
    k, t = both(IDX, [1.0, 2.0, 3.0, 4.0, 5.0], (3, 3))
    assert not k.is_coalesced() and k._nnz() == t._nnz() == 5
    assert (k.sparse_dim(), k.dense_dim()) == (t.sparse_dim(), t.dense_dim()) == (2, 0)
    same_sparse(k, t)
    assert k.coalesce().is_coalesced() and k.coalesce()._nnz() == 4   # (0, 2) twice: summed
    with pytest.raises(RuntimeError, match="coalesce"):
        k.indices()
    np.testing.assert_array_equal(k2n(k._indices()), t._indices().numpy())   # raw, as given
    # the size inferred from the indices; a dtype cast of the values (the gcn script's int64)
    same_sparse(*both(IDX.tolist(), [1.0] * 5))
    same_sparse(kiln.sparse_coo_tensor(IDX, kiln.ones(5), (3, 4), dtype=kiln.int64),
                torch.sparse_coo_tensor(IDX, torch.ones(5), (3, 4), dtype=torch.int64))
    # values with dense dims (a hybrid tensor)
    vals = np.arange(10, dtype=np.float32).reshape(5, 2)
    k, t = kiln.sparse_coo_tensor(IDX, kiln.tensor(vals), (3, 3, 2)), \
        torch.sparse_coo_tensor(IDX, torch.tensor(vals), (3, 3, 2))
    same_sparse(k, t)


def test_empty_and_repr():
    k, t = both(np.zeros((2, 0), dtype=np.int64), np.zeros(0, dtype=np.float32), (2, 2))
    same_sparse(k, t)
    text = repr(kiln.sparse_coo_tensor(IDX, [1.0] * 5, (3, 3)))
    assert text.startswith("tensor(indices=tensor([[0, 1, 1, 0, 2],") and \
        "size=(3, 3), nnz=5, layout=kiln.sparse_coo)" in text


def test_bad_indices_and_gradients_get_clear_errors():
    with pytest.raises(RuntimeError, match="for dim 1, size is 2 but found index 2"):
        kiln.sparse_coo_tensor(IDX, [1.0] * 5, (3, 2))
    with pytest.raises(RuntimeError, match="negative index"):
        kiln.sparse_coo_tensor([[0, -1]], [1.0, 2.0], (3,))
    with pytest.raises(RuntimeError, match="same number of elements"):
        kiln.sparse_coo_tensor(IDX, [1.0] * 4, (3, 3))
    s = kiln.eye(3).to_sparse()
    with pytest.raises(NotImplementedError, match=r"^exp: not supported on a sparse tensor.*"
                                                  r"to_dense\(\) first \(at .*test_sparse.py"):
        kiln.exp(s)
    with pytest.raises(NotImplementedError, match="indexing a sparse tensor"):
        s[0:1]
    with pytest.raises(TypeError, match="to_dense"):
        s.numpy()


@pytest.mark.parametrize("sparse_dim", [None, 1])
def test_to_sparse_matches_torch(sparse_dim):
    x = np.array([[0, 2, 0], [0, 0, 0], [3, 0, 4]], dtype=np.float32)
    args = () if sparse_dim is None else (sparse_dim,)
    k, t = kiln.tensor(x).to_sparse(*args), torch.tensor(x).to_sparse(*args)
    assert k.is_coalesced() and t.is_coalesced()
    np.testing.assert_array_equal(k2n(k.indices()), t.indices().numpy())
    np.testing.assert_array_equal(k2n(k.values()), t.values().numpy())
    np.testing.assert_array_equal(k2n(k.to_dense()), x)
    assert not kiln.tensor(x).is_sparse and kiln.tensor(x).layout is kiln.strided


def _operands(seed=0):
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.integers(0, 5, 12), rng.integers(0, 4, 12)])     # duplicates likely
    vals = rng.standard_normal(12).astype(np.float32)
    dense = rng.standard_normal((4, 3)).astype(np.float32)
    left = rng.standard_normal((2, 5)).astype(np.float32)
    return idx, vals, dense, left


@pytest.mark.parametrize("spelling", ["spmm", "mm", "matmul", "at", "sparse.mm", "method"])
def test_sparse_times_dense_and_its_gradient_match_torch(spelling):
    idx, vals, dense, _ = _operands()

    def run(lib):
        s = lib.sparse_coo_tensor(idx, lib.tensor(vals), (5, 4))
        d = lib.tensor(dense, requires_grad=True)
        out = {"spmm": lambda: lib.spmm(s, d), "mm": lambda: lib.mm(s, d),
               "matmul": lambda: lib.matmul(s, d), "at": lambda: s @ d,
               "sparse.mm": lambda: lib.sparse.mm(s, d), "method": lambda: s.mm(d)}[spelling]()
        (out * lib.arange(15.0).reshape(5, 3)).sum().backward()
        return k2n(out), k2n(d.grad), out.is_sparse
    k, t = run(kiln), run(torch)
    assert k[2] is t[2] is False
    np.testing.assert_allclose(k[0], t[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(k[1], t[1], rtol=1e-5, atol=1e-6)


def test_dense_times_sparse_vector_and_sparse_times_sparse_match_torch():
    idx, vals, dense, left = _operands(1)

    def run(lib):
        s = lib.sparse_coo_tensor(idx, lib.tensor(vals), (5, 4))
        a = lib.tensor(left, requires_grad=True)
        out = a @ s                                       # dense @ sparse: dense
        out.pow(2).sum().backward()
        vec = s @ lib.tensor(dense[:, 0])                # sparse @ vector
        ss = s @ s.t().coalesce()                        # sparse @ sparse: sparse
        return k2n(out), k2n(a.grad), k2n(vec), ss
    k, t = run(kiln), run(torch)
    for a, b in zip(k[:3], t[:3]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert k[3].is_sparse and t[3].is_sparse
    np.testing.assert_allclose(k2n(k[3].to_dense()), t[3].to_dense().numpy(), rtol=1e-5,
                               atol=1e-5)


def test_elementwise_rules_match_torch():
    idx, vals, _, _ = _operands(2)
    ks, ts = both(idx, vals, (5, 4))
    dense = np.arange(20, dtype=np.float32).reshape(5, 4)
    kd, td = kiln.tensor(dense), torch.tensor(dense)
    np.testing.assert_allclose(k2n(kd + ks), (td + ts).numpy(), rtol=1e-6)      # dense result
    np.testing.assert_allclose(k2n(kiln.eye(5, 4) + ks), (torch.eye(5, 4) + ts).numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(k2n(kd - ks), (td - ts).numpy(), rtol=1e-6)
    same_sparse(ks + ks, ts + ts)
    same_sparse(ks - ks * 0.5, ts - ts * 0.5)
    same_sparse(ks * 2, ts * 2)
    same_sparse(3 * ks, 3 * ts)
    same_sparse(ks / 4, ts / 4)
    same_sparse(-ks, -ts)
    same_sparse(ks * kd, ts * td)                   # the pattern kept, entries scaled
    same_sparse(ks.t(), ts.t())
    same_sparse(ks.double(), ts.double())
    same_sparse(ks.to(kiln.float64), ts.to(torch.float64))
    np.testing.assert_allclose(k2n(ks.sum()), ts.sum().numpy(), rtol=1e-5)
    np.testing.assert_allclose(k2n(kiln.sparse.sum(ks)), torch.sparse.sum(ts).numpy(),
                               rtol=1e-5)
    for dim in (0, 1):
        same_sparse(kiln.sparse.sum(ks, dim), torch.sparse.sum(ts, dim))


# ----------------------------------------------------------------------------- a GCN, as
# pytorch/examples trains one on Cora: features row-normalized and made sparse, a renormalized
# sparse adjacency D^-1/2 (A + I) D^-1/2, two graph convolutions, NLL on a training mask, Adam

def _graph(lib, nodes=40, feats=12, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    feat = (rng.random((nodes, feats)) < 0.3).astype(np.float32)
    features = lib.FloatTensor(feat)
    scale = 1 / lib.sum(features, dim=1)
    scale[scale == float("inf")] = 0
    features = lib.diag(scale).to_sparse() @ features
    edges = rng.integers(0, nodes, (2, 90))
    adj = lib.sparse_coo_tensor(edges, lib.ones(90), (nodes, nodes), dtype=lib.int64)
    adj = lib.eye(nodes) + adj
    degree = lib.sqrt(1 / lib.sum(adj, dim=1))
    degree[degree == float("inf")] = 0
    degree = lib.diag(degree).to_sparse()
    adj = degree @ adj @ degree
    labels = lib.LongTensor(rng.integers(0, classes, nodes))
    return features.to_sparse(), adj.to_sparse(), labels


def _gcn_losses(lib, steps=8, compiled=False, device="cpu"):
    lib.manual_seed(0)
    features, adj, labels = (t.to(device) for t in _graph(lib))

    class GraphConv(lib.nn.Module):
        def __init__(self, fan_in, fan_out):
            super().__init__()
            self.kernel = lib.nn.Parameter(lib.empty(fan_in, fan_out))
            lib.nn.init.xavier_normal_(self.kernel)

        def forward(self, x, adj):
            return lib.spmm(adj, lib.mm(x, self.kernel))

    class GCN(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = GraphConv(12, 8), GraphConv(8, 3)

        def forward(self, x, adj):
            x = lib.nn.functional.relu(self.conv1(x, adj))
            return lib.nn.functional.log_softmax(self.conv2(x, adj), dim=1)

    init = np.random.default_rng(1)
    model = GCN()
    with lib.no_grad():          # the same starting weights in both libraries
        for p in model.parameters():
            p.copy_(lib.tensor(init.standard_normal(tuple(p.shape)).astype(np.float32) * 0.3))
    model.to(device)
    opt = lib.optim.Adam(model.parameters(), lr=0.05, weight_decay=5e-4)
    criterion = lib.nn.NLLLoss()
    train = lib.arange(0, 30, device=device)

    def step():
        model.train()
        opt.zero_grad()
        loss = criterion(model(features, adj)[train], labels[train])
        loss.backward()
        opt.step()
        return loss
    if compiled:
        step = lib.compile(step)
    return [step().item() for _ in range(steps)]


def test_gcn_trains_like_torch():
    k, t = _gcn_losses(kiln), _gcn_losses(torch)
    np.testing.assert_allclose(k, t, rtol=1e-4, atol=1e-5)
    assert k[-1] < k[0]


def test_compiled_gcn_step_equals_eager():
    # the sparse tensors are read from the enclosing scope: their indices and values enter the
    # compiled program as inputs (guarded by identity), so the step compiles
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled = _gcn_losses(kiln, compiled=True)
    np.testing.assert_allclose(compiled, _gcn_losses(kiln), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True])
def test_gcn_on_cuda_matches_the_cpu(compiled):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cuda = _gcn_losses(kiln, compiled=compiled, device="cuda")
    np.testing.assert_allclose(cuda, _gcn_losses(kiln), rtol=1e-4, atol=1e-5)


def test_a_sparse_argument_is_two_inputs_of_the_compiled_program():
    adj = kiln.tensor(np.eye(4, k=1, dtype=np.float32) + np.eye(4, dtype=np.float32)).to_sparse()
    x = kiln.randn(4, 3)
    f = kiln.compile(lambda a, x: kiln.spmm(a, x).relu().sum(), fullgraph=True)
    np.testing.assert_allclose(k2n(f(adj, x)), k2n(kiln.spmm(adj, x).relu().sum()), rtol=1e-6)
    other = adj * -2                     # same size and pattern, other values: a replay
    np.testing.assert_allclose(k2n(f(other, x)), k2n(kiln.spmm(other, x).relu().sum()),
                               rtol=1e-6)
    assert len(f.entries) == 1
    wider = kiln.sparse_coo_tensor([[0, 1, 2], [1, 1, 3]], [1.0, 2.0, 3.0], (4, 4))
    np.testing.assert_allclose(k2n(f(wider, x)), k2n(kiln.spmm(wider, x).relu().sum()),
                               rtol=1e-6)        # another nnz: traced again
    assert len(f.entries) == 2
    g = kiln.compile(lambda a: a * 3)           # a sparse result comes back sparse
    out = g(adj)
    assert out.is_sparse and tuple(out.shape) == (4, 4)
    np.testing.assert_allclose(k2n(out.to_dense()), k2n(adj.to_dense()) * 3)


def test_a_replaced_sparse_global_is_not_stale():
    global ADJ
    ADJ = kiln.eye(3).to_sparse()
    x = kiln.randn(3, 2)
    f = kiln.compile(lambda x: kiln.spmm(ADJ, x).sum(0))
    np.testing.assert_allclose(k2n(f(x)), k2n(x.sum(0)), rtol=1e-6)
    ADJ = ADJ * 3
    np.testing.assert_allclose(k2n(f(x)), k2n(x.sum(0) * 3), rtol=1e-6)


def test_export_refuses_a_sparse_argument_clearly():
    class SpMM(knn.Module):
        def forward(self, a, x):
            return kiln.spmm(a, x)
    with pytest.raises(TypeError, match="sparse tensor argument or result cannot be exported"):
        kiln.export.export(SpMM(), (kiln.eye(3).to_sparse(), kiln.ones(3, 2)))


def test_copies_pickles_and_a_clear_save_error():
    import copy
    import pickle
    s = kiln.sparse_coo_tensor([[0, 2, 0], [1, 1, 1]], [1.0, 2.0, 3.0], (3, 3))
    for twin in (copy.deepcopy(s), copy.copy(s), pickle.loads(pickle.dumps(s))):
        assert twin.is_sparse and not twin.is_coalesced()
        np.testing.assert_array_equal(k2n(twin.to_dense()), k2n(s.to_dense()))
    deep = copy.deepcopy(s)
    assert deep._values() is not s._values()
    assert s in [s] and hash(s) == hash(s)          # identity, as for any tensor
    with pytest.raises(NotImplementedError, match="comparing sparse tensors"):
        s == s
