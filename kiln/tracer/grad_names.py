"""PyTorch's grad_fn names for composite ops.

A composite's output node is its last primitive's (`mean` ends in a `div`), so its grad_fn
would print as DivBackward0 where PyTorch prints MeanBackward0. `named` wraps a composite so
that its output's node carries PyTorch's name; `apply_names` installs the wrappers on the
modules and on Tensor. Only the name changes: the node and its gradient rule are the same.
"""

from __future__ import annotations

import functools
import sys

from kiln.tracer.autograd import Node, renamable, set_name
from kiln.tracer.tensor import Tensor


def named(fn, name, shown=None):
    """`fn` whose tensor result's grad_fn reports `name` (a string, or a function of the
    call's args and kwargs giving one) and, with `shown(args, kwargs, node)`, lists those
    edges as its `next_functions`: the composite's own inputs, as PyTorch's single node has
    them, rather than the inner primitives' (the backward itself runs the inner graph)."""
    if getattr(fn, "_grad_name", None) is not None:
        return fn

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        node = getattr(out, "grad_fn", None) if isinstance(out, Tensor) else None
        if node is not None and renamable(node):
            set_name(node, name(args, kwargs) if callable(name) else name)
            edges = shown(args, kwargs, node) if shown is not None else None
            # (an in-place form's input is the node itself now: its inner nodes are shown)
            if edges is not None and all(e is not node for e in edges):
                node.shown = edges
        return out
    wrapper._grad_name = name
    return wrapper


def _edge(t):
    return None if not isinstance(t, Tensor) else t.grad_fn if t.grad_fn is not None else (
        t if t.requires_grad else None)


def _float_inputs(args, kwargs, node):
    """The edges of the floating-point tensor arguments, in order (PyTorch's node lists its
    differentiable inputs; an integer target or index has none)."""
    return [_edge(a) for a in list(args) + list(kwargs.values())
            if isinstance(a, Tensor) and (a.dtype.is_floating_point or a.dtype.is_complex)]


def _linear_inputs(args, kwargs, node):
    """addmm's inputs (bias, input, weight.t()), read from kiln's add(matmul(x, w.t()), b);
    None (the inner nodes shown) where the composite is built otherwise."""
    edges = getattr(node, "edges", None)
    if node.name() != "AddmmBackward0" or not edges or len(edges) != 2:
        return None
    mm = edges[0]
    if getattr(getattr(mm, "prim", None), "name", None) != "matmul" or len(mm.edges) != 2:
        return None
    return [edges[1], mm.edges[0], mm.edges[1]]


def _log_softmax_inside(args, kwargs, node, depth: int = 6):
    """cross_entropy's node lists the log_softmax it computed (PyTorch's NllLossBackward0)."""
    stack = [(e, 0) for e in getattr(node, "edges", None) or ()]
    while stack:
        e, d = stack.pop()
        if isinstance(e, Node) and e.name() == "LogSoftmaxBackward0":
            return [e]
        if d < depth and getattr(e, "edges", None) is not None:
            stack.extend((x, d + 1) for x in e.edges)
    return None


def _signature_inputs(*names: str, shown: tuple = ("input", "weight", "bias")):
    """Edges of the arguments named `shown`, given or not (None), by the signature `names`."""
    def inputs(args, kwargs, node):
        given = dict(zip(names, args), **kwargs)
        return [_edge(given.get(k)) for k in shown]
    return inputs


# how a named composite lists its inputs; absent: the inner nodes are shown (l1_loss's
# MeanBackward0 has abs and sub below it, as PyTorch's does)
SHOWN = {"linear": _linear_inputs, "cross_entropy": _log_softmax_inside,
         "batch_norm": _signature_inputs("input", "running_mean", "running_var", "weight",
                                         "bias"),
         "layer_norm": _signature_inputs("input", "normalized_shape", "weight", "bias")}
for _name in ("mean", "softmax", "log_softmax", "var", "std", "logsumexp", "nll_loss",
              "mse_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
              "smooth_l1_loss", "huber_loss", "gelu", "silu", "leaky_relu", "elu", "softplus",
              "mish", "hardtanh", "hardswish", "hardsigmoid", "logsigmoid",
              "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "embedding", "max_pool2d", "max_pool3d", "avg_pool2d",
              "clamp", "clip", "clamp_min", "clamp_max", "max", "min", "amax", "amin", "norm"):
    SHOWN.setdefault(_name, _float_inputs)


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


def _clamp_name(args, kwargs):
    bounds = list(args[1:3]) + [kwargs.get("min"), kwargs.get("max")]
    return "ClampBackward0" if any(isinstance(b, Tensor) for b in bounds) else "ClampBackward1"


def _extreme_name(op):
    def name(args, kwargs):     # max(x) reduces; max(x, y) is maximum
        other = args[1] if len(args) > 1 else kwargs.get("other")
        return f"{op}imumBackward0" if isinstance(other, Tensor) else f"{op}Backward1"
    return name


def _norm_name(args, kwargs):
    p = args[1] if len(args) > 1 else kwargs.get("p", "fro")
    return None if p == "nuc" else "LinalgVectorNormBackward0"


def _clamp_inputs(args, kwargs, node):
    """ClampBackward0 (a tensor bound) lists the input, min and max (None for a bound that is
    a number or not given); ClampBackward1 (number bounds) the input alone."""
    given = dict(zip(("input", "min", "max"), args), **kwargs)
    bounds = [given.get("min"), given.get("max")]
    x = _edge(given.get("input", given.get("self")))
    if not any(isinstance(b, Tensor) for b in bounds):
        return [x]
    return [x] + [_edge(b) for b in bounds]


def _stacked_inputs(args, kwargs, node):
    tensors = args[0] if args else kwargs.get("tensors", ())
    return [_edge(t) for t in tensors]


SHOWN["stack"] = _stacked_inputs
SHOWN["clamp"] = SHOWN["clip"] = _clamp_inputs
# x ** 2 is kiln's x * x: PyTorch's PowBackward0 lists x once (its floating-point operands)
for _name in ("pow", "square", "__pow__", "__rpow__"):
    SHOWN[_name] = _float_inputs


# function name -> PyTorch's node name, for the tensor ops (functional and Tensor methods)
TENSOR_OPS = {"mean": _mean_name, "softmax": "SoftmaxBackward0",
              "log_softmax": "LogSoftmaxBackward0", "var": "VarBackward0",
              "std": "StdBackward0", "logsumexp": "LogsumexpBackward0",
              "unfold": "UnfoldBackward0", "clone": "CloneBackward0",
              # x ** 2 and square are a multiply in kiln (autogradqs tutorial: PowBackward0)
              "pow": _pow_name, "square": "PowBackward0",
              "clamp": _clamp_name, "clip": _clamp_name, "clamp_min": "ClampMinBackward0",
              "clamp_max": "ClampMaxBackward0", "max": _extreme_name("Max"),
              "min": _extreme_name("Min"), "amax": "AmaxBackward0", "amin": "AminBackward0",
              "norm": _norm_name, "stack": "StackBackward0"}
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
                setattr(owner, name, named(getattr(owner, name), label, SHOWN.get(name)))
        if hasattr(Tensor, name):
            setattr(Tensor, name, named(getattr(Tensor, name), label, SHOWN.get(name)))
    for name, label in TENSOR_OPERATORS.items():
        setattr(Tensor, name, named(getattr(Tensor, name), label, SHOWN.get(name)))
    if nn_functional_module is not None:
        apply_nn_names(nn_functional_module)


def apply_nn_names(nn_functional_module) -> None:
    """PyTorch's grad_fn names on nn.functional's composites (it calls this once, when built)."""
    for name, label in NN_OPS.items():
        if hasattr(nn_functional_module, name):
            setattr(nn_functional_module, name, named(getattr(nn_functional_module, name),
                                                      label, SHOWN.get(name)))
