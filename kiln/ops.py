"""`kiln.ops`: the tracer's vocabulary that `kiln.nn.functional` builds on (torch.ops's role).

`nn`, `optim` and `utils` use only the public API (DESIGN.md); the public tensor functions
(`kiln.add`, `Tensor.reshape`, ...) cover nearly all they need. What they need beyond it comes
through this one module, so that door stays visible: the primitives by name
(`kiln.ops.prims.unfold(x, kernel=..., stride=..., dilation=...)`, as `torch.ops.prims`), the
core composites nn.functional re-exports under PyTorch's names, index lookups that report the
op the user called, `op_error` for messages that name the op and the user's line (`user_stacklevel` for
warnings), and
`apply_nn_grad_names` (PyTorch's grad_fn names for nn.functional's composites),
`install_autocast` (autocast's cast policy on the ops its tables name) and `with_out` (`out=`
by PyTorch's rules, on the forms that take it). `kiln.ops.profiler`
is torch.ops.profiler's pair of range calls; `kiln.ops.op_hooks` tells an observer of every
op dispatched (kiln.utils.flop_counter counts FLOPs with it). `kiln.ops.aten` is torch.ops.aten
(the OpOverloads a TorchDispatchMode is handed) and `kiln.ops.dispatch_mode` the mode stack
kiln.utils._python_dispatch pushes onto.
"""

from kiln.ir.ops import P as prims  # noqa: F401
from kiln.profiler import ops as profiler  # noqa: F401
from kiln.profiler import op_hooks  # noqa: F401  (observers of dispatched ops: flop_counter)  (every primitive, called through the dispatcher)
from kiln.tracer.errors import op_error, user_stacklevel  # noqa: F401
from kiln.op_overloads import aten  # noqa: F401  (torch.ops.aten: ATen's names for primitives)
from kiln.tracer import dispatch_mode  # noqa: F401  (TorchDispatchMode's stack, per thread)
from kiln.tracer import dispatch_subclass  # noqa: F401  (wrapper subclasses' __torch_dispatch__)
from kiln.tracer.functional import (  # noqa: F401
    elu, gelu, hardsigmoid, hardswish, hardtanh, leaky_relu, logsigmoid, mish, one_hot, pad,
    relu, relu6, select_rows, selu, silu, softmin, softplus, softsign, tanhshrink)
from kiln.tracer.functional import _gather as gather_along  # noqa: F401
from kiln.tracer.functional.common import refuse_integers, refuse_without_kernel  # noqa: F401
from kiln.tracer.functional.indexing import (check_bounds_later, check_indices,  # noqa: F401
                                           check_values)
from kiln.tracer.functional.pooling import eager_max_pool2d  # noqa: F401
from kiln.tracer.grad_names import apply_nn_names as apply_nn_grad_names  # noqa: F401
from kiln.tracer.autocast import install as install_autocast  # noqa: F401
from kiln.tracer.sparse import make as sparse_from_parts  # noqa: F401  (sparse gradients)
from kiln.tracer.strides import numpy_layouts  # noqa: F401  (a composite's own intermediates)
from kiln.torch_namespace import with_out  # noqa: F401  (out= by PyTorch's rules)


def __getattr__(name: str):
    """`kiln.ops.<namespace>`: the operators kiln.library defined there (torch.ops.mylib)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from kiln import library
    return library.namespace(name)
