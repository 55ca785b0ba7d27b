"""`torch.autograd.gradcheck` as an importable module (`from torch.autograd.gradcheck import
gradcheck`): finite-difference checks of first and second derivatives."""

from kiln.tracer.autograd import GradcheckError, enable_grad, grad, gradcheck  # noqa: F401


def gradgradcheck(func, inputs, grad_outputs=None, *, eps: float = 1e-6, atol: float = 1e-5,
                  rtol: float = 1e-3, gen_non_contig_grad_outputs: bool = False,
                  raise_exception: bool = True, nondet_tol: float = 0.0,
                  check_undefined_grad: bool = True, check_grad_dtypes: bool = False,
                  check_batched_grad: bool = False, check_fwd_over_rev: bool = False,
                  check_rev_over_rev: bool = True, fast_mode: bool = False,
                  masked: bool = False) -> bool:
    """Finite-difference check of second derivatives, as PyTorch's: gradcheck of the first
    gradients, taken with create_graph=True against `grad_outputs`, as a function of the inputs
    and of the `grad_outputs` that require grad. Without `grad_outputs`, each differentiable
    output gets a random one drawn as torch.testing.make_tensor draws it (uniform in [-1, 1),
    requiring grad), so the global generator advances as PyTorch's does."""
    import kiln
    from kiln.testing import make_tensor
    inputs = (inputs,) if isinstance(inputs, kiln.Tensor) else tuple(inputs)
    if grad_outputs is None:
        outs = func(*inputs)
        outs = (outs,) if isinstance(outs, kiln.Tensor) else tuple(outs)
        grad_outputs = tuple(
            make_tensor(o.shape, dtype=o.dtype if o.is_floating_point() or o.is_complex()
                        else kiln.float64, device=o.device, low=-1, high=1, requires_grad=True,
                        noncontiguous=gen_non_contig_grad_outputs)
            for o in outs if isinstance(o, kiln.Tensor) and o.requires_grad)
    else:
        grad_outputs = (grad_outputs,) if isinstance(grad_outputs, kiln.Tensor) \
            else tuple(grad_outputs)
    n = len(grad_outputs)

    def first(*args):
        with enable_grad():
            outs = func(*args[:len(args) - n])
            outs = (outs,) if isinstance(outs, kiln.Tensor) else tuple(outs)
            outs = [o for o in outs if isinstance(o, kiln.Tensor) and o.requires_grad]
            wrt = [x for x in args[:len(args) - n] if isinstance(x, kiln.Tensor)
                   and x.requires_grad]
            grads = grad(outs, wrt, list(args[len(args) - n:]), create_graph=True,
                         allow_unused=True)
            return tuple(g for g in grads if g is not None)
    return gradcheck(first, inputs + grad_outputs, eps=eps, atol=atol, rtol=rtol,
                     raise_exception=raise_exception, nondet_tol=nondet_tol,
                     check_undefined_grad=check_undefined_grad,
                     check_grad_dtypes=check_grad_dtypes, check_batched_grad=check_batched_grad,
                     fast_mode=fast_mode, check_forward_ad=check_fwd_over_rev,
                     check_backward_ad=check_rev_over_rev, masked=masked)
