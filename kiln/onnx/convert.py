"""An exported program's graph as ONNX nodes: one table entry per kiln primitive.

kiln's IR holds primitives only (a composite such as `linear` or `conv2d` leaves at most its
name in the nodes' provenance scope), so each primitive maps to the ONNX ops that compute it; a
convolution arrives as pad + unfold + matmul and leaves as Pad + Slices + MatMul. Sizes that
follow a dynamic dimension (`Affine`s) are computed in the ONNX graph from the input's `Shape`,
so one file serves every batch size. Needs the `onnx` package (imported by the caller).
"""

from __future__ import annotations

import numpy as np

from kiln.export.symbolic import Affine
from kiln.ir import dtypes as dt
from kiln.ir.graph import Value
from kiln.ir.ops import window_positions


class UnsupportedOperatorError(RuntimeError):
    """A primitive (or a dtype of one) with no ONNX spelling here; names the op and the line."""


def onnx_type(d):
    from onnx import TensorProto
    return {dt.float32: TensorProto.FLOAT, dt.float64: TensorProto.DOUBLE,
            dt.float16: TensorProto.FLOAT16, dt.int64: TensorProto.INT64,
            dt.int32: TensorProto.INT32, dt.uint8: TensorProto.UINT8,
            dt.int16: TensorProto.INT16, dt.int8: TensorProto.INT8,
            dt.bool_: TensorProto.BOOL}[d]


class OnnxBuilder:
    """Collects ONNX nodes and initializers; names every value once."""

    def __init__(self, opset: int, symbol_sources: dict):
        self.opset = opset
        self.nodes: list = []
        self.initializers: list = []
        self.names: dict = {}               # kiln Value -> ONNX name
        self.symbol_sources = symbol_sources  # symbol -> (ONNX input name, dim)
        self._symbols: dict = {}
        self._count = 0
        self._consts: dict = {}
        self._sizes: dict = {}              # computed size vectors, by their values

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, array, hint: str = "const") -> str:
        from onnx import numpy_helper
        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key in self._consts:
            return self._consts[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        self._consts[key] = name
        return name

    def op(self, op_type: str, inputs: list, hint: str | None = None, out: str | None = None,
           **attrs) -> str:
        from onnx import helper
        out = out or self.fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out],
                                           name=self.fresh("n_" + op_type), **attrs))
        return out

    def prune(self, outputs: list) -> None:
        """Drop the nodes and initializers that no output needs (the primitives a recovered
        composite replaced)."""
        needed = set(outputs)
        kept = []
        for node in reversed(self.nodes):
            if any(o in needed for o in node.output):
                kept.append(node)
                needed.update(node.input)
        self.nodes = kept[::-1]
        self.initializers = [t for t in self.initializers if t.name in needed]

    # ------------------------------------------------------------------ sizes
    def symbol(self, sym: str) -> str:
        """A 1-element int64 tensor holding the run-time value of a dynamic size."""
        if sym not in self._symbols:
            source, dim = self.symbol_sources[sym]
            shape = self.op("Shape", [source], hint=f"shape_{source}")
            self._symbols[sym] = self.op("Gather", [shape, self.const(np.array([dim]))],
                                         hint=sym, axis=0)
        return self._symbols[sym]

    def ints(self, values) -> str:
        """A 1-D int64 tensor of `values` (ints, or Affines computed from the input shapes)."""
        if not any(isinstance(v, Affine) for v in values):
            return self.const(np.array(list(values), dtype=np.int64), "ints")
        key = tuple(values)
        if key in self._sizes:
            return self._sizes[key]
        parts = []
        for v in values:
            if not isinstance(v, Affine):
                parts.append(self.const(np.array([v], dtype=np.int64)))
                continue
            total = None
            for sym, c in v.terms:
                term = self.symbol(sym)
                if c != 1:
                    term = self.op("Mul", [term, self.const(np.array([c], dtype=np.int64))])
                total = term if total is None else self.op("Add", [total, term])
            if v.offset:
                total = self.op("Add", [total, self.const(np.array([v.offset], np.int64))])
            parts.append(total)
        self._sizes[key] = self.op("Concat", parts, hint="sizes", axis=0)
        return self._sizes[key]


# ----------------------------------------------------------------------------- the table

def _operand_dtype(node, attrs):
    """The dtype a literal input of `node` takes: the tensor operands' (kiln's rule)."""
    if node.op == "where":
        return node.out.dtype
    for v in node.inputs:
        if isinstance(v, Value):
            return v.dtype
    return node.out.dtype


def _unary(op_type):
    return lambda b, n, x, a: b.op(op_type, x)


def _binary(op_type):
    return lambda b, n, x, a: b.op(op_type, x)


def _not_of(op_type):
    return lambda b, n, x, a: b.op("Not", [b.op(op_type, x)])


def _bitwise(bool_op, int_op):
    def conv(b, n, x, a):
        if n.out.dtype is dt.bool_:
            return b.op(bool_op, x)
        _need(b, n, 18, "bitwise ops on integers")
        return b.op(int_op, x)
    return conv


def _need(b, n, opset, what):
    if b.opset < opset:
        raise UnsupportedOperatorError(f"kiln.onnx.export: {what} (op {n.op!r}, from {n.loc}) "
                                       f"need opset_version >= {opset}, got {b.opset}")


def _one(b, n):
    return b.const(np.array(1, dtype=n.out.dtype.np))


def _reduce(op_type):
    def conv(b, n, x, a):
        axes = b.const(np.array(a["axes"], dtype=np.int64))
        keep = int(bool(a["keepdim"]))
        if op_type == "ReduceSum" or b.opset >= 18:
            return b.op(op_type, [x[0], axes], keepdims=keep, noop_with_empty_axes=1)
        if not a["axes"]:
            return b.op("Identity", [x[0]])
        return b.op(op_type, [x[0]], keepdims=keep, axes=list(a["axes"]))
    return conv


def _floordiv(b, n, x, a):
    if not n.out.dtype.is_floating_point:
        raise UnsupportedOperatorError(f"kiln.onnx.export: integer floor division (op "
                                       f"'floordiv', from {n.loc}) has no ONNX mapping")
    return b.op("Floor", [b.op("Div", x)])


def _mod(b, n, x, a):
    if not n.out.dtype.is_floating_point:
        return b.op("Mod", x, fmod=0)               # the divisor's sign, as Python's %
    return b.op("Sub", [x[0], b.op("Mul", [b.op("Floor", [b.op("Div", x)]), x[1]])])


def _trunc(b, n, x, a):
    if not n.out.dtype.is_floating_point:
        return b.op("Identity", x)
    negative = b.op("Less", [x[0], b.const(np.array(0, n.out.dtype.np))])
    return b.op("Where", [negative, b.op("Ceil", x), b.op("Floor", x)])


def _int_identity(op_type):
    def conv(b, n, x, a):
        return b.op(op_type if n.out.dtype.is_floating_point else "Identity", x)
    return conv


def _round(b, n, x, a):
    if not n.out.dtype.is_floating_point:
        return b.op("Identity", x)
    d = a.get("decimals", 0)
    if d == 0:
        return b.op("Round", x)                      # ties to even, as NumPy
    scale = b.const(np.array(10.0 ** d, n.out.dtype.np))
    return b.op("Div", [b.op("Round", [b.op("Mul", [x[0], scale])]), scale])


def _neg(b, n, x, a):
    return b.op("Not" if n.out.dtype is dt.bool_ else "Neg", x)


def _cast(b, n, x, a):
    return b.op("Cast", x, to=onnx_type(a["dtype"]))


def _slice(b, n, x, a):
    ndim = len(a["starts"])
    return b.op("Slice", [x[0], b.ints(a["starts"]), b.ints(a["stops"]),
                          b.const(np.arange(ndim, dtype=np.int64)), b.ints(a["steps"])])


def _flip(b, n, x, a):
    axes = list(a["axes"])
    big = np.iinfo(np.int64)
    return b.op("Slice", [x[0], b.const(np.full(len(axes), -1, np.int64)),
                          b.const(np.full(len(axes), big.min, np.int64)),
                          b.const(np.array(axes, np.int64)),
                          b.const(np.full(len(axes), -1, np.int64))])


def _pad(b, n, x, a):
    pads = [lo for lo, _ in a["pads"]] + [hi for _, hi in a["pads"]]
    value = b.const(np.array(a["value"], dtype=n.out.dtype.np))
    return b.op("Pad", [x[0], b.ints(pads), value], mode="constant")


def _reshape(b, n, x, a):
    shape = a["shape"]
    zero = any(d == 0 for d in shape if not isinstance(d, Affine))
    return b.op("Reshape", [x[0], b.ints(shape)], **({"allowzero": 1} if zero else {}))


def _full(b, n, x, a):
    shape, value, dtype = a["shape"], a["value"], a["dtype"]
    if not any(isinstance(d, Affine) for d in shape):
        return b.op("Identity", [b.const(np.full(shape, value, dtype=dtype.np), "full")])
    from onnx import numpy_helper
    return b.op("ConstantOfShape", [b.ints(shape)],
                value=numpy_helper.from_array(np.array([value], dtype=dtype.np)))


def _arange(b, n, x, a):
    values = np.arange(a["start"], a["stop"], a["step"]).astype(a["dtype"].np)
    return b.op("Identity", [b.const(values, "arange")])


def _unfold(b, n, x, a):
    """im2col as Slices: window position (i, j) of every output pixel is one strided slice of
    the (N, C, H, W) input; stacked last and moved to (N, oh, ow, kh, kw, C)."""
    (kh, kw), (sh, sw), (dh, dw) = a["kernel"], a["stride"], a["dilation"]
    _, oh, ow = n.out.shape[:3]
    slices = []
    for i in range(kh):
        for j in range(kw):
            starts = [i * dh, j * dw]
            ends = [i * dh + sh * (oh - 1) + 1, j * dw + sw * (ow - 1) + 1]
            s = b.op("Slice", [x[0], b.const(np.array(starts, np.int64)),
                               b.const(np.array(ends, np.int64)),
                               b.const(np.array([2, 3], np.int64)),
                               b.const(np.array([sh, sw], np.int64))])
            slices.append(b.op("Unsqueeze", [s, b.const(np.array([4], np.int64))]))
    stacked = b.op("Concat", slices, axis=4)                   # (N, C, oh, ow, kh*kw)
    c = n.out.shape[5]
    split = b.op("Reshape", [stacked, b.const(np.array([0, c, oh, ow, kh, kw], np.int64))])
    return b.op("Transpose", [split], perm=[0, 2, 3, 4, 5, 1])


def _take(b, n, x, a):
    return b.op("Gather", x, axis=a["axis"])


def _unfold_dim(b, n, x, a):
    """Tensor.unfold as a Gather of every window's positions along the axis (a (windows,
    size) index, so any other dim may be dynamic), the size then moved last."""
    axis, size, step = a["axis"], a["size"], a["step"]
    count, nd = n.out.shape[axis], len(n.out.shape) - 1
    positions = window_positions(count, size, step).reshape(count, size)
    taken = b.op("Gather", [x[0], b.const(positions)], axis=axis)
    perm = list(range(axis + 1)) + list(range(axis + 2, nd + 1)) + [axis + 1]
    return b.op("Transpose", [taken], perm=perm)


def _argmax(b, n, x, a):
    return b.op("ArgMax", x, axis=a["axis"], keepdims=int(bool(a["keepdim"])))


def _cumsum(b, n, x, a):
    return b.op("CumSum", [x[0], b.const(np.array(a["axis"], np.int64))])


OPS = {
    "add": _binary("Add"), "sub": _binary("Sub"), "mul": _binary("Mul"), "div": _binary("Div"),
    "pow": _binary("Pow"), "maximum": _binary("Max"), "minimum": _binary("Min"),
    "floordiv": _floordiv, "mod": _mod,
    "eq": _binary("Equal"), "ne": _not_of("Equal"), "lt": _binary("Less"),
    "le": _binary("LessOrEqual"), "gt": _binary("Greater"), "ge": _binary("GreaterOrEqual"),
    "bitwise_and": _bitwise("And", "BitwiseAnd"), "bitwise_or": _bitwise("Or", "BitwiseOr"),
    "bitwise_xor": _bitwise("Xor", "BitwiseXor"), "bitwise_not": _bitwise("Not", "BitwiseNot"),
    "where": _binary("Where"), "cast": _cast, "neg": _neg,
    "abs": _unary("Abs"), "sign": _unary("Sign"), "relu": _unary("Relu"), "exp": _unary("Exp"),
    "log": _unary("Log"), "sqrt": _unary("Sqrt"), "sin": _unary("Sin"), "cos": _unary("Cos"),
    "tanh": _unary("Tanh"), "sigmoid": _unary("Sigmoid"), "erf": _unary("Erf"),
    "log1p": lambda b, n, x, a: b.op("Log", [b.op("Add", [x[0], _one(b, n)])]),
    "expm1": lambda b, n, x, a: b.op("Sub", [b.op("Exp", x), _one(b, n)]),
    "floor": _int_identity("Floor"), "ceil": _int_identity("Ceil"), "trunc": _trunc,
    "round": _round,
    "sum": _reduce("ReduceSum"), "max": _reduce("ReduceMax"), "prod": _reduce("ReduceProd"),
    "argmax": _argmax, "cumsum": _cumsum,
    "reshape": _reshape, "permute": lambda b, n, x, a: b.op("Transpose", x, perm=list(a["perm"])),
    "expand": lambda b, n, x, a: b.op("Expand", [x[0], b.ints(a["shape"])]),
    "slice": _slice, "flip": _flip, "pad": _pad,
    "cat": lambda b, n, x, a: b.op("Concat", x, axis=a["axis"]),
    # ONNX has no error op; onnxruntime's Gather refuses an index out of range itself
    "check_index": lambda b, n, x, a: b.op("Identity", x),
    # nor for a value check (a loss's var >= 0): the exported graph passes the values on
    "check_values": lambda b, n, x, a: b.op("Identity", [x[0]]),
    "take": _take, "matmul": _binary("MatMul"), "unfold": _unfold, "unfold_dim": _unfold_dim,
    "full": _full, "arange": _arange,
}

# ONNX Runtime's CPU kernels of these ops take no 8-bit integers: computed in int32 and cast
# back (max pooling's first-index tie break runs on uint8)
_WIDEN_U8 = frozenset(["where", "max", "eq", "ne", "lt", "le", "gt", "ge", "maximum", "minimum",
                       "add", "sub", "mul"])


def convert_node(b: OnnxBuilder, node, inputs: tuple, attrs: dict) -> str:
    """Append the ONNX nodes computing `node` (its inputs and attributes from the template,
    Affines included); return the name of its result."""
    rule = OPS.get(node.op)
    if rule is None:
        raise UnsupportedOperatorError(
            f"kiln.onnx.export: op {node.op!r} (node {node.out.ref}, from {node.loc}) has no "
            f"ONNX mapping; the ops kiln exports are {', '.join(sorted(OPS))}")
    lit_dtype = _operand_dtype(node, attrs)
    widen = lit_dtype is dt.uint8 and node.op in _WIDEN_U8
    names = []
    for v in inputs:
        if isinstance(v, Value):
            name = b.names[v]
            if widen and v.dtype is dt.uint8:
                name = b.op("Cast", [name], to=onnx_type(dt.int32))
            names.append(name)
        elif isinstance(v, Affine):
            raise UnsupportedOperatorError(
                f"kiln.onnx.export: node {node.out.ref} = {node.op} (from {node.loc}) uses a "
                f"number computed from a dynamic size ({v}); export it with a static shape")
        else:
            names.append(b.const(np.array(v, dtype=np.int32 if widen else lit_dtype.np)))
    out = rule(b, node, names, attrs)
    if widen and node.out.dtype is dt.uint8:
        out = b.op("Cast", [out], to=onnx_type(dt.uint8))
    return out
