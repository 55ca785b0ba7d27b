"""Matrix products: matmul, mm, bmm, mv, dot, outer, addmm, baddbmm, einsum, tensordot."""

from __future__ import annotations

import math

from kiln.ir.dtypes import BOOL, INT
from kiln.ir.ops import P, ShapeError, broadcast_shapes
from kiln.tracer.errors import op_error
from kiln.tracer.functional.common import _py_max
from kiln.tracer.functional.reductions import sum
from kiln.tracer.autograd import renamable, set_name
from kiln.tracer.functional.shapes import (contiguous, diagonal, permute, reshape, squeeze,
                                           transpose, unsqueeze)
from kiln.tracer.provenance import composite
from kiln.tracer import sparse
from kiln.tracer.sparse import SparseTensor
from kiln.tracer.sparse_compressed import SparseCompressedTensor


# ----------------------------------------------------------------------------- matmul

def matmul(input, other):
    a, b = input, other
    if type(a) is SparseTensor or type(b) is SparseTensor:
        return sparse.mm(a, b)
    if type(a) is SparseCompressedTensor or type(b) is SparseCompressedTensor:
        return a @ b
    if a.ndim == 2 and b.ndim == 2 and a.dtype is b.dtype and \
            a._data.shape[1] == b._data.shape[0]:
        return P.matmul(a, b)     # the common case, which every check below lets through
    if a.ndim == 0 or b.ndim == 0:
        raise op_error("matmul", f"both arguments to matmul need to be at least 1D, but they "
                       f"are {a.ndim}D and {b.ndim}D")
    if a.dtype is not b.dtype:
        raise op_error("matmul", f"expected m1 and m2 to have the same dtype, but got: "
                       f"{a.dtype.name} != {b.dtype.name}")
    if a.ndim == 1 and b.ndim == 1:
        if a.shape[0] != b.shape[0]:
            raise op_error("matmul", f"inconsistent tensor size, expected tensor [{a.shape[0]}]"
                           f" and src [{b.shape[0]}] to have the same number of elements")
        out = reshape(P.matmul(reshape(a, (1, -1)), reshape(b, (-1, 1))), ())
        return _torch_node(out, "DotBackward0", a, b)
    if a.ndim == 1 and b.ndim == 2:
        return _torch_node(squeeze(matmul(unsqueeze(a, 0), b), -2), "SqueezeBackward4")
    if b.ndim == 1:
        if a.shape[-1] != b.shape[0]:
            rows = math.prod(a.shape[:-1])
            raise op_error("matmul", f"size mismatch, got input ({rows}), mat ({rows}x"
                           f"{a.shape[-1]}), vec ({b.shape[0]})")
        if a.ndim == 2:
            return _mv(a, b)
        # PyTorch's matrix @ vector of the flattened batch, viewed back
        lead = tuple(a.shape[:-1])
        rows = -1 if a.shape[-1] else math.prod(lead)
        return _torch_node(reshape(_mv(reshape(a, (rows, a.shape[-1])), b), lead),
                           "UnsafeViewBackward0")
    if a.ndim == 1:
        if a.shape[0] != b.shape[-2]:
            batch = math.prod(b.shape[:-2])
            raise op_error("matmul", f"Expected size for first two dimensions of batch2 tensor "
                           f"to be: [{batch}, {a.shape[0]}] but got: [{batch}, {b.shape[-2]}].")
        # vector @ batch: PyTorch's (batch^T flattened, as a row-major copy) @ vector
        bt = contiguous(transpose(b, -1, -2))
        flat = reshape(bt, (math.prod(bt.shape[:-1]), bt.shape[-1]))
        if getattr(getattr(bt.grad_fn, "prim", None), "name", None) == "cast":     # copied
            _torch_node(bt, "CloneBackward0")
            _torch_node(flat, "UnsafeViewBackward0")
        return _torch_node(reshape(_mv(flat, a), tuple(b.shape[:-2]) + (b.shape[-1],)),
                           "UnsafeViewBackward0")
    if a.shape[-1] != b.shape[-2]:
        whole = f" (operand shapes {list(a.shape)} and {list(b.shape)})" \
            if a.ndim > 2 or b.ndim > 2 else ""
        raise op_error("matmul", f"mat1 and mat2 shapes cannot be multiplied "
                       f"({'x'.join(map(str, a.shape[-2:]))} and "
                       f"{'x'.join(map(str, b.shape[-2:]))}){whole}")
    if b.ndim == 2 and a.ndim > 2:
        # (..., m, k) @ (k, n): one 2-D product over the flattened batch
        lead = tuple(a.shape[:-1])
        rows = -1 if a.shape[-1] else math.prod(lead)      # (-1, 0) names no size
        out = P.matmul(reshape(a, (rows, a.shape[-1])), b)
        return _torch_node(reshape(out, lead + (b.shape[-1],)), "UnsafeViewBackward0")
    if a.shape[:-2] == b.shape[:-2]:
        return P.matmul(a, b)
    try:
        batch = broadcast_shapes(tuple(a.shape[:-2]), tuple(b.shape[:-2]))
    except ShapeError:
        raise op_error("matmul", f"the batch dimensions {list(a.shape[:-2])} and "
                       f"{list(b.shape[:-2])} of operands of shapes {list(a.shape)} and "
                       f"{list(b.shape)} do not broadcast (each batch size must match or be 1)"
                       ) from None
    if tuple(a.shape[:-2]) != batch:
        a = P.expand(a, shape=batch + tuple(a.shape[-2:]))
    if tuple(b.shape[:-2]) != batch:
        b = P.expand(b, shape=batch + tuple(b.shape[-2:]))
    return P.matmul(a, b)


def _mv(matrix, vector):
    """matrix (2-d) @ vector as PyTorch's one MvBackward0 node shows it."""
    return _torch_node(squeeze(P.matmul(matrix, unsqueeze(vector, -1)), -1), "MvBackward0",
                       matrix, vector)


def _torch_node(out, name: str, *inputs):
    """`out`, its grad_fn named as PyTorch's node for this case of matmul and, with `inputs`,
    listing them as its next_functions (kiln computes it as a reshape of a matrix product,
    whose inner nodes backward still runs)."""
    node = out.grad_fn
    if node is not None and renamable(node):
        set_name(node, name)
        if inputs:
            node.shown = [None if not x.requires_grad else x.grad_fn if x.grad_fn is not None
                          else x for x in inputs]
    return out


def mm(input, mat2):
    if type(input) is SparseTensor or type(mat2) is SparseTensor:
        return sparse.mm(input, mat2)
    if type(input) is SparseCompressedTensor or type(mat2) is SparseCompressedTensor:
        return input @ mat2
    if input.ndim != 2 or mat2.ndim != 2:
        raise op_error("mm", f"self must be a matrix (got {input.ndim}-D and {mat2.ndim}-D)")
    return matmul(input, mat2)


def bmm(input, mat2):
    if input.ndim != 3 or mat2.ndim != 3:
        raise op_error("bmm", f"batch1 and batch2 must be 3D tensors (got {input.ndim}-D and "
                       f"{mat2.ndim}-D)")
    if input.shape[0] != mat2.shape[0]:
        raise op_error("bmm", f"batch1 and batch2 must have same number of batches, got "
                       f"{input.shape[0]} and {mat2.shape[0]} (shapes {list(input.shape)} and "
                       f"{list(mat2.shape)})")
    if input.shape[2] != mat2.shape[1]:
        raise op_error("bmm", f"Expected size for first two dimensions of batch2 tensor to be: "
                       f"[{input.shape[0]}, {input.shape[2]}] but got: [{mat2.shape[0]}, "
                       f"{mat2.shape[1]}] (shapes {list(input.shape)} and {list(mat2.shape)})")
    return matmul(input, mat2)


def mv(input, vec):
    return matmul(input, vec)


def dot(input, other):
    if input.ndim != 1 or other.ndim != 1:
        raise op_error("dot", f"1D tensors expected, but got {input.ndim}D and {other.ndim}D "
                       "tensors")
    return matmul(input, other)


def inner(input, other):
    """Sum of products over the last dimension of each (a 0-d operand multiplies)."""
    if input.ndim == 0 or other.ndim == 0:
        return input * other
    if input.shape[-1] != other.shape[-1]:
        raise op_error("inner", f"inner() the last dimension must match on both input tensors "
                       f"but got shapes {list(input.shape)} and {list(other.shape)}")
    return tensordot(input, other, ([input.ndim - 1], [other.ndim - 1]))


def outer(input, vec2):
    return unsqueeze(input, 1) * unsqueeze(vec2, 0)


ger = outer


def integral_scales(input, product, beta, alpha):
    """(beta, alpha) of addmm and its family: ATen converts them to an integer input's type,
    toward zero (`addmv(int_x, ..., beta=0.2)` ignores int_x), so an integer result stays
    integer; bools likewise become bools (`addr` of bool tensors is a logical or)."""
    if input.dtype.category == BOOL and product.dtype.category == BOOL:
        return bool(beta), bool(alpha)
    if input.dtype.category == INT and product.dtype.category == INT:
        return int(beta), int(alpha)
    return beta, alpha


@composite
def addmm(input, mat1, mat2, *, beta=1, alpha=1):
    prod_ = mm(mat1, mat2)
    beta, alpha = integral_scales(input, prod_, beta, alpha)
    return (input * beta if beta != 1 else input) + (prod_ * alpha if alpha != 1 else prod_)


@composite
def baddbmm(input, batch1, batch2, *, beta=1, alpha=1):
    prod_ = bmm(batch1, batch2)
    beta, alpha = integral_scales(input, prod_, beta, alpha)
    return (input * beta if beta != 1 else input) + (prod_ * alpha if alpha != 1 else prod_)


@composite
def einsum(equation, *operands):
    """Einstein summation for up to two operands, lowered to permute, reshape, mul and matmul."""
    if not isinstance(equation, str):
        equation, operands = _sublist_equation((equation,) + operands)
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    lhs, _, rhs = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != len(operands):
        raise op_error("einsum", f"{len(terms)} operand terms but {len(operands)} operands")
    if "..." in equation:
        terms, rhs, operands = _ellipsis_labels(terms, rhs if _ else None, operands)
    elif not _:
        counts = {}
        for c in "".join(terms):
            counts[c] = counts.get(c, 0) + 1
        rhs = "".join(sorted(c for c, n in counts.items() if n == 1))
    if len(set(rhs)) != len(rhs):
        raise op_error("einsum", f"output subscript {rhs!r} repeats a label")
    terms, operands = zip(*(_distinct_labels(t, op) for t, op in zip(terms, operands)))
    # multiply by broadcasting every operand into the union of labels, then sum the rest
    labels = []
    for term in terms:
        for c in term:
            if c not in labels:
                labels.append(c)
    sizes = {}
    for term, op in zip(terms, operands):
        for c, n in zip(term, op.shape):
            sizes[c] = _py_max(sizes.get(c, 1), n)
    if len(operands) == 2 and set(rhs) <= set(labels):
        return _einsum_pair(terms, rhs, operands, sizes)
    product = None
    for term, op in zip(terms, operands):
        aligned = _align(op, term, labels)
        product = aligned if product is None else product * aligned
    summed = [i for i, c in enumerate(labels) if c not in rhs]
    out = sum(product, tuple(summed)) if summed else product
    kept = [c for c in labels if c in rhs]
    return permute(out, tuple(kept.index(c) for c in rhs)) if kept != list(rhs) else out


def _sublist_equation(args):
    """einsum's sublist format, `einsum(a, [0, 1], b, [1, 2], [0, 2])`, as an equation and the
    operands: the labels 0-25 are 'A'-'Z' and 26-51 'a'-'z' (PyTorch's), Ellipsis is '...'."""
    def spell(sublist):
        letters = []
        for label in sublist:
            if label is Ellipsis:
                letters.append("...")
            elif isinstance(label, int) and 0 <= label < 52:
                letters.append(chr(ord("A") + label) if label < 26 else chr(ord("a") + label - 26))
            else:
                raise op_error("einsum", f"subscript {label!r} in a subscript list is not "
                               "within the valid range [0, 52) (nor Ellipsis)", ValueError)
        return "".join(letters)

    output = None
    if len(args) % 2 == 1:                          # the last list is the output's labels
        args, output = args[:-1], args[-1]
    operands, terms = args[0::2], args[1::2]
    equation = ",".join(spell(t) for t in terms)
    if output is not None:
        equation += "->" + spell(output)
    return equation, tuple(operands)


def _ellipsis_labels(terms, rhs, operands):
    """The equation with each '...' spelled as labels of its own (characters no equation
    uses): the broadcast dims, right-aligned across operands and expanded where one operand
    has size 1; without '->', the output is those dims then the labels used once, sorted."""
    rank = _py_max(*(op.ndim - len(t.replace("...", "")) for t, op in zip(terms, operands)
                     if "..." in t), 0)
    names = [chr(0x100 + i) for i in range(rank)]
    sizes = [1] * rank
    spelled = []
    for term, op in zip(terms, operands):
        if "..." not in term:
            spelled.append(term)
            continue
        before, _, after = term.partition("...")
        count = op.ndim - len(before) - len(after)
        if count < 0:
            raise op_error("einsum", f"the term {term!r} has more labels than its operand of "
                           f"shape {list(op.shape)} has dims")
        for i, n in enumerate(op.shape[len(before):len(before) + count]):
            k = rank - count + i
            if n != 1 and sizes[k] not in (1, n):
                raise op_error("einsum", f"the dims '...' of the operands do not broadcast "
                               f"({sizes[k]} and {n})")
            sizes[k] = _py_max(sizes[k], n)
        spelled.append(before + "".join(names[rank - count:]) + after)
    expanded = []
    for term, op in zip(spelled, operands):
        want = tuple(sizes[names.index(c)] if c in names else n for c, n in zip(term, op.shape))
        expanded.append(op.expand(want) if want != tuple(op.shape) else op)
    if rhs is None:
        counts = {}
        for c in "".join(terms).replace(".", ""):
            counts[c] = counts.get(c, 0) + 1
        rhs = "".join(names) + "".join(sorted(c for c, n in counts.items() if n == 1))
    else:
        rhs = rhs.replace("...", "".join(names))
    return spelled, rhs, tuple(expanded)


def _distinct_labels(term, op):
    """An operand whose term repeats a label ('ii', 'NMKK') as its diagonal over the repeated
    dims, so that every label names one dim: ('NMKK', x) -> ('NMK', diagonal over the Ks)."""
    while len(set(term)) != len(term):
        c = next(c for c in term if term.count(c) > 1)
        i = term.index(c)
        j = term.index(c, i + 1)
        if op.shape[i] != op.shape[j]:
            raise op_error("einsum", f"subscript {c!r} is repeated for operand of shape "
                           f"{list(op.shape)} but the sizes don't match, {op.shape[i]} != "
                           f"{op.shape[j]}")
        op = diagonal(op, 0, i, j)           # the diagonal becomes the last dim
        term = term[:i] + term[i + 1:j] + term[j + 1:] + c
    return term, op


def _align(op, term, labels):
    """Permute and reshape an operand so its dims follow `labels` (size 1 where absent)."""
    order = sorted(range(len(term)), key=lambda i: labels.index(term[i]))
    x = permute(op, tuple(order)) if order != list(range(len(term))) else op
    present = {c: op.shape[i] for i, c in enumerate(term)}
    return reshape(x, tuple(present.get(c, 1) for c in labels))


def _einsum_pair(terms, rhs, operands, sizes):
    ta, tb = terms
    a, b = operands
    batch = [c for c in ta if c in tb and c in rhs]
    contract = [c for c in ta if c in tb and c not in rhs]
    only_a = [c for c in ta if c not in tb]
    only_b = [c for c in tb if c not in ta]
    # labels that appear in one operand only and not in the output are summed out first
    for c in [c for c in only_a if c not in rhs]:
        a = sum(a, ta.index(c), keepdim=True)
    for c in [c for c in only_b if c not in rhs]:
        b = sum(b, tb.index(c), keepdim=True)
    free_a = [c for c in only_a if c in rhs]
    free_b = [c for c in only_b if c in rhs]

    def arrange(x, term, groups):
        order = [term.index(c) for g in groups for c in g]
        rest = [i for i in range(len(term)) if i not in order]   # summed-out singleton dims
        x = permute(x, tuple(order + rest))
        return reshape(x, tuple(math.prod(sizes[c] for c in g) for g in groups))

    A = arrange(a, ta, [batch, free_a, contract])
    B = arrange(b, tb, [batch, contract, free_b])
    out = matmul(A, B)
    out = reshape(out, tuple(sizes[c] for c in batch + free_a + free_b))
    order = batch + free_a + free_b
    return permute(out, tuple(order.index(c) for c in rhs)) if order != list(rhs) else out


@composite
def tensordot(a, b, dims=2):
    """Sum of products over paired dimensions; a pair whose one side has size 1 broadcasts
    (the other side is summed over it first, as torch)."""
    if isinstance(dims, int):
        dims_a, dims_b = list(range(a.ndim - dims, a.ndim)), list(range(dims))
    else:
        dims_a, dims_b = [list(d) if isinstance(d, (list, tuple)) else [d] for d in dims]
    dims_a = [d % a.ndim if a.ndim else d for d in dims_a]
    dims_b = [d % b.ndim if b.ndim else d for d in dims_b]
    for da, db in zip(dims_a, dims_b):
        sa, sb = a.shape[da], b.shape[db]
        if sb == 1 and sa != 1:
            a = sum(a, da, keepdim=True)
        elif sa == 1 and sb != 1:
            b = sum(b, db, keepdim=True)
        elif sa != sb:
            raise op_error("tensordot", f"contracted dimensions need to match, but first has "
                           f"size {sa} in dim {da} and second has size {sb} in dim {db}")
    free_a = [i for i in range(a.ndim) if i not in dims_a]
    free_b = [i for i in range(b.ndim) if i not in dims_b]
    k = math.prod(a.shape[i] for i in dims_a)
    rows, cols = (-1, -1) if k else (math.prod(a.shape[i] for i in free_a),   # (-1, 0): no size
                                     math.prod(b.shape[i] for i in free_b))
    A = reshape(permute(a, tuple(free_a + dims_a)), (rows, k))
    B = reshape(permute(b, tuple(dims_b + free_b)), (k, cols))
    return reshape(matmul(A, B), tuple(a.shape[i] for i in free_a) +
                   tuple(b.shape[i] for i in free_b))
