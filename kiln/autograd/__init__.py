"""`kiln.autograd`: gradients on demand, grad modes, custom Functions and gradient checking
(torch.autograd)."""

from kiln.tracer.autograd import (GradcheckError, Node, backward, enable_grad, grad,  # noqa: F401
                                  gradcheck, inference_mode, is_grad_enabled, no_grad,
                                  set_grad_enabled)
from kiln.tracer.custom_function import (Function, FunctionCtx, Variable,  # noqa: F401
                                         detect_anomaly, set_detect_anomaly, once_differentiable)
from kiln.autograd import function, functional  # noqa: F401,E402
from kiln.autograd import graph  # noqa: F401,E402
from kiln.autograd import forward_ad  # noqa: F401,E402
from kiln.tracer.creation import tensor as _tensor


def variable(*args, **kwargs):
    """`torch.autograd.variable` is `torch.tensor` (a deprecated spelling)."""
    return _tensor(*args, **kwargs)


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


def __getattr__(name: str):
    """`kiln.autograd.profiler` (torch.autograd.profiler's spelling), loaded on first use."""
    if name == "profiler":
        from kiln.profiler import legacy
        return legacy
    raise AttributeError(f"module 'kiln.autograd' has no attribute '{name}'")
