"""Composites recovered from primitives for ONNX: Conv, Gemm, BatchNormalization, MaxPool,
Softmax, LogSoftmax and LayerNormalization.

A node's provenance scope may name the composite that made it (`conv2d`), but not the
arguments it was called with (stride, padding, which input is the weight), so a composite is
recognized by the exact primitive chain kiln's implementation traces, read backwards from its
last node (kiln/nn/functional.py: `conv2d`, `linear`, `batch_norm` in eval mode, `max_pool2d`,
`softmax`, `log_softmax`, `layer_norm`). Max pooling's windows are a chain of reshapes and
permutes whose meaning the shapes alone do not pin down: that chain is run on a numbered test
image and compared with the windows of each candidate kernel and stride. A match emits one ONNX
op for that node; the primitives inside the chain are still converted, and the exporter drops
the ONNX nodes no output needs, so a chain value used elsewhere stays correct. Anything that
does not match exactly goes through the primitive table.
"""

from __future__ import annotations

import math

from kiln.ir.graph import Graph, Value
from kiln.ir.ops import PRIMITIVES


def find_composites(graph: Graph) -> dict:
    """Node -> a function `emit(builder) -> ONNX name` computing that node as one op."""
    producer = graph.producers()
    found = {}
    for n in graph.nodes:
        for match in (_conv, _gemm, _batch_norm, _softmax, _log_softmax, _layer_norm,
                      _max_pool):
            emit = match(n, producer)
            if emit is not None:
                found[n] = emit
                break
    return found


def _made_by(v, op: str, producer: dict, **attrs):
    """The node producing `v` when it is `op` with these attributes, else None."""
    n = producer.get(v) if isinstance(v, Value) else None
    if n is None or n.op != op:
        return None
    given = n.attr_dict
    if any(given.get(k) != want for k, want in attrs.items()):
        return None
    return n


def _conv(n, producer):
    """permute(reshape(matmul(reshape(unfold(pad?(x))), permute(reshape(permute(W))))))."""
    if n.op != "permute" or n.attr_dict["perm"] != (0, 3, 1, 2):
        return None
    back = _made_by(n.inputs[0], "reshape", producer)
    mm = back and _made_by(back.inputs[0], "matmul", producer)
    rows = mm and _made_by(mm.inputs[0], "reshape", producer)
    unfold = rows and _made_by(rows.inputs[0], "unfold", producer)
    wt = mm and _made_by(mm.inputs[1], "permute", producer, perm=(1, 0))
    wr = wt and _made_by(wt.inputs[0], "reshape", producer)
    wp = wr and _made_by(wr.inputs[0], "permute", producer, perm=(0, 2, 3, 1))
    if not (unfold and wp):
        return None
    weight, x = wp.inputs[0], unfold.inputs[0]
    a = unfold.attr_dict
    o, c, kh, kw = weight.shape
    if tuple(a["kernel"]) != (kh, kw) or x.shape[1] != c or n.out.shape[1] != o or \
            len(mm.inputs[0].shape) != 2:
        return None
    pads = [0, 0, 0, 0]
    pad = _made_by(x, "pad", producer)
    if pad is not None and pad.attr_dict["value"] == 0 and \
            tuple(pad.attr_dict["pads"][:2]) == ((0, 0), (0, 0)):
        (top, bottom), (left, right) = pad.attr_dict["pads"][2:]
        pads, x = [top, left, bottom, right], pad.inputs[0]

    def emit(b):
        return b.op("Conv", [b.names[x], b.names[weight]], kernel_shape=[kh, kw],
                    strides=list(a["stride"]), dilations=list(a["dilation"]), pads=pads,
                    group=1)
    return emit


def _gemm(n, producer):
    """add(matmul(a, permute(W, (1, 0))), bias): `linear` on a matrix."""
    if n.op != "add" or not all(isinstance(v, Value) for v in n.inputs):
        return None
    for mm_value, bias in (n.inputs, n.inputs[::-1]):
        mm = _made_by(mm_value, "matmul", producer)
        wt = mm and _made_by(mm.inputs[1], "permute", producer, perm=(1, 0))
        if wt is None or len(mm.inputs[0].shape) != 2 or bias.shape != mm.out.shape[-1:] or \
                n.out.shape != mm.out.shape:
            continue
        a, weight = mm.inputs[0], wt.inputs[0]

        def emit(b, a=a, weight=weight, bias=bias):
            return b.op("Gemm", [b.names[a], b.names[weight], b.names[bias]], transB=1)
        return emit
    return None


def _batch_norm(n, producer):
    """add(mul(sub(x, mean'), mul(div(1, sqrt(add(var', eps))), weight')), bias'), where v'
    is reshape(v, (1, C, 1, ...)): eval-mode `batch_norm` with an affine weight and bias."""
    if n.op != "add":
        return None
    body = _made_by(n.inputs[0], "mul", producer)
    bias = _channel(n.inputs[1], producer, n.out.shape)
    centered = body and _made_by(body.inputs[0], "sub", producer)
    scale = body and _made_by(body.inputs[1], "mul", producer)
    mean = centered and _channel(centered.inputs[1], producer, n.out.shape)
    inv = scale and _made_by(scale.inputs[0], "div", producer)
    weight = scale and _channel(scale.inputs[1], producer, n.out.shape)
    root = inv and inv.inputs[0] == 1.0 and _made_by(inv.inputs[1], "sqrt", producer)
    shifted = root and _made_by(root.inputs[0], "add", producer)
    if not (shifted and bias is not None and mean is not None and weight is not None):
        return None
    var, eps = _channel(shifted.inputs[0], producer, n.out.shape), shifted.inputs[1]
    x = centered.inputs[0]
    if var is None or isinstance(eps, Value) or x.shape != n.out.shape:
        return None

    def emit(b):
        return b.op("BatchNormalization", [b.names[v] for v in (x, weight, bias, mean, var)],
                    epsilon=float(eps))
    return emit


def _channel(v, producer, shape):
    """The (C,) tensor `v` reshapes to (1, C, 1, ...) for an input of `shape`, else None."""
    r = _made_by(v, "reshape", producer)
    if r is None or len(shape) < 2:
        return None
    c = shape[1]
    want = (1, c) + (1,) * (len(shape) - 2)
    src = r.inputs[0]
    if r.attr_dict["shape"] != want or src.shape != (c,) or math.prod(src.shape) != c:
        return None
    return src


def _softmax(n, producer):
    """div(e, sum(e, a, keepdim)) with e = exp(sub(x, max(x, a, keepdim)))."""
    if n.op != "div" or not all(isinstance(v, Value) for v in n.inputs):
        return None
    e, total = n.inputs
    found = _exp_shifted(e, producer)
    s = _made_by(total, "sum", producer, keepdim=True)
    if found is None or s is None or s.inputs[0] is not e or s.attr_dict["axes"] != found[1]:
        return None
    x, (axis,) = found
    return lambda b: b.op("Softmax", [b.names[x]], axis=axis)


def _log_softmax(n, producer):
    """sub(d, log(sum(exp(d), a, keepdim))) with d = sub(x, max(x, a, keepdim))."""
    if n.op != "sub" or not all(isinstance(v, Value) for v in n.inputs):
        return None
    d, logged = n.inputs
    lg = _made_by(logged, "log", producer)
    s = lg and _made_by(lg.inputs[0], "sum", producer, keepdim=True)
    e = s and _made_by(s.inputs[0], "exp", producer)
    if e is None or e.inputs[0] is not d:
        return None
    found = _exp_shifted(e.out, producer)
    if found is None or s.attr_dict["axes"] != found[1]:
        return None
    x, (axis,) = found
    return lambda b: b.op("LogSoftmax", [b.names[x]], axis=axis)


def _exp_shifted(e, producer):
    """(x, axes) when `e` is exp(sub(x, max(x, axes, keepdim=True))) over one axis."""
    ex = _made_by(e, "exp", producer)
    sub = ex and _made_by(ex.inputs[0], "sub", producer)
    m = sub and _made_by(sub.inputs[1], "max", producer, keepdim=True)
    if m is None or m.inputs[0] is not sub.inputs[0] or len(m.attr_dict["axes"]) != 1:
        return None
    return sub.inputs[0], m.attr_dict["axes"]


def _layer_norm(n, producer):
    """add(mul(mul(c, div(1, sqrt(add(mean(c * c), eps)))), weight), bias) with
    c = sub(x, mean(x)), the means over the trailing dims `weight` covers."""
    if n.op != "add" or not all(isinstance(v, Value) for v in n.inputs):
        return None
    scaled, bias = n.inputs
    sm = _made_by(scaled, "mul", producer)
    if sm is None or not isinstance(sm.inputs[1], Value):
        return None
    norm, weight = sm.inputs
    k = len(weight.shape)
    x_shape = n.out.shape
    if k == 0 or bias.shape != weight.shape or tuple(x_shape[-k:]) != weight.shape:
        return None
    axes = tuple(range(len(x_shape) - k, len(x_shape)))
    count = float(math.prod(weight.shape))
    nm = _made_by(norm, "mul", producer)
    inv = nm and _made_by(nm.inputs[1], "div", producer)
    root = inv and inv.inputs[0] == 1.0 and _made_by(inv.inputs[1], "sqrt", producer)
    shifted = root and _made_by(root.inputs[0], "add", producer)
    if not shifted or isinstance(shifted.inputs[1], Value):
        return None
    c = nm.inputs[0]
    var = _mean_of(shifted.inputs[0], axes, count, producer)
    sq = var and _made_by(var, "mul", producer)
    centered = _made_by(c, "sub", producer)
    if not (sq and sq.inputs[0] is c and sq.inputs[1] is c and centered):
        return None
    x = centered.inputs[0]
    if _mean_of(centered.inputs[1], axes, count, producer) is not x:
        return None
    eps = float(shifted.inputs[1])
    return lambda b: b.op("LayerNormalization", [b.names[x], b.names[weight], b.names[bias]],
                          axis=-k, epsilon=eps)


def _mean_of(v, axes, count, producer):
    """What `v` is the mean of (div(sum(t, axes, keepdim=True), count)), else None."""
    d = _made_by(v, "div", producer)
    s = d and d.inputs[1] == count and _made_by(d.inputs[0], "sum", producer, keepdim=True,
                                                 axes=axes)
    return s.inputs[0] if s else None


def _max_pool(n, producer):
    """sum(where(ranks == best, S, 0), 0) with best = max(where((S == max(S)) | (S != S),
    ranks, 0), 0) and ranks = arange(K, 0, -1): max pooling's first maximum of the windows S
    of x (kiln/nn/functional.py `max_pool2d`)."""
    if n.op != "sum" or n.attr_dict["axes"] != (0,) or n.attr_dict["keepdim"]:
        return None
    pick = _made_by(n.inputs[0], "where", producer)
    if pick is None or pick.inputs[2] != 0 or not isinstance(pick.inputs[1], Value):
        return None
    first = _made_by(pick.inputs[0], "eq", producer)
    best = first and _made_by(first.inputs[1], "max", producer)
    rank = best and _made_by(best.inputs[0], "where", producer)
    marks = rank and _made_by(rank.inputs[0], "bitwise_or", producer)
    is_top = marks and _made_by(marks.inputs[0], "eq", producer)
    windows = pick.inputs[1]
    if not (is_top and is_top.inputs[0] is windows) or len(windows.shape) != 5:
        return None
    return _pool_emitter(windows, producer, n.out.shape)


_WINDOW_OPS = frozenset(["reshape", "permute", "slice", "cat", "expand", "flip"])


def _pool_emitter(windows, producer, out_shape):
    """The MaxPool computing `out_shape` from the windows `windows` (K, N, C, oh, ow), when
    those are exactly some kernel's non-padded windows of an input x (checked by running the
    movement chain that makes them on a numbered image)."""
    # the movement nodes the windows come from, back to the one value they all read
    chain, sources, todo, seen = [], set(), [windows], set()
    while todo:
        v = todo.pop()
        if v in seen:
            continue
        seen.add(v)
        p = producer.get(v)
        if p is not None and p.op in _WINDOW_OPS:
            chain.append(p)
            todo += p.value_inputs
        else:
            sources.add(v)
    if len(sources) != 1 or not chain:
        return None
    (x,) = sources
    if len(x.shape) != 4:
        return None
    k, n, c, oh, ow = windows.shape
    h, w = x.shape[2:]
    if (n, c, oh, ow) != tuple(out_shape) or x.shape[:2] != (n, c):
        return None
    import numpy as np
    image = np.arange(math.prod(x.shape), dtype=np.int64).reshape(x.shape)
    env = {x: image}
    for p in sorted(chain, key=lambda node: node.out.id):
        args = [env[v] if isinstance(v, Value) else v for v in p.inputs]
        env[p.out] = PRIMITIVES[p.op].impl(np, *args, **p.attr_dict)
    got = env[windows]
    for kh in range(1, k + 1):
        if k % kh:
            continue
        kw = k // kh
        for sh in range(1, kh + 1):
            for sw in range(1, kw + 1):
                if (h - kh) // sh + 1 != oh or (w - kw) // sw + 1 != ow:
                    continue
                want = np.stack([image[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
                                 for i in range(kh) for j in range(kw)])
                if np.array_equal(got, want):
                    return lambda b, x=x, kernel=[kh, kw], strides=[sh, sw]: b.op(
                        "MaxPool", [b.names[x]], kernel_shape=kernel, strides=strides)
    return None
