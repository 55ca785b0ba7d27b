"""Forward-mode AD tutorial: dual tensors under `fwAD.dual_level()` (make_dual / unpack_dual,
a tangent kept as is or copied for another layout), a module's parameters swapped for dual
tensors, `functional_call` with dual parameters, a custom Function with `jvp`, gradcheck of
forward AD, and the functorch API (`functorch.jvp`, `make_functional_with_buffers`); then a
small regression trained with the directional derivatives checked along the way."""
import functools
import warnings

import functorch as ft
import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
from torch.func import functional_call


def fn(x, y):
    return x ** 2 + y ** 2


class Exp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, foo):
        result = torch.exp(foo)
        ctx.result = result
        return result

    @staticmethod
    def jvp(ctx, gI):
        gO = gI * ctx.result
        del ctx.result
        return gO


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    values = {}
    primal = torch.from_numpy(rng.normal(size=(4, 4)).astype(np.float32))
    tangent = torch.from_numpy(rng.normal(size=(4, 4)).astype(np.float32))
    plain = torch.from_numpy(rng.normal(size=(4, 4)).astype(np.float32))
    with fwAD.dual_level():
        dual_input = fwAD.make_dual(primal, tangent)
        values["tangent_kept"] = fwAD.unpack_dual(dual_input).tangent is tangent
        dual_alt = fwAD.make_dual(primal, tangent.T)
        values["tangent_copied"] = fwAD.unpack_dual(dual_alt).tangent is not tangent
        dual_output = fn(dual_input, plain)
        values["jvp_fn"] = fwAD.unpack_dual(dual_output).tangent
    values["tangent_gone"] = fwAD.unpack_dual(dual_output).tangent is None

    model = nn.Linear(5, 3)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.from_numpy(rng.normal(size=(16, 5)).astype(np.float32))
    params = {name: p for name, p in model.named_parameters()}
    tangents = {name: torch.ones_like(p) * 0.1 for name, p in params.items()}
    with fwAD.dual_level():
        dual_params = {name: fwAD.make_dual(p, tangents[name]) for name, p in params.items()}
        jvp_call = fwAD.unpack_dual(functional_call(model, dual_params, x)).tangent
    values["jvp_functional_call"] = jvp_call

    probe = nn.Linear(5, 3)
    probe.load_state_dict(model.state_dict())
    with fwAD.dual_level():
        for name, p in dict(probe.named_parameters()).items():
            delattr(probe, name)
            setattr(probe, name, fwAD.make_dual(p.detach(), tangents[name]))
        jvp_module = fwAD.unpack_dual(probe(x)).tangent
    values["module_matches_call"] = bool(torch.allclose(jvp_module, jvp_call))

    p64 = torch.from_numpy(rng.normal(size=(3, 3))).requires_grad_()
    with fwAD.dual_level():
        out = Exp.apply(fwAD.make_dual(p64, torch.ones(3, 3, dtype=torch.double)))
        values["jvp_custom"] = fwAD.unpack_dual(out).tangent
    values["gradcheck"] = torch.autograd.gradcheck(
        Exp.apply, (p64,), check_forward_ad=True, check_backward_ad=False,
        check_undefined_grad=False, check_batched_grad=False)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        _, values["ft_jvp"] = ft.jvp(fn, (primal, plain), (tangent, tangent))
        new_fn = functools.partial(fn, y=plain)
        _, values["ft_jvp_partial"] = ft.jvp(new_fn, (primal,), (tangent,))
        func, f_params, buffers = ft.make_functional_with_buffers(model)
        f_tangents = tuple(torch.ones_like(p) * 0.1 for p in f_params)
        _, values["ft_jvp_model"] = ft.jvp(lambda ps: func(ps, buffers, x), (f_params,),
                                           (f_tangents,))

    target = torch.from_numpy(rng.normal(size=(16, 3)).astype(np.float32))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def train_step(xb, yb):
        optimizer.zero_grad()
        loss = ((model(xb) - yb) ** 2).mean()
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = [train_step(x, target).item() for _ in range(6)]
    return {"losses": losses, "values": values, "initial_state": initial}


if __name__ == "__main__":
    print(main())
