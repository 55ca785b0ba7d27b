"""`kiln.autograd.function`: where torch keeps Function, FunctionCtx and once_differentiable."""

from kiln.tracer.custom_function import (Function, FunctionCtx, once_differentiable)  # noqa: F401

BackwardCFunction = FunctionCtx
