"""`kiln.autograd`: gradients on demand, grad modes and gradient checking (torch.autograd)."""

from kiln.tracer.autograd import (GradcheckError, Node, backward, enable_grad, grad,  # noqa: F401
                                  gradcheck, inference_mode, is_grad_enabled, no_grad,
                                  set_grad_enabled)
from kiln.tracer.autograd import Node as Function  # noqa: F401
