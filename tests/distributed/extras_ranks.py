"""The rest of torch.distributed's user API, written once as a PyTorch user writes it and run
twice: `mpiexec -n N python extras_ranks.py OUT` runs it on kiln ranks (`import kiln as
torch`), `python extras_ranks.py OUT torch N` on N forked processes of torch itself over gloo.
Each rank writes OUT/<kiln|torch>_rank<r>_of<N>.npz; a check that raises records its error
instead (key "error:<check>"), so the others still report. test_dist_extras.py compares them.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback
from datetime import timedelta

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _module(torch, name: str):
    """`torch.distributed.tensor` and the like of whichever framework `torch` is."""
    return importlib.import_module(f"{torch.__name__}.{name}")


def all_to_all(torch, dist, r: int, n: int) -> dict:
    inputs = [torch.arange(3, dtype=torch.float64) + 100 * r + 10 * j for j in range(n)]
    outputs = [torch.zeros(3, dtype=torch.float64) for _ in range(n)]
    dist.all_to_all(outputs, inputs)
    out = {"values": np.stack([o.numpy() for o in outputs])}
    inputs = [torch.full((2, 3), float(r * n + j)) for j in range(n)]
    outputs = [torch.empty(2, 3) for _ in range(n)]
    work = dist.all_to_all(outputs, inputs, async_op=True)
    work.wait()
    out["async_f32"] = np.stack([o.numpy() for o in outputs])
    return out


def all_to_all_uneven(torch, dist, r: int, n: int) -> dict:
    """Pieces of different sizes per pair (rank r sends r + j + 1 values to rank j): kiln's
    all_to_all; torch's gloo all_to_all takes equal pieces only, so its side makes the same
    exchange with isend/irecv pairs."""
    inputs = [torch.arange(r + j + 1, dtype=torch.float64) + 100 * r + 10 * j for j in range(n)]
    outputs = [torch.zeros(j + r + 1, dtype=torch.float64) for j in range(n)]
    if torch.__name__ == "torch":
        outputs[r].copy_(inputs[r])         # gloo sends to other ranks only
        works = [dist.isend(t, j) for j, t in enumerate(inputs) if j != r]
        works += [dist.irecv(t, j) for j, t in enumerate(outputs) if j != r]
        for work in works:
            work.wait()
    else:
        dist.all_to_all(outputs, inputs)
    return {"values": np.concatenate([o.numpy() for o in outputs])}


def all_to_all_single_splits(torch, dist, r: int, n: int) -> dict:
    """Uneven rows of one tensor, as mixture-of-experts token routing does: rank r sends
    j + r + 1 rows of 2 to rank j."""
    sends = [j + r + 1 for j in range(n)]
    receives = [r + j + 1 for j in range(n)]
    input = torch.arange(sum(sends) * 2, dtype=torch.float64).reshape(-1, 2) + 1000 * r
    output = torch.zeros(sum(receives), 2, dtype=torch.float64)
    dist.all_to_all_single(output, input, receives, sends)
    equal = torch.zeros(2 * n, 3, dtype=torch.int64)
    dist.all_to_all_single(equal, torch.arange(6 * n).reshape(2 * n, 3) * (r + 1),
                           input_split_sizes=[2] * n)
    return {"uneven": output.numpy(), "equal_given": equal.numpy()}


def batch_p2p(torch, dist, r: int, n: int) -> dict:
    """A ring both ways in one batch, the two directions told apart by their tags."""
    right, left = (r + 1) % n, (r - 1) % n
    to_right = torch.arange(4, dtype=torch.float64) * (r + 1)
    from_left = torch.zeros(4, dtype=torch.float64)
    to_left = torch.tensor([r, 10 * r], dtype=torch.int64)
    from_right = torch.zeros(2, dtype=torch.int64)
    ops = [dist.P2POp(dist.isend, to_right, right), dist.P2POp(dist.irecv, from_left, left),
           dist.P2POp(dist.isend, to_left, left, tag=3),
           dist.P2POp(dist.irecv, from_right, right, tag=3)]
    works = dist.batch_isend_irecv(ops)
    for work in works:
        work.wait()
    return {"from_left": from_left.numpy(), "from_right": from_right.numpy(),
            "works": np.array(len(works))}


def objects(torch, dist, r: int, n: int) -> dict:
    mine = {"rank": r, "items": list(range(r + 1)), "name": f"r{r}"}
    gathered = [None] * n if r == n - 1 else None
    dist.gather_object(mine, gathered, dst=n - 1)
    out = {"gather_object": np.array(repr(gathered))}
    received = [None]
    dist.scatter_object_list(received, [("piece", i, i * i) for i in range(n)] if r == 0
                             else None, src=0)
    out["scatter_object_list"] = np.array(repr(received))
    if r == 0:
        dist.send_object_list([1, "two", {"three": 3.0}], dst=n - 1)
    if r == n - 1:
        got = [None, None, None]
        dist.recv_object_list(got, src=0)
        out["recv_object_list"] = np.array(repr(got))
    return out


def coalesced(torch, dist, r: int, n: int) -> dict:
    a = torch.full((2,), float(r + 1), dtype=torch.float64)
    b = torch.arange(3, dtype=torch.float64) * (r + 2)
    outputs = [[torch.zeros(2, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)]
               for _ in range(n)]
    dist.all_gather_coalesced(outputs, [a, b])
    sums = [torch.ones(3, dtype=torch.float64) * (r + 0.5), torch.ones(2, 2, dtype=torch.float64)
            * r]
    dist.all_reduce_coalesced(sums)
    return {"gathered_f64": np.stack([row[0].numpy() for row in outputs]),
            "gathered_second": np.stack([row[1].numpy() for row in outputs]),
            "reduced0": sums[0].numpy(), "reduced1": sums[1].numpy()}


def file_store(torch, dist, r: int, n: int, path: str) -> dict:
    """A FileStore shared by the ranks: a counter every rank adds to, and each rank's key."""
    store = dist.FileStore(path, n)
    total = store.add("count", r + 1)
    store.set(f"key{r}", f"value of {r}")
    store.wait([f"key{j}" for j in range(n)])
    values = [store.get(f"key{j}") for j in range(n)]
    dist.barrier()
    out = {"values": np.array(repr(values)), "count": np.array(int(store.get("count"))),
           "own_add_ok": np.array(1 <= total <= n * (n + 1) // 2)}
    dist.barrier()
    return out


def dtensor_factories(torch, dist, r: int, n: int) -> dict:
    dt = _module(torch, "distributed.tensor")
    mesh = dt.init_device_mesh("cpu", (n,))
    out = {}
    for name, t in (("zeros_s0", dt.zeros(5, 3, device_mesh=mesh, placements=[dt.Shard(0)])),
                    ("ones_s1", dt.ones((5, 4), dtype=torch.float64, device_mesh=mesh,
                                        placements=[dt.Shard(1)])),
                    ("full_s0", dt.full((7,), 2.5, device_mesh=mesh, placements=[dt.Shard(0)])),
                    ("full_int", dt.full((3, 2), 4, dtype=torch.int64, device_mesh=mesh)),
                    ("zeros_rep", dt.zeros(2, 3, requires_grad=True, device_mesh=mesh))):
        out[name] = t.to_local().detach().numpy()
        out[name + "_dtype"] = np.array(str(t.dtype).split(".")[-1])
        out[name + "_shape"] = np.array(list(t.to_local().shape))
        out[name + "_grad"] = np.array(t.requires_grad)
        out[name + "_placements"] = np.array(repr(t.placements))
    out["empty_shape"] = np.array(list(dt.empty(6, 2, device_mesh=mesh,
                                                placements=[dt.Shard(0)]).to_local().shape))
    return out


def partial(torch, dist, r: int, n: int) -> dict:
    dt = _module(torch, "distributed.tensor")
    mesh = dt.init_device_mesh("cpu", (n,))
    local = torch.arange(6, dtype=torch.float64).reshape(3, 2) * (r + 1) - r
    summed = dt.DTensor.from_local(local, mesh, [dt.Partial()])
    biggest = dt.DTensor.from_local(local, mesh, [dt.Partial("max")])
    spread = dt.distribute_tensor(torch.arange(4, dtype=torch.float64) * 3, mesh,
                                  [dt.Partial()])
    return {"full": summed.full_tensor().numpy(),
            "to_shard": summed.redistribute(mesh, [dt.Shard(0)]).to_local().numpy(),
            "to_replicate": summed.redistribute(mesh, [dt.Replicate()]).to_local().numpy(),
            "max_full": biggest.full_tensor().numpy(),
            "distributed_local": spread.to_local().numpy(),
            "distributed_full": spread.full_tensor().numpy(),
            "names": np.array(f"{dt.Partial()!r} {dt.Partial('avg')} "
                              f"{dt.Partial().is_partial()} {dt.Shard(0).is_partial()}")}


def distribute_module(torch, dist, r: int, n: int) -> dict:
    dt = _module(torch, "distributed.tensor")
    mesh = dt.init_device_mesh("cpu", (n,))
    torch.manual_seed(r)                     # rank 0's weights are the ones distributed

    def shard_first_linear(name, module, device_mesh):
        if name == "0":
            weight = dt.distribute_tensor(module.weight, device_mesh, [dt.Shard(0)])
            module.register_parameter("weight", torch.nn.Parameter(weight))

    sharded = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
                                  torch.nn.Linear(6, 2)).double()
    dt.distribute_module(sharded, mesh, shard_first_linear)
    out = {f"sharded/{k}": v.to_local().detach().numpy() for k, v in sharded.named_parameters()}
    out["sharded_placements"] = np.array(repr([v.placements for v in sharded.parameters()]))

    replicated = torch.nn.Linear(3, 2).double()
    dt.distribute_module(
        replicated, mesh,
        input_fn=lambda mod, inputs, device_mesh: tuple(
            dt.DTensor.from_local(x, device_mesh, [dt.Replicate()]) for x in inputs),
        output_fn=lambda mod, outputs, device_mesh: outputs.to_local())
    x = torch.arange(6, dtype=torch.float64).reshape(2, 3) / 7
    out["replicated_out"] = replicated(x).detach().numpy()
    out["replicated_weight"] = replicated.weight.to_local().detach().numpy()
    return out


def checkpoint(torch, dist, r: int, n: int, path: str) -> dict:
    """async_save of a sharded and a replicated DTensor, a tensor and a value, then what the
    checkpoint holds (read_metadata) and a load into fresh DTensors."""
    dt = _module(torch, "distributed.tensor")
    dcp = _module(torch, "distributed.checkpoint")
    mesh = dt.init_device_mesh("cpu", (n,))
    full = torch.arange(10, dtype=torch.float64).reshape(5, 2)
    state = {"model": {"rows": dt.distribute_tensor(full, mesh, [dt.Shard(0)]),
                       "same": dt.distribute_tensor(full[0] * 2, mesh, [dt.Replicate()])},
             "plain": torch.ones(3, dtype=torch.int64), "step": 7}
    future = dcp.async_save(state, checkpoint_id=path)
    future.result()
    dist.barrier()
    described = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    out = {"keys": np.array(sorted(described))}
    for key, meta in described.items():
        if isinstance(meta, dcp.TensorStorageMetadata):
            out[f"{key}.size"] = np.array(list(meta.size))
            out[f"{key}.dtype"] = np.array(str(meta.properties.dtype).split(".")[-1])
            out[f"{key}.chunks"] = np.array(sorted((list(c.offsets), list(c.sizes))
                                                   for c in meta.chunks))
        else:
            out[f"{key}.kind"] = np.array(type(meta).__name__)
    fresh = {"model": {"rows": dt.distribute_tensor(full * 0, mesh, [dt.Shard(0)]),
                       "same": dt.distribute_tensor(full[0] * 0, mesh, [dt.Replicate()])},
             "plain": torch.zeros(3, dtype=torch.int64), "step": 0}
    dcp.load(fresh, checkpoint_id=path)
    out["loaded_rows"] = fresh["model"]["rows"].to_local().numpy()
    out["loaded_same"] = fresh["model"]["same"].to_local().numpy()
    out["loaded_step"] = np.array(fresh["step"])
    return out


def subgroups(torch, dist, r: int, n: int) -> dict:
    before = dist.get_pg_count()
    mine, groups = dist.new_subgroups(group_size=1)
    out = {"size1_ranks": np.array(dist.get_process_group_ranks(mine)),
           "size1_groups": np.array(len(groups))}
    enumeration = [[0, n - 1]] + ([[1]] if n == 3 else [])
    mine, groups = dist.new_subgroups_by_enumeration(enumeration)
    total = torch.tensor([float(r + 1)], dtype=torch.float64)
    dist.all_reduce(total, group=mine)
    out.update({"enum_ranks": np.array(dist.get_process_group_ranks(mine)),
                "enum_sum": total.numpy(), "enum_groups": np.array(len(groups)),
                "new_groups": np.array(dist.get_pg_count() - before)})
    for name, call in (("too_big", lambda: dist.new_subgroups(group_size=n + 1)),
                       ("twice", lambda: dist.new_subgroups_by_enumeration([[0], [0]]))):
        try:
            call()
            out[name] = np.array("no error")
        except Exception as exc:
            out[name] = np.array(type(exc).__name__)
    out["complex"] = np.array([dist.supports_complex(op) for op in (
        dist.ReduceOp.SUM, dist.ReduceOp.MAX, dist.ReduceOp.PRODUCT, dist.ReduceOp.AVG)])
    return out


def monitored_barrier(torch, dist, r: int, n: int) -> dict:
    """On time, then with the last rank late: every rank raises (last: gloo may not recover)."""
    dist.monitored_barrier(timeout=timedelta(seconds=30))
    if r == n - 1:
        time.sleep(2.0)
    try:
        dist.monitored_barrier(timeout=timedelta(seconds=0.5))
        return {"late": np.array("no error")}
    except RuntimeError as exc:
        named = r != 0 or f"{n - 1}" in str(exc)
        return {"late": np.array(type(exc).__name__), "names_late_rank": np.array(named)}


def random_factories(torch, dist, r: int, n: int) -> dict:
    """kiln only (torch's DTensor rand has no RNG for CPU meshes): the pieces of one global
    draw, the test compares them with torch.rand/randn of the whole tensor."""
    dt = _module(torch, "distributed.tensor")
    mesh = dt.init_device_mesh("cpu", (n,))
    torch.manual_seed(1234)
    rows = dt.rand(7, 3, device_mesh=mesh, placements=[dt.Shard(0)])
    same = dt.randn(4, 5, dtype=torch.float64, device_mesh=mesh)
    cols = dt.randn(2, 5, device_mesh=mesh, placements=[dt.Shard(1)], requires_grad=True)
    return {"rows": rows.to_local().numpy(), "same": same.to_local().numpy(),
            "cols": cols.to_local().detach().numpy(), "cols_grad": np.array(cols.requires_grad),
            "rows_global": np.array(list(rows.global_shape))}


def nccl_fake(torch, dist, r: int, n: int) -> dict:
    """kiln only: all_to_all with uneven pieces and a batch_isend_irecv ring on cuda tensors
    through kiln's NCCL backend (one NCCL group each), over the stand-in NCCL of
    fake_nccl.py and the fake CUDA of tests/fake_cuda.py; the test compares them with torch's
    CPU results. Runs after the CPU checks: the fake CUDA patches kiln for the rest of the
    process."""
    import tests.fake_cuda
    tests.fake_cuda.install()
    from kiln.distributed import process_group as pg
    from kiln.distributed.nccl_backend import NCCLBackend
    from tests.distributed.fake_nccl import FakeNccl, FakeNcclCommunicator, fake_cupy
    nccl = FakeNccl()
    pg._WORLD.nccl = NCCLBackend(FakeNcclCommunicator(pg._WORLD.comm.Dup(), nccl), r, n, nccl,
                                 fake_cupy)
    inputs = [(torch.arange(r + j + 1, dtype=torch.float64) + 100 * r + 10 * j).cuda()
              for j in range(n)]
    outputs = [torch.zeros(j + r + 1, dtype=torch.float64).cuda() for j in range(n)]
    dist.all_to_all(outputs, inputs)
    right, left = (r + 1) % n, (r - 1) % n
    from_left = torch.zeros(4, dtype=torch.float64).cuda()
    from_right = torch.zeros(2, dtype=torch.int64).cuda()
    works = dist.batch_isend_irecv([
        dist.P2POp(dist.isend, (torch.arange(4, dtype=torch.float64) * (r + 1)).cuda(), right),
        dist.P2POp(dist.irecv, from_left, left),
        dist.P2POp(dist.isend, torch.tensor([r, 10 * r], dtype=torch.int64).cuda(), left, tag=3),
        dist.P2POp(dist.irecv, from_right, right, tag=3)])
    for work in works:
        work.wait()
    return {"all_to_all_uneven": np.concatenate([o.cpu().numpy() for o in outputs]),
            "from_left": from_left.cpu().numpy(), "from_right": from_right.cpu().numpy(),
            "devices": np.array(sorted({str(o.device) for o in outputs}))}


def errors(torch, dist, r: int, n: int) -> dict:
    """kiln only: the messages of wrong calls, each raised on every rank."""
    out = {}

    def record(name, call):
        try:
            call()
            out[name] = np.array("no error")
        except Exception as exc:
            out[name] = np.array(f"{type(exc).__name__}: {exc}")

    record("all_to_all_count", lambda: dist.all_to_all([torch.zeros(1)], [torch.zeros(1)] * n))
    record("all_to_all_sizes", lambda: dist.all_to_all(
        [torch.zeros(1) for _ in range(n)], [torch.zeros(1 + (r == 0)) for _ in range(n)]))
    record("splits_sum", lambda: dist.all_to_all_single(
        torch.zeros(2 * n), torch.zeros(2 * n), [1] * n, [3] * n))
    record("splits_mismatch", lambda: dist.all_to_all_single(
        torch.zeros(n + 1), torch.zeros(n + 1), [1] * (n - 1) + [2],
        [2] + [1] * (n - 1) if r == 0 else [1] * (n - 1) + [2]))
    record("all_to_all_dtypes", lambda: dist.all_to_all(
        [torch.zeros(1) for _ in range(n)], [torch.zeros(1, dtype=torch.float64)] * n))
    record("p2pop_op", lambda: dist.P2POp(dist.send, torch.zeros(1), 0))
    record("p2pop_peer", lambda: dist.batch_isend_irecv([dist.P2POp(dist.isend, torch.zeros(1),
                                                                    n)]))
    record("batch_empty", lambda: dist.batch_isend_irecv([]))
    record("gather_object_dst", lambda: dist.gather_object(r, None, dst=n))
    record("scatter_object_src", lambda: dist.scatter_object_list([None], None, src=-1))
    record("send_object_dst", lambda: dist.send_object_list([1], dst=n + 2))
    record("mixed_collectives", lambda: dist.all_to_all(
        [torch.zeros(1) for _ in range(n)], [torch.zeros(1) for _ in range(n)]) if r == 0
        else dist.all_reduce(torch.zeros(1)))
    record("gather_object_list", lambda: dist.gather_object(r, [None] * (n + 1), dst=r))
    record("scatter_object_output", lambda: dist.scatter_object_list([], [0] * n, src=r))
    record("coalesced_dtypes", lambda: dist.all_reduce_coalesced(
        [torch.zeros(1), torch.zeros(1, dtype=torch.float64)]))
    dt = _module(torch, "distributed.tensor")
    dcp = _module(torch, "distributed.checkpoint")
    mesh = dt.init_device_mesh("cpu", (n,))
    record("partial_product", lambda: dt.Partial("product"))
    record("factory_partial", lambda: dt.zeros(2, device_mesh=mesh, placements=[dt.Partial()]))
    record("save_partial", lambda: dcp.save(
        {"p": dt.DTensor.from_local(torch.ones(2), mesh, [dt.Partial()])},
        checkpoint_id=os.path.join(os.environ.get("TMPDIR", "/tmp"), f"kiln_partial_{r}")))
    sharded = torch.nn.Linear(2, 4)
    dt.distribute_module(sharded, mesh, lambda name, mod, m: mod.register_parameter(
        "weight", torch.nn.Parameter(dt.distribute_tensor(mod.weight, m, [dt.Shard(0)]))))
    record("sharded_forward", lambda: sharded(torch.ones(1, 2)))
    dist.barrier()
    return out


CHECKS = (all_to_all, all_to_all_uneven, all_to_all_single_splits, batch_p2p, objects,
          coalesced, dtensor_factories, partial, distribute_module, subgroups)


def run_checks(torch, dist, r: int, n: int, out_dir: str, prefix: str) -> None:
    results = {}
    kiln_only = (random_factories, errors) if prefix == "kiln" else ()
    last = (nccl_fake,) if prefix == "kiln" else ()
    for check in CHECKS + kiln_only + (file_store, checkpoint) + last + (monitored_barrier,):
        try:
            if check in (file_store, checkpoint):
                where = os.path.join(out_dir, f"{prefix}_{check.__name__}_{n}")
                got = check(torch, dist, r, n, where)
            else:
                got = check(torch, dist, r, n)
            results.update({f"{check.__name__}/{k}": v for k, v in got.items()})
        except Exception:
            results[f"error:{check.__name__}"] = np.array(traceback.format_exc())
    np.savez(os.path.join(out_dir, f"{prefix}_rank{r}_of{n}.npz"), **results)


def kiln_main(out_dir: str) -> None:
    sys.path.insert(0, ROOT)
    import kiln as torch
    import kiln.distributed as dist
    dist.init_process_group("gloo")
    run_checks(torch, dist, dist.get_rank(), dist.get_world_size(), out_dir, "kiln")
    dist.destroy_process_group()


def torch_rank(rank: int, world: int, out_dir: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint  # noqa: F401
    import torch.distributed.tensor  # noqa: F401
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/torch_init_{world}",
                            rank=rank, world_size=world)
    run_checks(torch, dist, rank, world, out_dir, "torch")
    os._exit(0)     # no teardown: a monitored_barrier that failed leaves gloo unable to


def torch_main(out_dir: str, world: int) -> None:
    import torch.multiprocessing as mp
    mp.start_processes(torch_rank, args=(world, out_dir), nprocs=world, start_method="fork")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "torch":
        torch_main(sys.argv[1], int(sys.argv[3]))
    else:
        kiln_main(sys.argv[1])
