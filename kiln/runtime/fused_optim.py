"""Fused optimizer updates on the GPU: one Triton kernel launch updates a whole list of tensors.

Eager mode on a GPU is bound by the host: the per-op Adam update costs about 25 device calls
per parameter and reads the step count back to the host (a sync) for the bias corrections.
Here one launch per parameter group and dtype updates every parameter (and its moments) in
place, as PyTorch's `_fused_adam_` and `_fused_sgd_` do, and the host sends one small table per
launch:

    tensors   int64 [num_tensors, ROW]: per tensor the device addresses of its arrays (param,
              grad, then its state), its length, and its hyperparameters as float64 bits (the
              learning rate, the bias corrections of its own step count, ...), so a scheduler
              changing the learning rate or the step count advancing never rebuilds the kernel
    programs  int64 [num_programs, 2]: which tensor, and where in it, each program's block is
              (made once per list of tensor lengths and kept on the device)

The host computes the hyperparameters in float64 (Python floats), exactly as the per-op update
does, and the kernel rounds them to the compute dtype (float32 for float16 and float32
tensors, float64 for float64 ones), so the fused and the per-op updates agree to rounding.
Division and square roots round correctly (`div_rn` and `sqrt_rn` in float32, where Triton's
defaults are approximate), as on the CPU.

The kernels go through kiln's launcher (`kiln.runtime.triton_launch`): pointer arguments and
constexprs only. Each launch configuration's constexprs hold its number of programs (the
launcher keeps one grid per built kernel), so a group builds its kernel once and then only
launches it.
"""

from __future__ import annotations

import math

import numpy as np

from kiln.codegen.triton import TritonKernel
from kiln.runtime.triton_launch import CudaKernelLauncher, launch

BLOCK = 1024          # elements per program
NUM_WARPS = 4
ROW = 16              # int64 slots per tensor in the `tensors` table

# the Triton element type of each NumPy dtype the kernels take, and the type they compute in
_ELEMENT = {"float16": "tl.float16", "float32": "tl.float32", "float64": "tl.float64"}
_COMPUTE = {"float16": "tl.float32", "float32": "tl.float32", "float64": "tl.float64"}
SUPPORTED_DTYPES = frozenset(_ELEMENT)

_HEADER = '''\
import triton
import triton.language as tl


@triton.jit
def _pointer(row, slot, ALIGNED: tl.constexpr):
    """The address in slot `slot` of a tensor's row, as a pointer to its elements."""
    pointer = tl.load(row + slot).to(tl.pointer_type({element}))
    if ALIGNED:     # every address on a 16-byte boundary (checked): loads move 16 bytes
        pointer = tl.multiple_of(pointer, 16)
    return pointer


@triton.jit
def _hyper(row, slot):
    """The float64 hyperparameter in slot `slot` of a tensor's row, in the compute type."""
    return tl.load(row + slot).to(tl.float64, bitcast=True).to({compute})


@triton.jit
def _load(pointer, mask):
    """A block in the compute type; `mask` None for a full block (16-byte moves then)."""
    if mask is None:
        x = tl.load(pointer)
    else:
        x = tl.load(pointer, mask=mask, other=0.0)
    return x.to({compute})


@triton.jit
def _store(pointer, value, mask):
    if mask is None:
        tl.store(pointer, value.to({element}))
    else:
        tl.store(pointer, value.to({element}), mask=mask)


@triton.jit
def _div(a, b):
    return {div}


@triton.jit
def _sqrt(x):
    return {sqrt}
'''

# The update reads as the per-op one in kiln.optim.adam does, operation for operation
_ADAM = _HEADER + '''

@triton.jit
def _adam_block(row, offsets, mask, AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr,
                WEIGHT_DECAY: tl.constexpr, ALIGNED: tl.constexpr):
    # WEIGHT_DECAY: 0 none, 1 L2 (added to the gradient), 2 decoupled (AdamW)
    param = _pointer(row, 0, ALIGNED) + offsets
    grad = _pointer(row, 1, ALIGNED) + offsets
    exp_avg = _pointer(row, 2, ALIGNED) + offsets
    exp_avg_sq = _pointer(row, 3, ALIGNED) + offsets
    p = _load(param, mask)
    g = _load(grad, mask)
    m = _load(exp_avg, mask)
    v = _load(exp_avg_sq, mask)
    if MAXIMIZE:
        g = -g
    if WEIGHT_DECAY == 1:
        g = g + p * _hyper(row, 8)
    if WEIGHT_DECAY == 2:
        p = p * _hyper(row, 9)
    m = m + _hyper(row, 6) * (g - m)
    v = v * _hyper(row, 7) + _hyper(row, 10) * g * g
    if AMSGRAD:
        max_exp_avg_sq = _pointer(row, 4, ALIGNED) + offsets
        vmax = tl.maximum(_load(max_exp_avg_sq, mask), v, propagate_nan=tl.PropagateNan.ALL)
        _store(max_exp_avg_sq, vmax, mask)
        denom = _div(_sqrt(vmax), _hyper(row, 11)) + _hyper(row, 12)
    else:
        denom = _div(_sqrt(v), _hyper(row, 11)) + _hyper(row, 12)
    p = p + _div(m, denom) * _hyper(row, 13)
    _store(exp_avg, m, mask)
    _store(exp_avg_sq, v, mask)
    _store(param, p, mask)


'''

# as kiln.optim.sgd's per-op update; slot 4 (momentum buffer) is read only with MOMENTUM
_SGD = _HEADER + '''

@triton.jit
def _sgd_block(row, offsets, mask, MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr,
               MAXIMIZE: tl.constexpr, WEIGHT_DECAY: tl.constexpr, ALIGNED: tl.constexpr):
    param, grad = _pointer(row, 0, ALIGNED) + offsets, _pointer(row, 1, ALIGNED) + offsets
    p = _load(param, mask)
    g = _load(grad, mask)
    if MAXIMIZE:
        g = -g
    if WEIGHT_DECAY:
        g = g + p * _hyper(row, 8)
    if MOMENTUM:
        buffer = _pointer(row, 4, ALIGNED) + offsets
        if _hyper(row, 10) != 0:        # the first step: the buffer starts as the gradient
            b = g
        else:
            b = _load(buffer, mask) * _hyper(row, 7) + g * _hyper(row, 9)
        _store(buffer, b, mask)
        if NESTEROV:
            g = g + b * _hyper(row, 7)
        else:
            g = b
    p = p + g * _hyper(row, 6)
    _store(param, p, mask)


'''

# each program updates one BLOCK of one tensor, through the kind's `_<kind>_block`
_ENTRY = '''
@triton.jit
def {{name}}(tensors, programs, NUM_PROGRAMS: tl.constexpr, BLOCK: tl.constexpr,
        {params}):
    pid = tl.program_id(0)
    row = tensors + tl.load(programs + 2 * pid) * {{row}}
    start = tl.load(programs + 2 * pid + 1)
    # blocks start at multiples of BLOCK: with the pointers' alignment, 16-byte moves
    offsets = tl.max_contiguous(tl.multiple_of(start + tl.arange(0, BLOCK), BLOCK), BLOCK)
    numel = tl.load(row + 5)
    if start + BLOCK <= numel:      # a full block: no mask, so loads and stores vectorize
        _{kind}_block(row, offsets, None, {args})
    else:
        _{kind}_block(row, offsets, offsets < numel, {args})
'''

# each kernel's flags (constexprs), in the order of its parameters
_FLAGS = {"adam": ("AMSGRAD", "MAXIMIZE", "WEIGHT_DECAY", "ALIGNED"),
          "sgd": ("MOMENTUM", "NESTEROV", "MAXIMIZE", "WEIGHT_DECAY", "ALIGNED")}
_SOURCES = {kind: block + _ENTRY.format(
    kind=kind, params=", ".join(f"{f}: tl.constexpr" for f in flags), args=", ".join(flags))
    for (kind, flags), block in zip(_FLAGS.items(), (_ADAM, _SGD))}


def render(kind: str, dtype: str, flags: dict, num_programs: int) -> TritonKernel:
    """The fused `kind` ("adam" or "sgd") kernel for tensors of NumPy dtype `dtype`, with the
    update's `flags` (constexprs: AMSGRAD, MAXIMIZE, WEIGHT_DECAY for Adam; MOMENTUM, NESTEROV,
    MAXIMIZE, WEIGHT_DECAY for SGD; ALIGNED for both: every array on a 16-byte boundary) and
    `num_programs` blocks to update."""
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"fused {kind} update: tensors of dtype {dtype} are not supported "
                        f"(expected one of {sorted(SUPPORTED_DTYPES)})")
    name = f"kiln_fused_{kind}_{dtype}"
    # float32's division and square root in Triton are approximate unless asked to round
    # correctly; float64's always round correctly (and have no _rn forms)
    rounded = _COMPUTE[dtype] == "tl.float32"
    source = _SOURCES[kind].format(name=name, row=ROW, element=_ELEMENT[dtype],
                                   compute=_COMPUTE[dtype],
                                   div="tl.div_rn(a, b)" if rounded else "a / b",
                                   sqrt="tl.sqrt_rn(x)" if rounded else "tl.sqrt(x)")
    if set(flags) != set(_FLAGS[kind]):
        raise ValueError(f"fused {kind} update: flags {sorted(flags)}, expected "
                         f"{sorted(_FLAGS[kind])}")
    # in parameter order: the launcher passes the constexprs' values after the pointers
    constexprs = {"NUM_PROGRAMS": num_programs, "BLOCK": BLOCK,
                  **{k: int(flags[k]) for k in _FLAGS[kind]}}
    signature = {"tensors": "*i64", "programs": "*i64", **{k: "constexpr" for k in constexprs}}
    return TritonKernel(name=name, source=source, arg_names=tuple(signature),
                        signature=signature, constexprs=constexprs, grid=(num_programs,),
                        num_warps=NUM_WARPS)


def program_table(numels: tuple) -> np.ndarray:
    """(tensor index, first element) of every BLOCK-long block of tensors of these lengths."""
    blocks = [math.ceil(n / BLOCK) for n in numels]
    which = np.repeat(np.arange(len(numels), dtype=np.int64), blocks)
    first = np.concatenate([np.arange(b, dtype=np.int64) * BLOCK for b in blocks]) \
        if blocks else np.zeros(0, np.int64)
    return np.stack([which, first], axis=1)


class FusedUpdate:
    """Launches one fused kernel kind on lists of arrays, keeping what does not change between
    steps: the kernels (and their launchers) per configuration, and the program tables on the
    device per list of tensor lengths. `builds` counts the kernels rendered (each is built
    once for the GPU, by its first launch), `launches` the launches."""

    def __init__(self, kind: str):
        self.kind = kind
        self.builds = self.launches = 0
        self._launchers: dict = {}      # (dtype, flags, num_programs, device) -> launcher
        self._programs: dict = {}       # (numels, device) -> program table on the device

    def __call__(self, arrays: list[list], hyper: np.ndarray, flags: dict, xp) -> None:
        """Update in place: `arrays[i]` are tensor i's arrays by slot (param, grad, then up to
        three state arrays; None for a slot the update does not read), all contiguous, of one
        dtype, on one device (`xp`: cupy, or numpy to run in Triton's interpreter);
        `hyper[i]` are its float64 hyperparameters, for slots 6 on."""
        if not any(a[0].size for a in arrays):     # nothing to update (and no grid to launch)
            return
        if xp is np:
            self._launch(arrays, hyper, flags, xp, "cpu")
            return
        device = arrays[0][0].device
        with device:                # the arrays' GPU, whichever is current
            self._launch(arrays, hyper, flags, xp, device.id)

    def _launch(self, arrays, hyper, flags, xp, device) -> None:
        numels = tuple([a[0].size for a in arrays])
        table = np.zeros((len(arrays), ROW), np.int64)
        address = _host_address if xp is np else _device_address
        table[:, :5] = np.array([[address(a) for a in slots] + [0] * (5 - len(slots))
                                 for slots in arrays], np.int64)
        table[:, 5] = numels
        table[:, 6:6 + hyper.shape[1]] = hyper.view(np.int64)
        programs = self._programs.get((numels, device))
        if programs is None:
            if len(self._programs) >= _KEEP:        # lists of lengths that come and go
                self._programs.clear()
            programs = self._programs[(numels, device)] = xp.asarray(program_table(numels))
        dtype = arrays[0][0].dtype.name
        # the kernel may move 16 bytes at a time when every array starts on such a boundary
        # (CuPy's allocations do; a parameter viewing into another array may not)
        flags = dict(flags, ALIGNED=not (table[:, :5] % 16).any())
        key = (dtype, tuple(sorted(flags.items())), len(programs), device)
        launcher = self._launchers.get(key)
        if launcher is None:
            tk = render(self.kind, dtype, flags, len(programs))
            self.builds += 1
            launcher = self._launchers[key] = (
                CudaKernelLauncher(tk, tune=False) if xp is not np else
                (lambda inputs, outputs, tk=tk: launch(tk, inputs, outputs, "interpreter")))
        # the table is copied to the device asynchronously on the current stream, in order
        # with the launches before it, so it needs no buffer of its own kept between steps
        launcher([xp.asarray(table), programs], [])
        self.launches += 1


_KEEP = 64      # program tables kept per update kind


def _host_address(array) -> int:
    return 0 if array is None else array.ctypes.data


def _device_address(array) -> int:
    return 0 if array is None else array.data.ptr


ADAM = FusedUpdate("adam")
SGD = FusedUpdate("sgd")
