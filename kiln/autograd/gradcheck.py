"""`torch.autograd.gradcheck` as an importable module (`from torch.autograd.gradcheck import
gradcheck`): finite-difference checks of first and second derivatives."""

from kiln.tracer.autograd import GradcheckError, enable_grad, grad, gradcheck  # noqa: F401


def gradgradcheck(func, inputs, grad_outputs=None, *, eps: float = 1e-6, atol: float = 1e-5,
                  rtol: float = 1e-3, raise_exception: bool = True) -> bool:
    """Finite-difference check of second derivatives: gradcheck of the first gradients (taken
    with create_graph=True against `grad_outputs`, ones by default)."""
    inputs = (inputs,) if not isinstance(inputs, (tuple, list)) else tuple(inputs)
    import kiln

    def first(*xs):
        with enable_grad():
            out = func(*xs)
            outs = (out,) if not isinstance(out, (tuple, list)) else tuple(out)
            seeds = grad_outputs or [kiln.ones_like(o) for o in outs]
            return grad(list(outs), list(xs), list(seeds), create_graph=True, allow_unused=True)
    return gradcheck(first, list(inputs), eps=eps, atol=atol, rtol=rtol)
