"""PyTorch's grad_fn names for composite ops.

A composite's output node is its last primitive's (`mean` ends in a `div`), so its grad_fn
would print as DivBackward0 where PyTorch prints MeanBackward0. `named` wraps a composite so
that its output's node carries PyTorch's name; `apply_names` installs the wrappers on the
modules and on Tensor. Only the name changes: the node and its gradient rule are the same.
"""

from __future__ import annotations

import functools
import sys

from kiln.tracer.tensor import Tensor


def named(fn, name):
    """`fn` whose tensor result's grad_fn reports `name` (a string, or a function of the
    call's args and kwargs giving one)."""
    if getattr(fn, "_grad_name", None) is not None:
        return fn

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        node = getattr(out, "grad_fn", None) if isinstance(out, Tensor) else None
        if node is not None and hasattr(type(node), "label"):
            node.label = name(args, kwargs) if callable(name) else name
        return out
    wrapper._grad_name = name
    return wrapper


def _dim_given(args, kwargs) -> bool:
    return len(args) > 1 and args[1] is not None or kwargs.get("dim") is not None


def _mean_name(args, kwargs):
    return "MeanBackward1" if _dim_given(args, kwargs) else "MeanBackward0"


def _sum_name(args, kwargs):
    return "SumBackward1" if _dim_given(args, kwargs) else "SumBackward0"


def _linear_name(args, kwargs):
    # PyTorch's linear is addmm on a matrix, mm/matmul without a bias, and for other ranks a
    # view (or squeeze) of the 2-d product
    x = args[0] if args else kwargs.get("input")
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    ndim = getattr(x, "ndim", 2)
    if bias is not None:
        return "AddmmBackward0" if ndim == 2 else "ViewBackward0"
    return {1: "SqueezeBackward4", 2: "MmBackward0"}.get(ndim, "UnsafeViewBackward0")


def _pow_name(args, kwargs):
    # PyTorch names pow by which operands are tensors: (tensor, number), both, (number, tensor)
    base = args[0] if args else kwargs.get("input", kwargs.get("self"))
    exponent = args[1] if len(args) > 1 else kwargs.get("exponent")
    if not isinstance(base, Tensor):
        return "PowBackward2"
    return "PowBackward1" if isinstance(exponent, Tensor) else "PowBackward0"


# function name -> PyTorch's node name, for the tensor ops (functional and Tensor methods)
TENSOR_OPS = {"mean": _mean_name, "softmax": "SoftmaxBackward0",
              "log_softmax": "LogSoftmaxBackward0", "var": "VarBackward0",
              "std": "StdBackward0", "logsumexp": "LogsumexpBackward0",
              "unfold": "UnfoldBackward0", "clone": "CloneBackward0",
              # x ** 2 and square are a multiply in kiln (autogradqs tutorial: PowBackward0)
              "pow": _pow_name, "square": "PowBackward0"}
# and for Tensor's operators alone
TENSOR_OPERATORS = {"__pow__": _pow_name, "__rpow__": "PowBackward2"}
# and for nn.functional
NN_OPS = {"softmax": "SoftmaxBackward0", "log_softmax": "LogSoftmaxBackward0",
          "nll_loss": "NllLossBackward0", "cross_entropy": "NllLossBackward0",
          "mse_loss": "MseLossBackward0", "l1_loss": "MeanBackward0",
          "binary_cross_entropy": "BinaryCrossEntropyBackward0",
          "binary_cross_entropy_with_logits": "BinaryCrossEntropyWithLogitsBackward0",
          "smooth_l1_loss": "SmoothL1LossBackward0", "huber_loss": "HuberLossBackward0",
          "gelu": "GeluBackward0", "silu": "SiluBackward0", "leaky_relu": "LeakyReluBackward0",
          "elu": "EluBackward0", "softplus": "SoftplusBackward0", "mish": "MishBackward0",
          "hardtanh": "HardtanhBackward0", "hardswish": "HardswishBackward0",
          "hardsigmoid": "HardsigmoidBackward0", "layer_norm": "NativeLayerNormBackward0",
          "logsigmoid": "LogSigmoidBackward0",
          # the layers whose outputs tutorials print (`grad_fn=<AddmmBackward0>`)
          "linear": _linear_name, "batch_norm": "NativeBatchNormBackward0",
          "conv1d": "ConvolutionBackward0", "conv2d": "ConvolutionBackward0",
          "conv3d": "ConvolutionBackward0", "conv_transpose1d": "ConvolutionBackward0",
          "conv_transpose2d": "ConvolutionBackward0", "conv_transpose3d": "ConvolutionBackward0",
          "embedding": "EmbeddingBackward0", "max_pool2d": "MaxPool2DWithIndicesBackward0",
          "max_pool3d": "MaxPool3DWithIndicesBackward0", "avg_pool2d": "AvgPool2DBackward0"}


def apply_names(kiln_module, functional_module, nn_functional_module=None) -> None:
    for name, label in TENSOR_OPS.items():
        # and the family module that defines it, whose own callers then get the name too
        # (`var_mean` returns var's and mean's results)
        home = sys.modules.get(getattr(getattr(functional_module, name, None), "__module__", ""))
        for owner in (functional_module, kiln_module) + ((home,) if home is not None else ()):
            if hasattr(owner, name):
                setattr(owner, name, named(getattr(owner, name), label))
        if hasattr(Tensor, name):
            setattr(Tensor, name, named(getattr(Tensor, name), label))
    for name, label in TENSOR_OPERATORS.items():
        setattr(Tensor, name, named(getattr(Tensor, name), label))
    if nn_functional_module is not None:
        apply_nn_names(nn_functional_module)


def apply_nn_names(nn_functional_module) -> None:
    """PyTorch's grad_fn names on nn.functional's composites (it calls this once, when built)."""
    for name, label in NN_OPS.items():
        if hasattr(nn_functional_module, name):
            setattr(nn_functional_module, name, named(getattr(nn_functional_module, name),
                                                      label))
