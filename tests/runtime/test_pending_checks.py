"""Index bounds checks of eager ops on cuda tensors are read at the next host read, not at the op
(kiln.runtime.pending_checks): a bad index raises its op's IndexError, naming the value, the
dimension and the line that called the op, at that read and with no host transfer before it;
good indices give PyTorch's values and gradients; the CPU still checks at once. GPU-marked:
run under the strict fake CUDA (`pytest -p tests.fake_cuda`), whose host transfers are counted.
"""

import numpy as np
import pytest
import torch

import kiln
import kiln.nn.functional as F
from kiln.runtime import pending_checks
from tests.parity import check_op

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def transfers(monkeypatch):
    """The host transfers (reads of device memory, copies either way) made during a test."""
    from tests import fake_cuda
    seen = []
    real = fake_cuda._host_access

    def count(what):
        seen.append(what)
        real(what)
    monkeypatch.setattr(fake_cuda, "_host_access", count)
    yield seen
    pending_checks.discard()


def _cuda(values, dtype=None):
    return kiln.tensor(np.asarray(values, dtype=dtype), device="cuda")


# each: make the op's output from cuda tensors with one bad index; the op's name and the
# offending value and size the error names
BAD_INDEX_CASES = {
    "getitem": (lambda x, i: x[i], [0, 5], "index: index 5 is out of bounds for dimension 0 "
                "with size 3"),
    "getitem_negative": (lambda x, i: x[i], [-4, 1], "index: index -4 is out of bounds for "
                         "dimension 0 with size 3"),
    "index_select": (lambda x, i: kiln.index_select(x, 1, i), [3, 4], "index_select: index "
                     "out of range in self: index 4 is out of bounds for dimension 1"),
    "take": (lambda x, i: kiln.take(x, i), [11, 12], "take: out of range: index 12 is out of "
             "bounds"),
    "embedding": (lambda x, i: F.embedding(i, x), [2, 7], "embedding: index out of range in "
                  "self: index 7 is out of bounds for dimension 0 with size 3"),
    "cross_entropy": (lambda x, i: F.cross_entropy(x[:2], i), [1, 4], "cross_entropy: Target "
                      "4 is out of bounds (expected class indices in [0, 4) or the "
                      "ignore_index)"),
    "gather": (lambda x, i: kiln.gather(x, 1, i.reshape(2, 1)), [0, -1], "gather: index -1 is "
               "out of bounds for dimension 1 with size 4"),
}
BAD_INDEX_CASES["one_hot"] = (
    lambda x, i: F.one_hot(i, 4), [3, 4], "one_hot: Class values must be non-negative and "
    "smaller than num_classes=4. Got class 4")
BAD_INDEX_CASES["take_primitive"] = (      # no caller's check: the primitive's own
    lambda x, i: kiln.ops.prims.take(x, i, axis=0), [0, 5],
    "take: index 5 is out of bounds for dimension 0 with size 3")
# a loss's or lookup's own check of the indices it reads (kiln.ops.check_indices), queued first
BAD_INDEX_CASES["multi_margin_loss"] = (
    lambda x, i: F.multi_margin_loss(x[:2], i), [1, 4], "multi_margin_loss: target out of "
    "range: target 4 is out of bounds (expected values in [0, 4))")
BAD_INDEX_CASES["embedding_bag"] = (
    lambda x, i: F.embedding_bag(i.reshape(1, 2), x), [2, 3], "embedding_bag: input 3 is out "
    "of bounds (expected values in [0, 3))")
# PyTorch's kinds where it is not IndexError, as on the CPU
KINDS = {"gather": RuntimeError, "one_hot": RuntimeError, "multi_margin_loss": RuntimeError,
         "embedding_bag": RuntimeError}


@pytest.mark.parametrize("case", sorted(BAD_INDEX_CASES))
def test_bad_index_raises_at_the_next_host_read_naming_op_and_line(case, transfers):
    fn, index, message = BAD_INDEX_CASES[case]
    x = _cuda(np.arange(12, dtype=np.float32).reshape(3, 4))
    i = _cuda(index, np.int64)
    transfers.clear()
    out = fn(x, i)
    where = f"{fn.__code__.co_filename}:{fn.__code__.co_firstlineno}"    # the lambda's line
    later = (out * 2).sum()                      # more work queued after the bad index
    assert transfers == [], transfers            # nothing read back: the host ran ahead
    assert pending_checks.pending() >= 1
    with pytest.raises(KINDS.get(case, IndexError)) as err:
        later.item()
    text = str(err.value)
    assert message in text, text
    assert f"(at {where};" in text, text
    assert pending_checks.pending() == 0
    # the error is reported once; the queue is empty and cuda work goes on
    assert _cuda([1.0, 2.0]).sum().item() == 3.0


@pytest.mark.parametrize("read", ["item", "tolist", "cpu", "bool", "float", "repr",
                                  "synchronize"])
def test_every_host_read_point_reads_the_queued_checks_first(read):
    x = _cuda([1.0, 2.0, 3.0])
    y = x[_cuda([3], np.int64)]                  # out of range, queued
    reads = {"item": lambda: y.item(), "tolist": lambda: y.tolist(), "cpu": lambda: y.cpu(),
             "bool": lambda: bool(y), "float": lambda: float(y), "repr": lambda: repr(y),
             "synchronize": kiln.cuda.synchronize}
    with pytest.raises(IndexError, match="index 3 is out of bounds for dimension 0 with size 3"):
        reads[read]()


def test_queued_checks_are_read_in_one_transfer_and_at_most_max_pending_wait(transfers,
                                                                             monkeypatch):
    monkeypatch.setattr(pending_checks, "MAX_PENDING", 8)
    x = _cuda(np.arange(10, dtype=np.float32))
    i = _cuda([1, 9, -10], np.int64)
    transfers.clear()
    x[i]
    per_op = pending_checks.pending()
    assert per_op == 1                # the index's check; take's own would check it again
    while pending_checks.pending() + per_op < 8:
        x[i]
    assert transfers == [], transfers
    x[i]                                          # the 8th check: all read now, in one transfer
    assert transfers == ["copying device memory to the host"], transfers
    assert pending_checks.pending() < per_op
    y = x[i]
    transfers.clear()
    assert y.tolist() == [1.0, 9.0, 0.0]
    assert len(transfers) == 2                    # the queued check, then the values


def test_a_cpu_index_is_still_checked_at_the_op():
    x = kiln.arange(3.0)
    with pytest.raises(IndexError, match="index 3 is out of bounds for dimension 0 with size 3"):
        x[kiln.tensor([3])]
    assert pending_checks.pending() == 0


def test_good_indices_on_cuda_give_torch_values_and_gradients(transfers):
    def fn(lib, x, i):
        return x[i] * 2 + lib.index_select(x, 1, (i + 4) % 4).sum()
    check_op(fn, [(4, 4), np.array([0, -1, 2, -4])], device="cuda")
    rows = np.array([[0, 3], [-2, 1]])
    check_op(lambda lib, w, i: lib.nn.functional.embedding(i.abs(), w) * 3, [(5, 3), rows],
             device="cuda")
    check_op(lambda lib, x, t: lib.nn.functional.cross_entropy(x, t, ignore_index=1),
             [(5, 4), np.array([0, 3, 1, 2, 1])], device="cuda")
    check_op(lambda lib, x, t: lib.nn.functional.one_hot(t, 5) * x, [(3, 5), np.array([4, 0, 2])],
             device="cuda")


def test_cross_entropy_step_on_cuda_matches_cpu_and_reads_nothing_until_item(transfers):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 5)).astype(np.float32)
    target = np.array([4, 0, 2, 2, 1, 3])
    results = {}
    for device in ("cpu", "cuda"):
        x = kiln.tensor(logits, device=device, requires_grad=True)
        t = kiln.tensor(target, device=device)
        transfers.clear()
        loss = F.cross_entropy(x, t)
        loss.backward()
        if device == "cuda":
            assert transfers == [], transfers
        results[device] = (loss.item(), x.grad.cpu().numpy())
    tx = torch.tensor(logits, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tx, torch.tensor(target))
    tl.backward()
    np.testing.assert_allclose(results["cuda"][0], tl.item(), rtol=1e-6)
    np.testing.assert_allclose(results["cuda"][1], tx.grad.numpy(), rtol=1e-5, atol=1e-7)
    # (a GPU's kernels sum in other orders than NumPy: equal to rounding, not bitwise)
    np.testing.assert_allclose(results["cuda"][0], results["cpu"][0], rtol=1e-6)
    # the cuda gradient is log_softmax's one backward kernel (PyTorch's rule), the CPU's the
    # composite's chain of rules: equal to a few ulp, not bitwise
    np.testing.assert_allclose(results["cuda"][1], results["cpu"][1], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("bad,shown", [(1.5, "1.5"), (-0.25, "-0.25"), (float("nan"), "nan")])
def test_binary_cross_entropy_range_check_waits_for_a_host_read(transfers, bad, shown):
    # probabilities outside [0, 1] (or NaN) raise as PyTorch does, at the next read of device
    # memory; 0 and 1 themselves are allowed
    p = _cuda([0.0, 0.5, bad, 1.0], np.float32)
    t = _cuda([0.0, 1.0, 1.0, 1.0], np.float32)
    transfers.clear()
    loss = F.binary_cross_entropy(p, t)
    assert not [w for w in transfers if "to the host" in w or "reading" in w]
    with pytest.raises(RuntimeError, match=rf"binary_cross_entropy: all elements of input "
                       rf"should be between 0 and 1; got {shown}.*test_pending_checks.py"):
        loss.item()


def test_binary_cross_entropy_on_cuda_matches_torch_and_reads_nothing(transfers):
    rng = np.random.default_rng(3)
    p = np.concatenate([[0.0, 1.0], rng.uniform(0.01, 0.99, 6)]).astype(np.float32)
    t = rng.uniform(0, 1, 8).astype(np.float32)
    transfers.clear()
    loss = F.binary_cross_entropy(_cuda(p), _cuda(t), reduction="sum")
    assert not [w for w in transfers if "to the host" in w or "reading" in w]
    want = torch.nn.functional.binary_cross_entropy(torch.tensor(p), torch.tensor(t),
                                                    reduction="sum")
    np.testing.assert_allclose(loss.item(), want.item(), rtol=1e-6)
