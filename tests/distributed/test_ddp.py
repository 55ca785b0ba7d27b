"""Two ranks under mpiexec run tests/distributed/rank_checks.py once; each test compares part
of what they wrote with a NumPy reference (collectives) or with single-process training on the
concatenated batch (DDP, SyncBatchNorm, no_sync), in float64."""

from __future__ import annotations

import os

import numpy as np
import pytest

import kiln
import kiln.nn.functional as F
from tests.distributed import launch
from tests.distributed import workloads as W
from tests.distributed.rank_checks import TwoHeads, base, sync_bn_data

N = 2


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    proc = launch.mpiexec(N, [os.path.join(launch.HERE, "rank_checks.py"), str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = [dict(np.load(out / f"rank{r}.npz")) for r in range(N)]
    return got, out


def _results(ranks, section: str) -> list[dict]:
    got, _ = ranks
    for r in range(N):
        assert f"error:{section}" not in got[r], got[r][f"error:{section}"]
    return got


def _params(rank_out: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1:]: v for k, v in rank_out.items() if k.startswith(prefix + "/")}


def test_environment_set_from_mpi(ranks):
    got, _ = ranks
    for r in range(N):
        np.testing.assert_array_equal(got[r]["env"], [r, N, r])


def test_collectives_against_numpy(ranks):
    got = _results(ranks, "collectives")
    x = np.stack([base(r) for r in range(N)])
    expect_all = {
        "all_reduce_SUM": x.sum(0), "all_reduce_AVG": x.mean(0), "all_reduce_MAX": x.max(0),
        "all_reduce_MIN": x.min(0), "all_reduce_PRODUCT": x.prod(0),
        "all_reduce_int64": np.stack([base(r, np.int64) for r in range(N)]).sum(0),
        "all_reduce_async_f32": np.stack([base(r, np.float32) for r in range(N)]).max(0),
        "all_reduce_bool": (x > 0).any(0),
        "broadcast": base(1), "all_gather": x, "all_gather_into_tensor": x.reshape(-1, 3),
        "all_gather_into_tensor_stacked": x, "after_mismatch": x.sum(0),
        "all_gather_object": np.arange(N),
    }
    for r in range(N):
        for name, want in expect_all.items():
            np.testing.assert_allclose(got[r][name], want, rtol=1e-15, err_msg=name)
            assert got[r][name].dtype == np.asarray(want).dtype or name == "all_reduce_AVG"
        assert got[r]["all_reduce_async_done"]
        # reduce_scatter: rank r gets the sum over ranks of their input_list[r]
        np.testing.assert_allclose(got[r]["reduce_scatter"], x.sum(0) * (r + 1), rtol=1e-15)
        np.testing.assert_allclose(got[r]["reduce_scatter_tensor_AVG"],
                                   x.mean(0)[r:r + 1], rtol=1e-15)
        np.testing.assert_allclose(got[r]["scatter"], base(r) * 10, rtol=1e-15)
        sent = np.stack([np.concatenate([base(s) + 100 * k for k in range(N)])
                         for s in range(N)])          # rank s's input, 2*N rows
        want = np.concatenate([sent[s][2 * r:2 * r + 2] for s in range(N)])
        np.testing.assert_allclose(got[r]["all_to_all_single"], want, rtol=1e-15)
        np.testing.assert_allclose(got[r]["irecv"], base((r - 1) % N) * 3, rtol=1e-15)
        np.testing.assert_allclose(got[r]["recv"], base(1 - r), rtol=1e-15)
        assert int(got[r]["recv_source"]) == 1 - r
    np.testing.assert_allclose(got[1]["reduce"], x.sum(0), rtol=1e-15)
    np.testing.assert_allclose(got[0]["reduce"], base(0), rtol=1e-15)   # not the root
    np.testing.assert_allclose(got[0]["gather"], x, rtol=1e-15)


def test_mismatched_shapes_name_both_ranks(ranks):
    got = _results(ranks, "collectives")
    for r in range(N):
        msg = str(got[r]["mismatch_error"])
        assert f"rank {r} called all_reduce with {'float32[4]' if r else 'float64[3]'}" in msg
        assert f"rank {1 - r} called all_reduce with {'float64[3]' if r else 'float32[4]'}" in msg


def _single_process(build, train, seed: int = 10):
    model = W.seeded(build, seed)
    losses = train(model)
    return W.state(model), losses


def _assert_same(ranks_params: list[dict], reference: dict, atol: float = 1e-10) -> None:
    for key, want in reference.items():
        for r in range(N):
            np.testing.assert_allclose(ranks_params[r][key], want, rtol=1e-9, atol=atol,
                                       err_msg=f"rank {r} {key}")
        np.testing.assert_array_equal(ranks_params[0][key], ranks_params[1][key], err_msg=key)


def test_ddp_mlp_adam_equals_single_process_on_concatenated_batch(ranks):
    got = _results(ranks, "ddp_mlp")
    reference, losses = _single_process(W.mlp, W.train_mlp)
    params = [_params(g, "ddp_mlp") for g in got]
    assert set(params[0]) == set(reference)
    _assert_same(params, reference)
    # each rank's loss is its half of the batch; their mean is the full batch's loss
    np.testing.assert_allclose((got[0]["ddp_mlp_losses"] + got[1]["ddp_mlp_losses"]) / 2,
                               losses, rtol=1e-9)
    assert losses[-1] < losses[0]
    assert all(k.startswith("module.") for k in got[0]["ddp_mlp_keys"])


def test_checkpoint_from_rank0_loads_into_plain_model(ranks):
    got = _results(ranks, "ddp_mlp")
    _, out = ranks
    plain = W.mlp()
    plain.load_state_dict(kiln.load(str(out / "mlp.kiln")))
    for k, v in W.state(plain).items():
        np.testing.assert_array_equal(v, got[0][f"ddp_mlp/{k}"])


def test_ddp_small_buckets_equal_one_bucket(ranks):
    got = _results(ranks, "ddp_small_buckets")
    assert int(got[0]["small_buckets_count"]) >= 3
    model = W.seeded(W.mlp, 10)
    W.train_mlp(model, steps=5)
    _assert_same([_params(g, "small_buckets") for g in got], W.state(model))


def test_ddp_cnn_sync_batchnorm_sgd_equals_single_process(ranks):
    got = _results(ranks, "ddp_cnn")
    assert bool(got[0]["cnn_has_sync_bn"])
    reference, losses = _single_process(W.cnn, W.train_cnn)
    params = [_params(g, "ddp_cnn") for g in got]
    assert set(params[0]) == set(reference)    # running stats and num_batches_tracked too
    _assert_same(params, reference)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("shape", [(8, 3), (6, 3, 5), (4, 3, 2, 2)])
def test_sync_batchnorm_equals_batchnorm_on_the_concatenated_batch(ranks, shape):
    import torch
    got = _results(ranks, "sync_bn")
    x, w = sync_bn_data(shape)
    bn = torch.nn.BatchNorm1d(3, momentum=0.3) if len(shape) < 4 else \
        torch.nn.BatchNorm2d(3, momentum=0.3)
    bn = bn.double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    xt = torch.tensor(x, requires_grad=True)
    y = bn(xt)
    (y * torch.tensor(w)).sum().backward()
    key, half = "x".join(map(str, shape)), shape[0] // N
    rows = [slice(r * half, (r + 1) * half) for r in range(N)]

    def check(name, want, r):
        np.testing.assert_allclose(got[r][f"sync_bn/{key}/{name}"], want, rtol=1e-10,
                                   atol=1e-12, err_msg=f"rank {r} {name}")
    for r in range(N):
        check("y", y.detach().numpy()[rows[r]], r)
        check("x_grad", xt.grad.numpy()[rows[r]], r)
        check("running_mean", bn.running_mean.numpy(), r)
        check("running_var", bn.running_var.numpy(), r)
        bn.eval()
        check("eval", bn(torch.tensor(x)).detach().numpy()[rows[r]], r)
        bn.train()
    # without DDP each rank's parameter gradient is its own rows' share of the full one
    for name, ref in (("weight_grad", bn.weight.grad), ("bias_grad", bn.bias.grad)):
        total = sum(got[r][f"sync_bn/{key}/{name}"] for r in range(N))
        np.testing.assert_allclose(total, ref.numpy(), rtol=1e-10, atol=1e-12)


def test_no_sync_accumulation_equals_one_big_step(ranks):
    got = _results(ranks, "no_sync")
    model = W.seeded(W.mlp, 0)
    opt = kiln.optim.SGD(model.parameters(), lr=0.1)
    for s in range(3):
        x, y = W.mlp_data(s)
        opt.zero_grad()
        F.mse_loss(model(kiln.tensor(x)), kiln.tensor(y)).backward()
        opt.step()
    _assert_same([_params(g, "no_sync") for g in got], W.state(model))
    assert not np.allclose(got[0]["no_sync_local_grad"], got[1]["no_sync_local_grad"])


def test_compiled_ddp_step_replays_with_its_all_reduce_in_the_program(ranks):
    """A whole training step compiled (forward, `loss.backward()`, `opt.step()`): each bucket's
    all-reduce is an `all_reduce_sum` node of the step's program, so the step replays compiled
    and equals eager DDP and single-process training on the concatenated batch."""
    got = _results(ranks, "compiled")
    for r in range(N):
        assert int(got[r]["compiled_replays"]) >= 3
        assert str(got[r]["compiled_warnings"][0]) == ""
        eager, compiled = _params(got[r], "compiled_eager"), _params(got[r], "compiled_compiled")
        assert set(compiled) == set(eager)
        for k in eager:
            np.testing.assert_allclose(compiled[k], eager[k], rtol=1e-9, atol=1e-12, err_msg=k)
    model = W.seeded(W.mlp, 10)
    W.train_mlp(model, steps=5)
    _assert_same([_params(g, "compiled_compiled") for g in got], W.state(model))


def test_compiled_ddp_cnn_step_broadcasts_buffers_in_the_program(ranks):
    """A CNN with BatchNorm: DDP broadcasts rank 0's running statistics at every forward;
    compiled, those broadcasts are `broadcast_from` nodes before the forward reads them and the
    step replays compiled, its parameters and buffers (rank 0's, as updated by this rank's
    forward) equal to eager DDP's on each rank."""
    got = _results(ranks, "compiled_cnn")
    for r in range(N):
        assert int(got[r]["compiled_cnn_replays"]) >= 3
        assert str(got[r]["compiled_cnn_warnings"][0]) == ""
        np.testing.assert_allclose(got[r]["compiled_cnn_compiled_losses"],
                                   got[r]["compiled_cnn_eager_losses"], rtol=1e-9)
        eager, compiled = (_params(got[r], "compiled_cnn_eager"),
                           _params(got[r], "compiled_cnn_compiled"))
        assert set(compiled) == set(eager) and "1.running_mean" in eager
        for k in eager:
            np.testing.assert_allclose(compiled[k], eager[k], rtol=1e-9, atol=1e-12, err_msg=k)
    # the broadcast made a difference: rank 1's statistics start from rank 0's every step
    assert not np.allclose(got[0]["compiled_cnn_eager/1.running_mean"],
                           got[1]["compiled_cnn_eager/1.running_mean"])


def test_compiled_ddp_step_with_a_comm_hook_runs_eagerly(ranks):
    """A communication hook runs Python on each bucket, which a replay would skip: the compiled
    step is a graph break naming it and runs eagerly, equal to eager DDP."""
    got = _results(ranks, "compiled")
    for r in range(N):
        message = str(got[r]["compiled_hook_warnings"][0])
        assert "graph break" in message and "communication hook" in message
        eager, compiled = _params(got[r], "compiled_eager"), _params(got[r], "compiled_compiled_hook")
        for k in eager:
            np.testing.assert_allclose(compiled[k], eager[k], rtol=1e-12, atol=1e-15, err_msg=k)


def test_compiled_ddp_forward_replays_and_equals_eager_ddp(ranks):
    """`torch.compile(ddp_model)`, backward outside: the forward replays compiled, the reducer
    is armed after each replay, and the gradients are averaged as eager DDP's."""
    got = _results(ranks, "compiled")
    for r in range(N):
        assert int(got[r]["compiled_forward_replays"]) >= 3
        assert str(got[r]["compiled_forward_warnings"][0]) == ""
        eager, compiled = _params(got[r], "compiled_eager"), _params(got[r], "compiled_compiled_forward")
        assert set(compiled) == set(eager)
        for k in eager:
            np.testing.assert_allclose(compiled[k], eager[k], rtol=1e-9, atol=1e-12, err_msg=k)
    model = W.seeded(W.mlp, 10)
    W.train_mlp(model, steps=5)
    _assert_same([_params(g, "compiled_compiled_forward") for g in got], W.state(model))


def test_compiled_ddp_forward_under_no_sync_keeps_local_gradients(ranks):
    """A compiled DDP forward replayed inside `no_sync()` arms no all-reduce (each rank's
    gradients stay its own, as eager's), and the next replay outside it does."""
    got = _results(ranks, "compiled")
    for r in range(N):
        assert int(got[r]["compiled_forward_no_sync_replays"]) >= 6
        assert str(got[r]["compiled_forward_no_sync_warnings"][0]) == ""
        np.testing.assert_allclose(got[r]["compiled_forward_no_sync_local"],
                                   got[r]["eager_no_sync_local"], rtol=1e-9, atol=1e-12)
        eager = _params(got[r], "compiled_eager_no_sync")
        compiled = _params(got[r], "compiled_compiled_forward_no_sync")
        for k in eager:
            np.testing.assert_allclose(compiled[k], eager[k], rtol=1e-9, atol=1e-12, err_msg=k)
    # local means local: the ranks' shards differ, so do their un-averaged gradients
    assert not np.allclose(got[0]["eager_no_sync_local"], got[1]["eager_no_sync_local"])


def test_ddp_over_a_compiled_module_equals_eager_ddp(ranks):
    """DDP(wrapper whose forward is @kiln.compile'd): forward and backward run compiled
    (replays, no graph break) and the bucketed all-reduce runs outside the compiled program,
    from the hooks the compiled backward's gradients pass through."""
    got = _results(ranks, "compiled")
    for r in range(N):
        assert int(got[r]["ddp_of_compiled_replays"]) >= 3
        assert str(got[r]["ddp_of_compiled_warnings"][0]) == ""
        eager, compiled = (_params(got[r], "compiled_eager"),
                           _params(got[r], "compiled_ddp_of_compiled"))
        assert set(compiled) == set(eager)
        for k in eager:
            np.testing.assert_allclose(compiled[k], eager[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_find_unused_parameters(ranks):
    got = _results(ranks, "unused")
    grads = []
    for r in range(N):     # each rank's local gradients, computed here without DDP
        model = W.seeded(lambda: TwoHeads().double(), 3)
        model(kiln.tensor(base(r)), use_b=(r == 0)).pow(2).sum().backward()
        b = model.b.weight.grad
        grads.append((model.a.weight.grad.numpy(), np.zeros((2, 3)) if b is None else b.numpy()))
    for r in range(N):
        np.testing.assert_allclose(got[r]["unused_a"], (grads[0][0] + grads[1][0]) / 2,
                                   rtol=1e-12)
        np.testing.assert_allclose(got[r]["unused_b"], (grads[0][1] + grads[1][1]) / 2,
                                   rtol=1e-12)
        assert bool(got[r]["unused_c_is_none"])
        assert "find_unused_parameters=True" in str(got[r]["unused_error"])


def test_nccl_backend_over_a_stand_in_nccl(ranks):
    """kiln's NCCL backend (cuda tensors) with CuPy's NCCL replaced by an MPI stand-in and CUDA
    by tests/fake_cuda.py: the same answers as the NumPy references. Not run on a GPU."""
    got = _results(ranks, "nccl_fake")
    x = np.stack([base(r) for r in range(N)])
    expect = {"all_reduce_SUM": x.sum(0), "all_reduce_AVG": x.mean(0), "all_reduce_MAX": x.max(0),
              "all_reduce_MIN": x.min(0), "all_reduce_PRODUCT": x.prod(0),
              "all_reduce_bool": (x > 0).any(0), "broadcast": base(1, np.float32),
              "all_gather": x, "all_gather_into_tensor": x.reshape(-1, 3)}
    for r in range(N):
        for name, want in expect.items():
            np.testing.assert_allclose(got[r][f"nccl/{name}"], want, rtol=1e-7, err_msg=name)
        np.testing.assert_allclose(got[r]["nccl/reduce_scatter"], x.sum(0) * (r + 1))
        np.testing.assert_allclose(got[r]["nccl/reduce_scatter_tensor_AVG"], x.mean(0)[r:r + 1])
        np.testing.assert_allclose(got[r]["nccl/scatter"], base(r) * 10)
        sent = np.stack([np.concatenate([base(s) + 100 * k for k in range(N)]) for s in range(N)])
        np.testing.assert_allclose(got[r]["nccl/all_to_all_single"],
                                   np.concatenate([sent[s][2 * r:2 * r + 2] for s in range(N)]))
        np.testing.assert_allclose(got[r]["nccl/irecv"], base((r - 1) % N) * 3)
        assert set(got[r]["nccl/calls"]) == {"allGather", "allReduce", "broadcast", "recv",
                                             "reduce", "reduceScatter", "send"}
    np.testing.assert_allclose(got[1]["nccl/reduce"], x.max(0))
    np.testing.assert_allclose(got[0]["nccl/gather"], x)
    model = W.seeded(W.mlp, 10)
    W.train_mlp(model, steps=5)
    _assert_same([_params(g, "nccl_ddp") for g in got], W.state(model))


def test_mistakes_raise_before_anything_is_sent(ranks):
    got = _results(ranks, "errors")
    expect = {
        "non_contiguous": "ValueError: all_reduce: Tensors must be contiguous (got float32[4, 3] "
                          "with strides (1, 4))",
        "avg_int": "TypeError: all_reduce: ReduceOp.AVG needs a floating-point tensor, got int64",
        "bad_op": "ValueError: all_reduce: unknown reduce op 'mean'",
        "list_length": "ValueError: all_gather: tensor_list has 1 tensors; it needs one per rank",
        "list_shape": "ValueError: all_gather: tensor_list[1] is float32[3], but the tensor is "
                      "float32[2]",
        "gather_size": "ValueError: all_gather_into_tensor: the output tensor [3] must hold world "
                       "size (2) times",
        "src_rank": "ValueError: broadcast: src=2 is not a rank of this group (0 to 1)",
        "group": "TypeError: all_reduce: group must be None, group.WORLD or a ProcessGroup",
        "double_init": "RuntimeError: trying to initialize the default process group twice!",
        "backend": "ValueError: init_process_group: unknown backend 'ucc'",
    }
    for r in range(N):
        for name, start in expect.items():
            assert str(got[r][f"errors/{name}"]).startswith(start), (name, got[r][f"errors/{name}"])


def test_backward_through_the_bare_module_stays_local(ranks):
    got = _results(ranks, "errors")
    x, y = W.mlp_data(0)
    for r in range(N):
        model = W.seeded(W.mlp, 10)      # rank 0's weights, which DDP gave every rank
        F.mse_loss(model(kiln.tensor(x[:4] + r)), kiln.tensor(y[:4])).backward()
        np.testing.assert_allclose(got[r]["errors/bare_module_grad"],
                                   model[0].weight.grad.numpy(), rtol=1e-12)
