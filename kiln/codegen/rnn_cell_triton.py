"""Triton kernels for eager LSTM and GRU cell steps on a GPU: forward in one launch, each
gradient node in one launch.

The step is (gates, c) -> (h, c') with gates = [i | f | g | o] along the last dimension (each H
wide) and c' = sigmoid(f) c + sigmoid(i) tanh(g), h = sigmoid(o) tanh(c'), as
`kiln.tracer.functional.rnn_cells` computes it on the CPU. Eagerly on a GPU the composite was
about 18 CuPy calls forward and 40 backward per step; these kernels do the forward in one
launch and each gradient node (c' and h, see lstm_cell) in one, recomputing the activations
from the gates instead of saving them. A compiled program never uses them (a trace records the
composite, which the compiler fuses).

The kernels are pointwise over the N = rows * H elements of c (C-contiguous arrays): element k
is column k % H of row k // H, whose four gates sit at row * 4H + k % H + {0, H, 2H, 3H}.

    forward          c' = sf * c + si * tg          h = so * tanh(c')
    gradient of c'   dgates = [dc tg si(1-si) | dc c sf(1-sf) | dc si (1-tg^2) | 0]
                     dc_prev = dc sf
    gradient of h    dgates = [0 | 0 | 0 | dh tc so(1-so)]   dc' = dh so (1 - tc^2),  tc = tanh(c')

The GRU step is (xw, hw, h) -> h' with xw, hw = [r | z | n] (each H wide), r = sigmoid(x_r +
h_r), z = sigmoid(x_z + h_z), n = tanh(x_n + r h_n), h' = (1 - z) n + z h; its one gradient
kernel writes dxw = [dr | dz | dn], dhw = [dr | dz | dn r] and dh = dh' z, with
dn = dh' (1 - z)(1 - n^2), dz = (dh' h - dh' n) z (1 - z), dr = dn h_n r (1 - r).

float32 divides correctly rounded (`div_rn`) and uses kiln's float32 tanh (within 2 ulp);
float64 uses the portable formulas. Both need no libdevice, so Triton's interpreter runs them.
"""

from __future__ import annotations

from kiln.codegen.triton import HELPER_DEPS, HELPERS, TritonKernel
from kiln.ir import dtypes as dt

DTYPES = {dt.float32: ("*fp32", "tl.float32", "_tanh32"),
          dt.float64: ("*fp64", "tl.float64", "_tanh")}
KINDS = ("forward", "grad_c", "grad_h", "gru_forward", "gru_grad")
BLOCK = 1024

_LOAD = '''
    k = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = k < N
    gate = (k // H) * (GATES * H) + k % H
    one = tl.full([BLOCK], 1.0, {compute})
'''

_BODIES = {
    "forward": ('(gates_ptr, c_ptr, h_ptr, c_new_ptr', '''
    si = {sigmoid}(tl.load(gates_ptr + gate, mask=ok, other=0.0))
    sf = {sigmoid}(tl.load(gates_ptr + gate + H, mask=ok, other=0.0))
    tg = {tanh}(tl.load(gates_ptr + gate + 2 * H, mask=ok, other=0.0))
    so = {sigmoid}(tl.load(gates_ptr + gate + 3 * H, mask=ok, other=0.0))
    c_new = sf * tl.load(c_ptr + k, mask=ok, other=0.0) + si * tg
    tl.store(c_new_ptr + k, c_new, mask=ok)
    tl.store(h_ptr + k, so * {tanh}(c_new), mask=ok)
'''),
    "grad_c": ('(gates_ptr, c_ptr, dc_ptr, dgates_ptr, dc_prev_ptr', '''
    si = {sigmoid}(tl.load(gates_ptr + gate, mask=ok, other=0.0))
    sf = {sigmoid}(tl.load(gates_ptr + gate + H, mask=ok, other=0.0))
    tg = {tanh}(tl.load(gates_ptr + gate + 2 * H, mask=ok, other=0.0))
    c = tl.load(c_ptr + k, mask=ok, other=0.0)
    dc = tl.load(dc_ptr + k, mask=ok, other=0.0)
    tl.store(dgates_ptr + gate, dc * tg * si * (one - si), mask=ok)
    tl.store(dgates_ptr + gate + H, dc * c * sf * (one - sf), mask=ok)
    tl.store(dgates_ptr + gate + 2 * H, dc * si * (one - tg * tg), mask=ok)
    tl.store(dgates_ptr + gate + 3 * H, one - one, mask=ok)
    tl.store(dc_prev_ptr + k, dc * sf, mask=ok)
'''),
    "grad_h": ('(gates_ptr, c_new_ptr, dh_ptr, dgates_ptr, dc_new_ptr', '''
    so = {sigmoid}(tl.load(gates_ptr + gate + 3 * H, mask=ok, other=0.0))
    tc = {tanh}(tl.load(c_new_ptr + k, mask=ok, other=0.0))
    dh = tl.load(dh_ptr + k, mask=ok, other=0.0)
    zero = one - one
    tl.store(dgates_ptr + gate, zero, mask=ok)
    tl.store(dgates_ptr + gate + H, zero, mask=ok)
    tl.store(dgates_ptr + gate + 2 * H, zero, mask=ok)
    tl.store(dgates_ptr + gate + 3 * H, dh * tc * so * (one - so), mask=ok)
    tl.store(dc_new_ptr + k, dh * so * (one - tc * tc), mask=ok)
'''),
    "gru_forward": ('(xw_ptr, hw_ptr, h_ptr, out_ptr', '''
    r = {sigmoid}(tl.load(xw_ptr + gate, mask=ok, other=0.0)
                  + tl.load(hw_ptr + gate, mask=ok, other=0.0))
    z = {sigmoid}(tl.load(xw_ptr + gate + H, mask=ok, other=0.0)
                  + tl.load(hw_ptr + gate + H, mask=ok, other=0.0))
    n = {tanh}(tl.load(xw_ptr + gate + 2 * H, mask=ok, other=0.0)
               + r * tl.load(hw_ptr + gate + 2 * H, mask=ok, other=0.0))
    tl.store(out_ptr + k, (one - z) * n + z * tl.load(h_ptr + k, mask=ok, other=0.0), mask=ok)
'''),
    "gru_grad": ('(xw_ptr, hw_ptr, h_ptr, dout_ptr, dxw_ptr, dhw_ptr, dh_ptr', '''
    r = {sigmoid}(tl.load(xw_ptr + gate, mask=ok, other=0.0)
                  + tl.load(hw_ptr + gate, mask=ok, other=0.0))
    z = {sigmoid}(tl.load(xw_ptr + gate + H, mask=ok, other=0.0)
                  + tl.load(hw_ptr + gate + H, mask=ok, other=0.0))
    h_n = tl.load(hw_ptr + gate + 2 * H, mask=ok, other=0.0)
    n = {tanh}(tl.load(xw_ptr + gate + 2 * H, mask=ok, other=0.0) + r * h_n)
    h = tl.load(h_ptr + k, mask=ok, other=0.0)
    g = tl.load(dout_ptr + k, mask=ok, other=0.0)
    dn = g * (one - z) * (one - n * n)
    dz = (g * h - g * n) * z * (one - z)
    dr = dn * h_n * r * (one - r)
    tl.store(dxw_ptr + gate, dr, mask=ok)
    tl.store(dxw_ptr + gate + H, dz, mask=ok)
    tl.store(dxw_ptr + gate + 2 * H, dn, mask=ok)
    tl.store(dhw_ptr + gate, dr, mask=ok)
    tl.store(dhw_ptr + gate + H, dz, mask=ok)
    tl.store(dhw_ptr + gate + 2 * H, dn * r, mask=ok)
    tl.store(dh_ptr + k, g * z, mask=ok)
'''),
}

_SIGMOID = '''
@triton.jit
def {name}(x):
    # 1 / (1 + exp(-x)), as the sigmoid primitive computes it
    one = tl.full(x.shape, 1.0, {compute})
    return {divide}
'''


def _helpers(name: str) -> list:
    """`name` and the helpers it calls, dependencies first."""
    out = []
    for dep in HELPER_DEPS.get(name, ()):
        out += [h for h in _helpers(dep) if h not in out]
    return out + [name]


def render_rnn_cell_kernel(kind: str, rows: int, hidden: int, dtype: dt.DType) -> TritonKernel:
    """The kernel `kind` for `rows` rows of `hidden` cells. LSTM: forward takes (gates, c) and
    writes (h, c'); grad_c takes (gates, c, dc) and writes (dgates, dc_prev); grad_h takes
    (gates, c', dh) and writes (dgates, dc'). GRU: gru_forward takes (xw, hw, h) and writes h';
    gru_grad takes (xw, hw, h, dh') and writes (dxw, dhw, dh)."""
    if kind not in KINDS:
        raise ValueError(f"lstm kernel: kind {kind!r} is not one of {KINDS}")
    if dtype not in DTYPES:
        raise ValueError(f"lstm kernel: dtype {dtype} is not supported; expected float32 or "
                         "float64")
    pointer, compute, tanh = DTYPES[dtype]
    name = (f"gru_cell_{kind[4:]}" if kind.startswith("gru") else f"lstm_cell_{kind}") + \
        f"_{dtype.name}"
    sigmoid = f"_sigmoid_{dtype.name}"
    divide = "tl.div_rn(one, one + tl.exp(-x))" if dtype is dt.float32 else \
        "one / (one + tl.exp(-x))"
    params, body = _BODIES[kind]
    helpers = "".join(HELPERS[h] for h in _helpers(tanh))
    source = (f"# {name}: an LSTM cell step's {kind} (kiln/codegen/rnn_cell_triton.py)\n"
              "import triton\nimport triton.language as tl\n" + helpers
              + _SIGMOID.format(name=sigmoid, compute=compute, divide=divide)
              + f"\n\n@triton.jit\ndef {name}{params}, N: tl.constexpr, H: tl.constexpr, "
              "GATES: tl.constexpr, BLOCK: tl.constexpr):"
              + _LOAD.format(compute=compute).rstrip("\n")
              + body.format(sigmoid=sigmoid, tanh=tanh))
    pointers = tuple(p.strip() for p in params.strip("(").split(","))
    numel = rows * hidden
    gates = 3 if kind.startswith("gru") else 4
    constexprs = dict(N=numel, H=hidden, GATES=gates, BLOCK=BLOCK)
    signature = {p: pointer for p in pointers}
    signature.update({k: "constexpr" for k in constexprs})
    grid = (max(1, -(-numel // BLOCK)),)
    return TritonKernel(name, source, pointers, signature, constexprs, grid, 4)


__all__ = ["DTYPES", "KINDS", "render_rnn_cell_kernel"]
