"""PyTorch's limited support for uint16, uint32 and uint64: which ops compute on them.

PyTorch 2.13 stores, views, copies and converts these types, but its CPU kernels compute only a
few ops on them (mul, div, sum, prod, cumsum, eq, ne, bitwise and/or/xor, sort, where, cat,
indexing); add, sub, comparisons by order, max/min, matmul and most others raise
NotImplementedError there. kiln refuses the same ops (those tests/test_unsigned_dtypes.py
lists), so a script fails on kiln where it would fail on PyTorch. The dispatcher checks
primitives here once per signature (a refused one is never cached); composites whose
primitives are all allowed, but which PyTorch refuses, call `check` or `refusal`.
"""

from __future__ import annotations

from kiln.ir import dtypes as dt
from kiln.ir.ops import MOVEMENT, Primitive
from kiln.tracer.errors import op_error
from kiln.tracer.tensor import Tensor

LIMITED = frozenset(dt.LIMITED_UNSIGNED)

# the non-movement primitives PyTorch's kernels compute on these types (div, sum and the like
# cast to a wider type first: `cast` is among them)
_COMPUTED = frozenset({"cast", "mul", "eq", "ne", "bitwise_and", "bitwise_or", "bitwise_xor",
                       "argsort", "take", "where", "index_put"})


def refusal(op: str, dtype: dt.DType) -> NotImplementedError:
    """The error for an op PyTorch 2.13 has no kernel of for `dtype` (PyTorch's type name)."""
    return op_error(op, f'"{op}" is not implemented for \'{dt.SCALAR_TYPE_NAMES[dtype]}\': '
                    "PyTorch 2.13 stores and converts uint16/uint32/uint64 but computes only "
                    "mul, div, sum, prod, cumsum, eq, ne, bitwise and/or/xor, sort and where on "
                    "them; convert first, e.g. x.long() or x.double()", NotImplementedError)


def check_primitive(prim: Primitive, args: tuple) -> None:
    """Raise `refusal` if `prim` is not one PyTorch computes on an input of a limited type."""
    if prim.name in _COMPUTED or prim.kind is MOVEMENT:
        return
    for a in args:
        if isinstance(a, Tensor) and a.dtype in LIMITED:
            raise refusal(prim.name, a.dtype)


def check(op: str, *values) -> None:
    """Raise `refusal` if a tensor among `values` has a limited type: for composites whose
    primitives PyTorch computes on these types but whose own kernel it lacks (gather, topk)."""
    for a in values:
        if isinstance(a, Tensor) and a.dtype in LIMITED:
            raise refusal(op, a.dtype)
