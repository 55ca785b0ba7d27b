"""The torch.export tutorial: export modules, run each ExportedProgram through ep.module(),
read its graph_signature and state_dict, what export refuses (a data-dependent `if`, a Python
builtin on a tensor), torch.cond for data-dependent branches, dynamic shapes with `Dim`
(bounds, a size shared by two inputs, a size guarded by an `if`), calls outside the exported
shapes refused, and save/load of the program through a file object."""
import io

import torch
import torch.nn.functional as F
from torch.export import Dim, export


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(12, 6)

    def forward(self, a, b):
        return F.relu(self.proj(a * b), inplace=True)


class DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return torch.sin(x)
        return torch.cos(x)


class BuiltinOnTensor(torch.nn.Module):
    def forward(self, x):
        x = x + 1
        return x + id(x)


class WithCond(torch.nn.Module):
    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda t: torch.sin(t), lambda t: torch.cos(t), [x])


class CropRelu(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x[:, 2:])


class Product(torch.nn.Module):
    def forward(self, x, y):
        return x @ y


class Guarded(torch.nn.Module):
    def forward(self, x, y):
        if x.shape[0] <= 16:
            return x @ y[:, :16]
        return y


def outcome(fn, *args, **kwargs):
    """'ran' or 'raised': the tutorial prints the traceback, the program notes the outcome."""
    try:
        fn(*args, **kwargs)
        return "ran"
    except Exception:
        return "raised"


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    values = {}
    block = Block()
    if initial_state is not None:
        block.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in block.state_dict().items()}
    a, b = torch.randn(5, 12), torch.randn(5, 12)
    ep = export(block, (a, b))
    runner = ep.module()            # an ExportedProgram runs through its unlifted module
    values["ep_out"] = runner(a, b)
    values["ep_out_new"] = runner(b, a + 1)
    values["ep_matches_module"] = bool(torch.allclose(runner(a, b), block(a, b)))
    sig = ep.graph_signature
    values["user_inputs"] = ",".join(sig.user_inputs)
    values["param_inputs"] = ",".join(sig.parameters)
    values["state_keys"] = ",".join(sorted(ep.state_dict))
    values["gm_is_module"] = isinstance(ep.graph_module, torch.nn.Module)
    values["ep_not_module"] = isinstance(ep, torch.nn.Module)
    values["runner_is_module"] = isinstance(runner, torch.nn.Module)
    values["runner_keys"] = ",".join(sorted(runner.state_dict()))

    values["bad_if"] = outcome(export, DataDependent(), (torch.randn(3, 3),))
    values["bad_builtin"] = outcome(export, BuiltinOnTensor(), (torch.randn(3, 3),))

    ep_cond = export(WithCond(), (torch.randn(3, 3),))
    values["cond_pos"] = ep_cond.module()(torch.ones(3, 3))
    values["cond_neg"] = ep_cond.module()(-torch.ones(3, 3))

    values["wrong_shape"] = outcome(runner, torch.randn(7, 12), torch.randn(7, 12))

    x1 = torch.randn(10, 10, 2)
    d0, d1 = Dim("x_dim0"), Dim("x_dim1", min=4, max=18)
    ep1 = export(CropRelu(), (x1,), dynamic_shapes={"x": {0: d0, 1: d1}}).module()
    probe = torch.randn(5, 5, 2)
    values["dyn_small"] = ep1(probe)
    values["dyn_below_min"] = outcome(ep1, torch.randn(8, 1, 2))
    values["dyn_above_max"] = outcome(ep1, torch.randn(8, 20, 2))
    values["dyn_static_dim"] = outcome(ep1, torch.randn(8, 8, 3))
    bad_bounds = {"x": {0: d0, 1: Dim("x_dim1_bad", min=11, max=18)}}
    values["example_outside_bounds"] = outcome(export, CropRelu(), (x1,),
                                               dynamic_shapes=bad_bounds)

    inner = Dim("inner")
    ep2 = export(Product(), (torch.randn(4, 8), torch.randn(8, 2)),
                 dynamic_shapes={"x": {0: Dim("rows"), 1: inner},
                                 "y": {0: inner, 1: Dim("cols")}}).module()
    p, q = torch.randn(2, 16), torch.randn(16, 4)
    values["shared_dim"] = ep2(p, q)
    values["shared_dim_mismatch"] = outcome(ep2, torch.randn(4, 8), torch.randn(4, 2))

    shared = Dim("shared")
    fixed = {"x": {0: Dim("x0", max=16), 1: shared}, "y": {0: shared, 1: Dim("y1", min=17)}}
    ep3 = export(Guarded(), (torch.randn(8, 16), torch.randn(16, 32)),
                 dynamic_shapes=fixed).module()
    values["guarded"] = ep3(torch.randn(4, 32), torch.randn(32, 64))

    buffer = io.BytesIO()
    torch.export.save(ep, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    values["loaded_out"] = loaded.module()(a, b)
    return {"losses": [], "values": values, "initial_state": initial}
