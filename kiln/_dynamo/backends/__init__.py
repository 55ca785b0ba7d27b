"""torch._dynamo.backends: `common.aot_autograd` and `debugging.get_nop_func`, the pieces of
PyTorch's backend registry that tutorials build backends from."""

from kiln._dynamo.backends import common, debugging  # noqa: F401
