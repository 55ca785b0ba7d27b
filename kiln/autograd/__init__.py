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
from kiln.overrides import (handle_torch_function, has_torch_function,  # noqa: F401,E402
                            is_tensor_like)
from kiln.tracer.creation import tensor as _tensor


def variable(*args, **kwargs):
    """`torch.autograd.variable` is `torch.tensor` (a deprecated spelling)."""
    return _tensor(*args, **kwargs)


def __getattr__(name: str):
    """`kiln.autograd.profiler` (torch.autograd.profiler's spelling), loaded on first use."""
    if name == "profiler":
        import importlib
        return importlib.import_module("kiln.autograd.profiler")
    raise AttributeError(f"module 'kiln.autograd' has no attribute '{name}'")


# torch.autograd.gradcheck is a module too (`from torch.autograd.gradcheck import gradcheck`):
# loading it binds the package's name `gradcheck` to the module, which the function takes back
import kiln.autograd.gradcheck  # noqa: E402,F401
from kiln.autograd.gradcheck import gradcheck, gradgradcheck  # noqa: E402,F811
