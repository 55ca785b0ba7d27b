"""Sparse embedding gradients (`sparse=True`), SparseAdam and the optimizers that take sparse
gradients, against PyTorch: the gradient's indices, values, size and coalescedness, its
accumulation over backward passes, zero_grad, and several optimizer steps of small models."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import kiln

IDS = [[1, 2, 1], [4, 2, 0]]


def _same_sparse(got, want) -> None:
    """kiln's sparse gradient is torch's: layout, size, dtype, coalescedness, entries in order."""
    assert got.is_sparse and want.is_sparse
    assert tuple(got.shape) == tuple(want.shape)
    assert str(got.dtype).split(".")[-1] == str(want.dtype).split(".")[-1]
    assert got.is_coalesced() == want.is_coalesced()
    np.testing.assert_array_equal(got._indices().numpy(), want._indices().numpy())
    np.testing.assert_allclose(got._values().numpy(), want._values().numpy(), rtol=1e-6,
                               atol=1e-7)


def _twin_embeddings(n=6, d=3, **kwargs):
    """A torch and a kiln nn.Embedding with the same weights."""
    t = torch.nn.Embedding(n, d, **kwargs)
    k = kiln.nn.Embedding(n, d, **kwargs)
    with kiln.no_grad():
        k.weight.copy_(kiln.tensor(t.weight.detach().numpy()))
    return t, k


def _twin_bags(n=6, d=3, **kwargs):
    t = torch.nn.EmbeddingBag(n, d, **kwargs)
    k = kiln.nn.EmbeddingBag(n, d, **kwargs)
    with kiln.no_grad():
        k.weight.copy_(kiln.tensor(t.weight.detach().numpy()))
    return t, k


# ----------------------------------------------------------------------------- the gradients

@pytest.mark.parametrize("kwargs,ids", [
    ({}, IDS), ({"padding_idx": 2}, IDS), ({"padding_idx": -1}, [[5, 0], [5, 5]]),
    ({}, [3]), ({"padding_idx": 3}, [3, 3]), ({}, [[[0, 5], [5, 1]]])])
def test_embedding_sparse_grad_matches_torch(kwargs, ids) -> None:
    t, k = _twin_embeddings(sparse=True, **kwargs)
    scale = np.arange(np.asarray(ids).size * 3, dtype=np.float32).reshape(
        np.asarray(ids).shape + (3,))
    (t(torch.tensor(ids)) * torch.tensor(scale)).sum().backward()
    (k(kiln.tensor(ids)) * kiln.tensor(scale)).sum().backward()
    _same_sparse(k.weight.grad, t.weight.grad)
    np.testing.assert_allclose(k.weight.grad.to_dense().numpy(),
                               t.weight.grad.to_dense().numpy(), rtol=1e-6)


def test_sparse_grad_densifies_to_the_dense_modes_grad() -> None:
    dense = kiln.nn.Embedding(6, 3)
    sparse = kiln.nn.Embedding(6, 3, sparse=True, _weight=dense.weight.detach().clone())
    for e in (dense, sparse):
        (e(kiln.tensor(IDS)) ** 2).sum().backward()
    assert not dense.weight.grad.is_sparse
    np.testing.assert_allclose(sparse.weight.grad.to_dense().numpy(),
                               dense.weight.grad.numpy(), rtol=1e-6)


def test_functional_embedding_int32_ids_and_double_table() -> None:
    wt = torch.nn.Parameter(torch.randn(5, 2, dtype=torch.float64))
    wk = kiln.nn.Parameter(kiln.tensor(wt.detach().numpy()))
    ids = np.array([3, 3, 1], dtype=np.int32)
    torch.nn.functional.embedding(torch.tensor(ids), wt, sparse=True).sum().backward()
    kiln.nn.functional.embedding(kiln.tensor(ids), wk, sparse=True).sum().backward()
    _same_sparse(wk.grad, wt.grad)
    assert wk.grad._indices().dtype is kiln.int64


@pytest.mark.parametrize("kwargs,call", [
    ({"mode": "mean"}, "offsets"), ({"mode": "sum", "padding_idx": 4}, "offsets"),
    ({"mode": "sum"}, "weights"), ({"mode": "mean"}, "2d"),
    ({"mode": "sum", "include_last_offset": True}, "offsets")])
def test_embedding_bag_sparse_grad_matches_torch(kwargs, call) -> None:
    t, k = _twin_bags(sparse=True, **kwargs)
    ids, offsets = [1, 2, 4, 4, 0], [0, 2]
    if kwargs.get("include_last_offset"):
        offsets = [0, 2, 5]
    if call == "2d":
        out_t, out_k = t(torch.tensor([[1, 2], [4, 0]])), k(kiln.tensor([[1, 2], [4, 0]]))
    elif call == "weights":
        w = [1.0, 2.0, 3.0, 4.0, 5.0]
        out_t = t(torch.tensor(ids), torch.tensor(offsets), per_sample_weights=torch.tensor(w))
        out_k = k(kiln.tensor(ids), kiln.tensor(offsets), per_sample_weights=kiln.tensor(w))
    else:
        out_t, out_k = t(torch.tensor(ids), torch.tensor(offsets)), k(kiln.tensor(ids),
                                                                      kiln.tensor(offsets))
    np.testing.assert_allclose(out_k.detach().numpy(), out_t.detach().numpy(), rtol=1e-6)
    g = np.linspace(-1, 1, out_t.numel(), dtype=np.float32).reshape(tuple(out_t.shape))
    (out_t * torch.tensor(g)).sum().backward()
    (out_k * kiln.tensor(g)).sum().backward()
    _same_sparse(k.weight.grad, t.weight.grad)


def test_embedding_bag_max_mode_refuses_sparse_like_torch() -> None:
    with pytest.raises(ValueError, match="max mode does not support sparse weights"):
        torch.nn.EmbeddingBag(6, 3, mode="max", sparse=True)(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="max mode does not support sparse weights"):
        kiln.nn.EmbeddingBag(6, 3, mode="max", sparse=True)(kiln.tensor([[1, 2]]))


def test_repr_says_sparse() -> None:
    assert repr(kiln.nn.Embedding(6, 3, sparse=True)) == repr(torch.nn.Embedding(6, 3,
                                                                                sparse=True))


def _ramp_table(lib, module):
    with lib.no_grad():
        module.weight.copy_(lib.tensor(np.linspace(-2, 2, 18, dtype=np.float32).reshape(6, 3)))


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("norm_type", [2.0, 1.0])
def test_embedding_max_norm_renormalizes_rows_like_torch(sparse, norm_type) -> None:
    results, reprs = [], []
    for lib in (torch, kiln):
        e = lib.nn.Embedding(6, 3, max_norm=1.0, norm_type=norm_type, sparse=sparse)
        _ramp_table(lib, e)
        out = e(lib.tensor([[1, 2, 1], [5, 3, 3]]))
        (out ** 2).sum().backward()
        grad = e.weight.grad.to_dense() if sparse else e.weight.grad
        results.append([e.weight.detach().numpy().copy(), out.detach().numpy(), grad.numpy()])
        reprs.append(repr(e))
    assert reprs[0] == reprs[1]
    for got, want in zip(results[1], results[0]):     # table (rows 0 and 4 untouched), out, grad
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sparse", [False, True])
def test_embedding_bag_max_norm_like_torch(sparse) -> None:
    results = []
    for lib in (torch, kiln):
        bag = lib.nn.EmbeddingBag(6, 3, max_norm=1.5, mode="mean", sparse=sparse)
        _ramp_table(lib, bag)
        out = bag(lib.tensor([1, 2, 1, 5, 3, 3]), lib.tensor([0, 4]))
        (out ** 2).sum().backward()
        grad = bag.weight.grad.to_dense() if sparse else bag.weight.grad
        results.append([bag.weight.detach().numpy().copy(), out.detach().numpy(), grad.numpy()])
    for got, want in zip(results[1], results[0]):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_compiled_steps_with_max_norm_match_torch() -> None:
    tables = []
    for lib in (torch, kiln):
        e = lib.nn.Embedding(6, 3, max_norm=1.0)
        _ramp_table(lib, e)
        opt = lib.optim.SGD(e.parameters(), lr=0.1)

        def step(ids):
            opt.zero_grad()
            loss = (e(ids) ** 2).sum()
            loss.backward()
            opt.step()
            return loss
        if lib is kiln:
            step = kiln.compile(step)
        for ids in ([1, 2], [1, 5], [0, 2], [1, 3]):
            step(lib.tensor(ids))
        tables.append(e.weight.detach().numpy())
    np.testing.assert_allclose(tables[1], tables[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_scale_grad_by_freq_divides_by_each_ids_count_like_torch(padding_idx) -> None:
    grads = []
    for lib in (torch, kiln):
        e = lib.nn.Embedding(6, 2, scale_grad_by_freq=True, padding_idx=padding_idx)
        ids = lib.tensor([[1, 2, 1], [1, 0, 0]])
        (e(ids) * lib.arange(12.0).reshape(2, 3, 2)).sum().backward()
        grads.append(e.weight.grad.numpy())
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-6)


def test_scale_grad_by_freq_with_sparse_is_refused_like_torch() -> None:
    for lib in (torch, kiln):
        e = lib.nn.Embedding(6, 2, scale_grad_by_freq=True, sparse=True)
        with pytest.raises(RuntimeError, match="scale_grad_by_freq not supported with sparse"):
            e(lib.tensor([1, 1])).sum().backward()


@pytest.mark.parametrize("kwargs", [{"norm_type": 1.0, "max_norm": 2.0, "padding_idx": 1,
                                     "scale_grad_by_freq": True, "sparse": True}, {}])
def test_embedding_repr_matches_torch(kwargs) -> None:
    assert repr(kiln.nn.Embedding(6, 2, **kwargs)) == repr(torch.nn.Embedding(6, 2, **kwargs))


# ----------------------------------------------------------------------------- accumulation

def test_two_backward_passes_concatenate_like_torch() -> None:
    t, k = _twin_embeddings(sparse=True)
    for ids in ([1, 2], [4, 1, 1]):
        (t(torch.tensor(ids)) * 2).sum().backward()
        (k(kiln.tensor(ids)) * 2).sum().backward()
    _same_sparse(k.weight.grad, t.weight.grad)
    assert k.weight.grad._nnz() == 5 and not k.weight.grad.is_coalesced()


def test_two_lookups_in_one_backward_concatenate_like_torch() -> None:
    t, k = _twin_embeddings(sparse=True)
    (t(torch.tensor([1, 2])).sum() + 3 * t(torch.tensor([2, 5])).sum()).backward()
    (k(kiln.tensor([1, 2])).sum() + 3 * k(kiln.tensor([2, 5])).sum()).backward()
    np.testing.assert_allclose(k.weight.grad.to_dense().numpy(),
                               t.weight.grad.to_dense().numpy(), rtol=1e-6)
    assert k.weight.grad._nnz() == t.weight.grad._nnz() == 4


def test_sparse_and_dense_gradients_of_one_table_sum_to_dense_like_torch() -> None:
    wt = torch.nn.Parameter(torch.randn(6, 3))
    wk = kiln.nn.Parameter(kiln.tensor(wt.detach().numpy()))
    for lib, w in ((torch, wt), (kiln, wk)):
        lib.nn.functional.embedding(lib.tensor([1, 1]), w, sparse=True).sum().backward()
        (w * w).sum().backward()
    assert not wk.grad.is_sparse and not wt.grad.is_sparse
    np.testing.assert_allclose(wk.grad.numpy(), wt.grad.detach().numpy(), rtol=1e-6)


def test_hooks_and_autograd_grad_see_the_sparse_gradient() -> None:
    t, k = _twin_embeddings(sparse=True)
    seen = []
    k.weight.register_hook(lambda g: seen.append(g.is_sparse))
    k(kiln.tensor([1, 3])).sum().backward()
    assert seen == [True]
    gt, = torch.autograd.grad(t(torch.tensor([2, 2])).sum(), t.weight)
    gk, = kiln.autograd.grad(k(kiln.tensor([2, 2])).sum(), k.weight)
    _same_sparse(gk, gt)


@pytest.mark.parametrize("owner", ["module", "optimizer"])
def test_zero_grad_keeps_an_empty_sparse_gradient_like_torch(owner) -> None:
    t, k = _twin_embeddings(sparse=True)
    for lib, e in ((torch, t), (kiln, k)):
        opt = lib.optim.SGD(e.parameters(), lr=0.1)
        e(lib.tensor(IDS)).sum().backward()
        (e if owner == "module" else opt).zero_grad(set_to_none=False)
        assert e.weight.grad.is_sparse and e.weight.grad._nnz() == 0
        e(lib.tensor([3])).sum().backward()
        (e if owner == "module" else opt).zero_grad()
        assert e.weight.grad is None


def test_no_sparse_gradient_without_grad_or_for_a_computed_table() -> None:
    e = kiln.nn.Embedding(6, 3, sparse=True)
    with kiln.no_grad():
        assert not e(kiln.tensor([1])).requires_grad
    base = kiln.nn.Parameter(kiln.randn(6, 3))
    # kiln has no sparse rules for the ops between a computed table and its leaves: dense
    kiln.nn.functional.embedding(kiln.tensor([1, 1]), base * 2, sparse=True).sum().backward()
    assert not base.grad.is_sparse
    np.testing.assert_allclose(base.grad.numpy()[1], [4.0, 4.0, 4.0])


# ----------------------------------------------------------------------------- optimizers

class _BagModel:
    """A sparse EmbeddingBag (mean of each bag) and a Linear classifier, built alike in torch
    and kiln from one seed."""

    def __init__(self, lib, mode="mean"):
        rng = np.random.default_rng(0)
        self.lib = lib
        self.emb = lib.nn.EmbeddingBag(30, 8, mode=mode, sparse=True)
        self.fc = lib.nn.Linear(8, 3)
        with lib.no_grad():
            self.emb.weight.copy_(lib.tensor(rng.normal(size=(30, 8)).astype(np.float32)))
            self.fc.weight.copy_(lib.tensor(rng.normal(size=(3, 8)).astype(np.float32) * 0.3))
            self.fc.bias.copy_(lib.tensor(np.zeros(3, np.float32)))

    def loss(self, ids, offsets, labels):
        lib = self.lib
        logits = self.fc(self.emb(lib.tensor(ids), lib.tensor(offsets)))
        return lib.nn.functional.cross_entropy(logits, lib.tensor(labels))


def _batches(steps):
    rng = np.random.default_rng(1)
    for _ in range(steps):
        yield rng.integers(0, 30, size=16), np.array([0, 4, 9, 12]), rng.integers(0, 3, size=4)


def _train(lib, make_optimizers, steps=6, mode="mean"):
    model = _BagModel(lib, mode)
    optimizers = make_optimizers(lib, model)
    losses = []
    for ids, offsets, labels in _batches(steps):
        for opt in optimizers:
            opt.zero_grad()
        loss = model.loss(ids, offsets, labels)
        loss.backward()
        for opt in optimizers:
            opt.step()
        losses.append(loss.item())
    return model, optimizers, losses


def _compare_training(make_optimizers, mode="mean", steps=6):
    mt, ot, lt = _train(torch, make_optimizers, steps, mode)
    mk, ok, lk = _train(kiln, make_optimizers, steps, mode)
    np.testing.assert_allclose(lk, lt, rtol=1e-5)
    for name in ("emb", "fc"):
        for pt, pk in zip(getattr(mt, name).parameters(), getattr(mk, name).parameters()):
            np.testing.assert_allclose(pk.detach().numpy(), pt.detach().numpy(), rtol=1e-5,
                                       atol=2e-6)
    return mt, ot, mk, ok


def test_sparse_adam_for_the_embedding_and_adam_for_the_rest_match_torch() -> None:
    mt, ot, mk, ok = _compare_training(
        lambda lib, m: [lib.optim.SparseAdam(list(m.emb.parameters()), lr=0.05),
                        lib.optim.Adam(m.fc.parameters(), lr=0.05)], steps=8)
    st, sk = ot[0].state[mt.emb.weight], ok[0].state[mk.emb.weight]
    assert sk["step"] == st["step"] == 8
    for key in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_allclose(sk[key].numpy(), st[key].numpy(), rtol=1e-5, atol=1e-8)


def test_sparse_adam_maximize_and_betas_match_torch() -> None:
    _compare_training(lambda lib, m: [
        lib.optim.SparseAdam(m.emb.parameters(), lr=0.02, betas=(0.8, 0.99), eps=1e-6,
                             maximize=True),
        lib.optim.SGD(m.fc.parameters(), lr=0.1)], mode="sum")


@pytest.mark.parametrize("kwargs", [{}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True},
                                    {"momentum": 0.5, "dampening": 0.3}, {"maximize": True}])
def test_sgd_with_sparse_gradients_matches_torch(kwargs) -> None:
    _compare_training(lambda lib, m: [lib.optim.SGD(
        [{"params": m.emb.parameters()}, {"params": m.fc.parameters(), "lr": 0.05}],
        lr=0.5, **kwargs)])


@pytest.mark.parametrize("kwargs", [{}, {"lr_decay": 0.1}, {"initial_accumulator_value": 0.2}])
def test_adagrad_with_sparse_gradients_matches_torch(kwargs) -> None:
    _compare_training(lambda lib, m: [lib.optim.Adagrad(
        list(m.emb.parameters()) + list(m.fc.parameters()), lr=0.3, **kwargs)])


def test_accumulated_sparse_gradients_step_like_torch() -> None:
    # two micro-batches per step: the gradient holds both lookups' entries (uncoalesced)
    def run(lib):
        model = _BagModel(lib)
        opt = lib.optim.SparseAdam(model.emb.parameters(), lr=0.05)
        batches = list(_batches(6))
        for first, second in zip(batches[::2], batches[1::2]):
            opt.zero_grad()
            model.loss(*first).backward()
            model.loss(*second).backward()
            opt.step()
        return model.emb.weight.detach().numpy()
    np.testing.assert_allclose(run(kiln), run(torch), rtol=1e-5, atol=2e-6)


def test_hand_written_sgd_steps_with_a_sparse_gradient_match_torch() -> None:
    # the char-RNN tutorial's `p.data.add_(p.grad.data, alpha=-lr)` and its no_grad spellings
    tables = []
    for lib in (torch, kiln):
        e = lib.nn.Embedding(6, 3, sparse=True)
        _ramp_table(lib, e)
        for ids in ([1, 2, 1], [5, 1], [0, 0, 3]):
            e.zero_grad()
            (e(lib.tensor(ids)) ** 2).sum().backward()
            e.weight.data.add_(e.weight.grad.data, alpha=-0.1)
            with lib.no_grad():
                e.weight.sub_(e.weight.grad, alpha=0.05)
                e.weight -= 0.02 * e.weight.grad
        tables.append(e.weight.detach().numpy())
    np.testing.assert_allclose(tables[1], tables[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adadelta", "Adamax", "NAdam",
                                  "RAdam", "ASGD", "Rprop", "Adafactor"])
def test_optimizers_without_sparse_support_raise_torchs_error(name) -> None:
    messages = []
    for lib in (torch, kiln):
        e = lib.nn.Embedding(6, 3, sparse=True)
        e(lib.tensor([1, 2])).sum().backward()
        with pytest.raises(RuntimeError, match="does not support sparse gradients") as err:
            getattr(lib.optim, name)(e.parameters()).step()
        messages.append(str(err.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("name", ["SGD", "Adagrad"])
def test_weight_decay_with_sparse_gradients_is_refused_like_torch(name) -> None:
    for lib in (torch, kiln):
        e = lib.nn.Embedding(6, 3, sparse=True)
        e(lib.tensor([1, 2])).sum().backward()
        with pytest.raises(RuntimeError):
            getattr(lib.optim, name)(e.parameters(), lr=0.1, weight_decay=0.1).step()


def test_sparse_adam_refuses_dense_gradients_and_sparse_or_complex_params() -> None:
    for lib in (torch, kiln):
        lin = lib.nn.Linear(2, 2)
        lin(lib.ones(1, 2)).sum().backward()
        with pytest.raises(RuntimeError, match="SparseAdam does not support dense gradients"):
            lib.optim.SparseAdam(lin.parameters()).step()
        complex_param = lib.nn.Parameter(lib.zeros(2, dtype=lib.complex64))
        with pytest.raises(ValueError, match=r"Complex params at indices \[\[0, 0\]\]"):
            lib.optim.SparseAdam([complex_param])
        with pytest.raises(ValueError, match="Invalid learning rate"):
            lib.optim.SparseAdam(lin.parameters(), lr=0.0)
        with pytest.raises(ValueError, match="Invalid beta parameter at index 1"):
            lib.optim.SparseAdam(lin.parameters(), betas=(0.9, 1.0))


def test_sparse_adam_state_dict_round_trip_continues_like_torch() -> None:
    def run(lib):
        model = _BagModel(lib)
        opt = lib.optim.SparseAdam(model.emb.parameters(), lr=0.05)
        batches = list(_batches(4))
        for batch in batches[:2]:
            opt.zero_grad()
            model.loss(*batch).backward()
            opt.step()
        fresh = lib.optim.SparseAdam(model.emb.parameters(), lr=0.05)
        fresh.load_state_dict(opt.state_dict())
        for batch in batches[2:]:
            fresh.zero_grad()
            model.loss(*batch).backward()
            fresh.step()
        return model.emb.weight.detach().numpy()
    np.testing.assert_allclose(run(kiln), run(torch), rtol=1e-5, atol=2e-6)


def test_clipping_sparse_gradients_raises_as_in_torch() -> None:
    for lib in (torch, kiln):
        e = lib.nn.Embedding(6, 3, sparse=True)
        e(lib.tensor([1, 2])).sum().backward()
        with pytest.raises(NotImplementedError):
            lib.nn.utils.clip_grad_norm_(e.parameters(), 0.5)
        with pytest.raises(NotImplementedError):
            lib.nn.utils.clip_grad_value_(e.parameters(), 0.5)


def test_lbfgs_takes_a_sparse_gradient_dense_like_torch() -> None:
    def run(lib):
        e = lib.nn.Embedding(6, 2, sparse=True)
        with lib.no_grad():
            e.weight.copy_(lib.tensor(np.linspace(-1, 1, 12, dtype=np.float32).reshape(6, 2)))
        opt = lib.optim.LBFGS(e.parameters(), lr=0.5, max_iter=4)
        target = lib.tensor([[0.5, -0.5], [1.0, 0.0]])

        def closure():
            opt.zero_grad()
            loss = ((e(lib.tensor([1, 4])) - target) ** 2).sum()
            loss.backward()
            return loss
        opt.step(closure)
        return e.weight.detach().numpy()
    np.testing.assert_allclose(run(kiln), run(torch), rtol=1e-5, atol=1e-6)


def test_grad_scaler_unscales_sparse_gradients_and_skips_infinite_steps_like_torch() -> None:
    def run(lib):
        e = lib.nn.Embedding(6, 3, sparse=True)
        with lib.no_grad():
            e.weight.copy_(lib.tensor(np.linspace(-1, 1, 18, dtype=np.float32).reshape(6, 3)))
        opt, scaler = lib.optim.SGD(e.parameters(), lr=0.1), lib.amp.GradScaler("cpu")
        scales = []
        for factor in (1.0, float("inf"), 2.0):     # the second step's gradient is infinite
            opt.zero_grad()
            loss = (e(lib.tensor([1, 4, 1])) ** 2).sum() * factor
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            scales.append(scaler.get_scale())
        return e.weight.detach().numpy(), scales
    (wk, sk), (wt, st) = run(kiln), run(torch)
    assert sk == st
    np.testing.assert_allclose(wk, wt, rtol=1e-6, atol=1e-7)


def test_norm_of_a_sparse_gradient_matches_torch() -> None:
    t, k = _twin_embeddings(sparse=True)
    (t(torch.tensor(IDS)) ** 2).sum().backward()
    (k(kiln.tensor(IDS)) ** 2).sum().backward()
    for p in ("fro", 1, float("inf")):
        np.testing.assert_allclose(k.weight.grad.norm(p).item(), t.weight.grad.norm(p).item(),
                                   rtol=1e-6)


def test_ddp_refuses_a_sparse_gradient_clearly() -> None:
    # torch's DDP all-reduces sparse gradients as sparse tensors; kiln's buckets are dense
    from tests.distributed import launch
    launch.mpi_or_skip()
    import kiln.distributed as dist
    dist.init_process_group("mpi")
    try:
        model = kiln.nn.parallel.DistributedDataParallel(kiln.nn.Embedding(6, 3, sparse=True))
        with pytest.raises(NotImplementedError, match="sparse.*use sparse=False under DDP"):
            model(kiln.tensor([1, 2])).sum().backward()
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- compile

def test_compiled_step_with_sparse_gradients_runs_eagerly_and_matches_torch() -> None:
    def make(lib):
        model = _BagModel(lib)
        opts = [lib.optim.SparseAdam(model.emb.parameters(), lr=0.05),
                lib.optim.Adam(model.fc.parameters(), lr=0.05)]

        def step(ids, offsets, labels):
            for opt in opts:
                opt.zero_grad()
            loss = model.loss(ids, offsets, labels)
            loss.backward()
            for opt in opts:
                opt.step()
            return loss
        return model, step
    mt, step_t = make(torch)
    mk, step_k = make(kiln)
    step_k = kiln.compile(step_k)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in _batches(4):
            np.testing.assert_allclose(step_k(*batch).item(), step_t(*batch).item(), rtol=1e-5)
    assert any("graph break" in str(w.message) and "_RowLookup" in str(w.message)
               for w in caught)
    np.testing.assert_allclose(mk.emb.weight.detach().numpy(), mt.emb.weight.detach().numpy(),
                               rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("name", ["SparseAdam", "SGD", "Adagrad"])
def test_a_compiled_optimizer_step_reads_each_new_sparse_gradient(name) -> None:
    # the step alone compiled: each backward makes new indices and values, which a replay of
    # the first call's program would not see, so reading a sparse .grad breaks the graph
    tables = []
    for lib in (torch, kiln):
        e = lib.nn.Embedding(6, 3, sparse=True)
        _ramp_table(lib, e)
        opt = getattr(lib.optim, name)(e.parameters(), lr=0.1)
        step = kiln.compile(opt.step) if lib is kiln else opt.step
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for ids in ([1, 2], [1, 5, 5], [0, 2], [3]):
                opt.zero_grad()
                (e(lib.tensor(ids)) ** 2).sum().backward()
                step()
        tables.append(e.weight.detach().numpy())
    assert any("a sparse .grad" in str(w.message) for w in caught)
    np.testing.assert_allclose(tables[1], tables[0], rtol=1e-6, atol=1e-7)


@pytest.mark.gpu
def test_sparse_embedding_training_on_cuda_matches_the_cpu() -> None:
    def run(device):
        model = _BagModel(kiln)
        model.emb.to(device)
        model.fc.to(device)
        opts = [kiln.optim.SparseAdam(model.emb.parameters(), lr=0.05),
                kiln.optim.SGD(model.fc.parameters(), lr=0.1, momentum=0.9)]
        for ids, offsets, labels in _batches(4):
            for opt in opts:
                opt.zero_grad()
            logits = model.fc(model.emb(kiln.tensor(ids, device=device),
                                        kiln.tensor(offsets, device=device)))
            kiln.nn.functional.cross_entropy(logits, kiln.tensor(labels, device=device)) \
                .backward()
            grad = model.emb.weight.grad
            assert grad.is_sparse and grad.device.type == device
            for opt in opts:
                opt.step()
        return model.emb.weight.detach().cpu().numpy(), model.fc.weight.detach().cpu().numpy()
    for got, want in zip(run("cuda"), run("cpu")):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
