"""The torch.func "Jacobians, Hessians, hvp, vhp, and more" tutorial: a Jacobian row by row
with torch.autograd.grad and unit vectors, then vmap(vjp_fn), jacrev (argnums=2 and (0, 1)),
jacfwd, hessian against jacfwd(jacfwd) and jacrev(jacrev), batch Jacobians by vmap(jacrev)
and by the summed-output trick with movedim, batch Hessians by vmap(hessian), Hessian-vector
products by jvp(grad) and by vjp(grad), and torch.autograd.functional's hvp, vhp, jacobian and
hessian; Timer from torch.utils.benchmark. Data come from NumPy (float64, so the comparisons
are tight)."""
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vjp, vmap
from torch.utils.benchmark import Timer


def predict(weight, bias, x):
    return F.linear(x, weight, bias).tanh()


def main(seed=0, compile=False, initial_state=None):
    _ = torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    def randn(*shape):
        return torch.from_numpy(rng.standard_normal(shape))

    values = {}
    D = 6
    weight, bias, x = randn(D, D), randn(D), randn(D)

    def compute_jac(xp):
        jacobian_rows = [torch.autograd.grad(predict(weight, bias, xp), xp, vec)[0]
                         for vec in unit_vectors]
        return torch.stack(jacobian_rows)

    xp = x.clone().requires_grad_()
    unit_vectors = torch.eye(D, dtype=torch.float64)
    jacobian = compute_jac(xp)
    values["jacobian"] = jacobian

    _, vjp_fn = vjp(partial(predict, weight, bias), x)
    ft_jacobian, = vmap(vjp_fn)(unit_vectors)
    values["vmap_vjp_matches"] = torch.allclose(ft_jacobian, jacobian)
    ft_jacobian = jacrev(predict, argnums=2)(weight, bias, x)
    values["jacrev_matches"] = torch.allclose(ft_jacobian, jacobian)

    without_vmap = Timer(stmt="compute_jac(xp)", globals=locals())
    with_vmap = Timer(stmt="jacrev(predict, argnums=2)(weight, bias, x)",
                      globals=dict(jacrev=jacrev, predict=predict, weight=weight, bias=bias,
                                   x=x))
    values["timed"] = without_vmap.timeit(3).times[0] > 0 and with_vmap.timeit(3).times[0] > 0

    ft_jac_weight, ft_jac_bias = jacrev(predict, argnums=(0, 1))(weight, bias, x)
    values["jac_weight"], values["jac_bias"] = ft_jac_weight, ft_jac_bias

    Din, Dout = 3, 7                      # taller than wide, then wider than tall
    weight, bias, x = randn(Dout, Din), randn(Dout), randn(Din)
    values["jacfwd_tall"] = jacfwd(predict, argnums=2)(weight, bias, x)
    values["jacrev_tall"] = jacrev(predict, argnums=2)(weight, bias, x)
    Din, Dout = 7, 3
    weight, bias, x = randn(Dout, Din), randn(Dout), randn(Din)
    values["jacfwd_wide"] = jacfwd(predict, argnums=2)(weight, bias, x)
    values["jacrev_wide"] = jacrev(predict, argnums=2)(weight, bias, x)

    Din, Dout = 5, 3
    weight, bias, x = randn(Dout, Din), randn(Dout), randn(Din)
    hess_api = hessian(predict, argnums=2)(weight, bias, x)
    hess_fwdfwd = jacfwd(jacfwd(predict, argnums=2), argnums=2)(weight, bias, x)
    hess_revrev = jacrev(jacrev(predict, argnums=2), argnums=2)(weight, bias, x)
    values["hess_api"] = hess_api
    values["hess_fwdfwd_matches"] = torch.allclose(hess_api, hess_fwdfwd)
    values["hess_revrev_matches"] = torch.allclose(hess_api, hess_revrev)

    batch_size, Din, Dout = 4, 3, 5
    weight, bias, x = randn(Dout, Din), randn(Dout), randn(batch_size, Din)
    compute_batch_jacobian = vmap(jacrev(predict, argnums=2), in_dims=(None, None, 0))
    batch_jacobian0 = compute_batch_jacobian(weight, bias, x)

    def predict_with_output_summed(weight, bias, x):
        return predict(weight, bias, x).sum(0)

    batch_jacobian1 = jacrev(predict_with_output_summed, argnums=2)(weight, bias,
                                                                    x).movedim(1, 0)
    values["batch_jacobian"] = batch_jacobian0
    values["batch_jacobian_sum_trick_matches"] = torch.allclose(batch_jacobian0,
                                                                 batch_jacobian1)
    compute_batch_hessian = vmap(hessian(predict, argnums=2), in_dims=(None, None, 0))
    batch_hess = compute_batch_hessian(weight, bias, x)
    values["batch_hess"] = batch_hess
    values["batch_hess_shape"] = str(tuple(batch_hess.shape))

    def hvp(f, primals, tangents):
        return jvp(grad(f), primals, tangents)[1]

    def f(x):
        return x.sin().sum()

    x, tangent = randn(16), randn(16)
    result = hvp(f, (x,), (tangent,))

    def hvp_revrev(f, primals, tangents):
        _, vjp_fn = vjp(grad(f), *primals)
        return vjp_fn(*tangents)

    result_hvp_revrev = hvp_revrev(f, (x,), (tangent,))
    values["hvp"] = result
    values["hvp_revrev_matches"] = torch.allclose(result, result_hvp_revrev[0])

    # torch.autograd.functional: the same quantities without function transforms
    def g(a, b):
        return (a.tanh() * b.exp()).sum() + (a * b).pow(2).sum()

    a, b, va, vb = randn(4), randn(4), randn(4), randn(4)
    out, (hv_a, hv_b) = torch.autograd.functional.hvp(g, (a, b), (va, vb))
    _, (vh_a, vh_b) = torch.autograd.functional.vhp(g, (a, b), (va, vb))
    values["af_out"], values["af_hvp_a"], values["af_hvp_b"] = out, hv_a, hv_b
    values["af_vhp_a"], values["af_vhp_b"] = vh_a, vh_b
    _, hv_single = torch.autograd.functional.hvp(f, x, tangent)
    values["af_hvp_single"] = hv_single
    values["af_hvp_matches_func"] = torch.allclose(hv_single, result)
    values["af_jacobian"] = torch.autograd.functional.jacobian(partial(predict, weight, bias),
                                                               x[:3])
    values["af_hessian"] = torch.autograd.functional.hessian(g, (a, b))[0][1]
    return {"losses": [], "values": values}


if __name__ == "__main__":
    print(main())
