"""The torch.func "Neural Tangent Kernels" tutorial: a small CNN as a function of its
parameters (functional_call on one unsqueezed input), the empirical NTK by Jacobian contraction
(vmap(jacrev(fnet_single), (None, 0)), .values(), flatten(2), einsum 'Naf,Mbf->NMab' and its
trace and diagonal forms) and by NTK-vector products (vjp, then jvp of the vjp, vmapped over
the identity basis and nested vmap over both batches, einsum 'NMKK->NM'). Weights and data
come from NumPy (float64, so the two methods agree tightly)."""
import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap


class CNN(nn.Module):
    def __init__(self):
        super(CNN, self).__init__()
        self.conv1 = nn.Conv2d(2, 3, (3, 3))
        self.conv2 = nn.Conv2d(3, 3, (3, 3))
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        x = self.conv1(x)
        x = x.relu()
        x = self.conv2(x)
        x = x.relu()
        x = x.flatten(1)
        x = self.fc(x)
        return x


def empirical_ntk_jacobian_contraction(fnet_single, params, x1, x2, compute="full"):
    jac1 = vmap(jacrev(fnet_single), (None, 0))(params, x1)
    jac1 = jac1.values()
    jac1 = [j.flatten(2) for j in jac1]
    jac2 = vmap(jacrev(fnet_single), (None, 0))(params, x2)
    jac2 = jac2.values()
    jac2 = [j.flatten(2) for j in jac2]
    einsum_expr = None
    if compute == "full":
        einsum_expr = "Naf,Mbf->NMab"
    elif compute == "trace":
        einsum_expr = "Naf,Maf->NM"
    elif compute == "diagonal":
        einsum_expr = "Naf,Maf->NMa"
    else:
        assert False
    result = torch.stack([torch.einsum(einsum_expr, j1, j2) for j1, j2 in zip(jac1, jac2)])
    result = result.sum(0)
    return result


def empirical_ntk_ntk_vps(func, params, x1, x2, compute="full"):
    def get_ntk(x1, x2):
        def func_x1(params):
            return func(params, x1)

        def func_x2(params):
            return func(params, x2)

        output, vjp_fn = vjp(func_x1, params)

        def get_ntk_slice(vec):
            vjps = vjp_fn(vec)
            _, jvps = jvp(func_x2, (params,), vjps)
            return jvps

        basis = torch.eye(output.numel(), dtype=output.dtype,
                          device=output.device).view(output.numel(), -1)
        return vmap(get_ntk_slice)(basis)

    result = vmap(vmap(get_ntk, (None, 0)), (0, None))(x1, x2)
    if compute == "full":
        return result
    if compute == "trace":
        return torch.einsum("NMKK->NM", result)
    if compute == "diagonal":
        return torch.einsum("NMKK->NMK", result)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = "cpu"
    x_train = torch.from_numpy(rng.standard_normal((4, 2, 6, 6))).to(device)
    x_test = torch.from_numpy(rng.standard_normal((2, 2, 6, 6))).to(device)
    net = CNN().to(device).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, tuple(p.shape))))
    params = {k: v.detach() for k, v in net.named_parameters()}

    def fnet_single(params, x):
        return functional_call(net, params, (x.unsqueeze(0),)).squeeze(0)

    values = {}
    result = empirical_ntk_jacobian_contraction(fnet_single, params, x_train, x_test)
    values["ntk_full"] = result
    values["ntk_trace"] = empirical_ntk_jacobian_contraction(fnet_single, params, x_train,
                                                             x_test, "trace")
    values["ntk_diagonal"] = empirical_ntk_jacobian_contraction(fnet_single, params, x_train,
                                                                x_test, "diagonal")
    result_from_jacobian_contraction = empirical_ntk_jacobian_contraction(
        fnet_single, params, x_test, x_train)
    result_from_ntk_vps = empirical_ntk_ntk_vps(fnet_single, params, x_test, x_train)
    values["ntk_vps"] = result_from_ntk_vps
    values["methods_agree"] = torch.allclose(result_from_jacobian_contraction,
                                             result_from_ntk_vps, atol=1e-5)
    values["ntk_vps_trace"] = empirical_ntk_ntk_vps(fnet_single, params, x_test, x_train,
                                                    "trace")
    return {"losses": [], "values": values}


if __name__ == "__main__":
    print(main())
