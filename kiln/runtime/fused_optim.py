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
Division and square roots are the correctly rounded ones (`div_rn`, `sqrt_rn`), as on the CPU.

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
def _pointer(row, slot):
    """The address in slot `slot` of a tensor's row, as a pointer to its elements."""
    return tl.load(row + slot).to(tl.pointer_type({element}))


@triton.jit
def _hyper(row, slot):
    """The float64 hyperparameter in slot `slot` of a tensor's row, in the compute type."""
    return tl.load(row + slot).to(tl.float64, bitcast=True).to({compute})
'''

# The update reads as the per-op one in kiln.optim.adam does, operation for operation
_ADAM = _HEADER + '''

@triton.jit
def {name}(tensors, programs, NUM_PROGRAMS: tl.constexpr, BLOCK: tl.constexpr,
           AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr, WEIGHT_DECAY: tl.constexpr):
    # WEIGHT_DECAY: 0 none, 1 L2 (added to the gradient), 2 decoupled (AdamW)
    pid = tl.program_id(0)
    row = tensors + tl.load(programs + 2 * pid) * {row}
    offsets = tl.load(programs + 2 * pid + 1) + tl.arange(0, BLOCK)
    mask = offsets < tl.load(row + 5)
    param, grad = _pointer(row, 0) + offsets, _pointer(row, 1) + offsets
    exp_avg, exp_avg_sq = _pointer(row, 2) + offsets, _pointer(row, 3) + offsets
    p = tl.load(param, mask=mask, other=0.0).to({compute})
    g = tl.load(grad, mask=mask, other=0.0).to({compute})
    m = tl.load(exp_avg, mask=mask, other=0.0).to({compute})
    v = tl.load(exp_avg_sq, mask=mask, other=0.0).to({compute})
    if MAXIMIZE:
        g = -g
    if WEIGHT_DECAY == 1:
        g = g + p * _hyper(row, 8)
    if WEIGHT_DECAY == 2:
        p = p * _hyper(row, 9)
    m = m + _hyper(row, 6) * (g - m)
    v = v * _hyper(row, 7) + _hyper(row, 10) * g * g
    if AMSGRAD:
        max_exp_avg_sq = _pointer(row, 4) + offsets
        vmax = tl.load(max_exp_avg_sq, mask=mask, other=0.0).to({compute})
        vmax = tl.maximum(vmax, v, propagate_nan=tl.PropagateNan.ALL)
        tl.store(max_exp_avg_sq, vmax.to({element}), mask=mask)
        denom = tl.div_rn(tl.sqrt_rn(vmax), _hyper(row, 11)) + _hyper(row, 12)
    else:
        denom = tl.div_rn(tl.sqrt_rn(v), _hyper(row, 11)) + _hyper(row, 12)
    p = p + tl.div_rn(m, denom) * _hyper(row, 13)
    tl.store(exp_avg, m.to({element}), mask=mask)
    tl.store(exp_avg_sq, v.to({element}), mask=mask)
    tl.store(param, p.to({element}), mask=mask)
'''

# as kiln.optim.sgd's per-op update; slot 4 (momentum buffer) is read only with MOMENTUM
_SGD = _HEADER + '''

@triton.jit
def {name}(tensors, programs, NUM_PROGRAMS: tl.constexpr, BLOCK: tl.constexpr,
           MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr,
           WEIGHT_DECAY: tl.constexpr):
    pid = tl.program_id(0)
    row = tensors + tl.load(programs + 2 * pid) * {row}
    offsets = tl.load(programs + 2 * pid + 1) + tl.arange(0, BLOCK)
    mask = offsets < tl.load(row + 5)
    param, grad = _pointer(row, 0) + offsets, _pointer(row, 1) + offsets
    p = tl.load(param, mask=mask, other=0.0).to({compute})
    g = tl.load(grad, mask=mask, other=0.0).to({compute})
    if MAXIMIZE:
        g = -g
    if WEIGHT_DECAY:
        g = g + p * _hyper(row, 8)
    if MOMENTUM:
        buffer = _pointer(row, 4) + offsets
        if _hyper(row, 10) != 0:        # the first step: the buffer starts as the gradient
            b = g
        else:
            b = tl.load(buffer, mask=mask, other=0.0).to({compute})
            b = b * _hyper(row, 7) + g * _hyper(row, 9)
        tl.store(buffer, b.to({element}), mask=mask)
        if NESTEROV:
            g = g + b * _hyper(row, 7)
        else:
            g = b
    p = p + g * _hyper(row, 6)
    tl.store(param, p.to({element}), mask=mask)
'''

_SOURCES = {"adam": _ADAM, "sgd": _SGD}


def render(kind: str, dtype: str, flags: dict, num_programs: int) -> TritonKernel:
    """The fused `kind` ("adam" or "sgd") kernel for tensors of NumPy dtype `dtype`, with the
    update's `flags` (constexprs: AMSGRAD, MAXIMIZE, WEIGHT_DECAY for Adam; MOMENTUM, NESTEROV,
    MAXIMIZE, WEIGHT_DECAY for SGD) and `num_programs` blocks to update."""
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"fused {kind} update: tensors of dtype {dtype} are not supported "
                        f"(expected one of {sorted(SUPPORTED_DTYPES)})")
    name = f"kiln_fused_{kind}_{dtype}"
    source = _SOURCES[kind].format(name=name, row=ROW, element=_ELEMENT[dtype],
                                   compute=_COMPUTE[dtype])
    constexprs = {"NUM_PROGRAMS": num_programs, "BLOCK": BLOCK,
                  **{k: int(v) for k, v in flags.items()}}
    signature = {"tensors": "*i64", "programs": "*i64", **{k: "constexpr" for k in constexprs}}
    return TritonKernel(name=name, source=source, arg_names=tuple(signature),
                        signature=signature, constexprs=constexprs, grid=(num_programs,),
                        num_warps=NUM_WARPS)


def program_table(numels: list[int]) -> np.ndarray:
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
        self._launchers: dict = {}      # (dtype, flags, num_programs, device module) -> launcher
        self._programs: dict = {}       # (numels, device module) -> program table on the device

    def __call__(self, arrays: list[list], hyper: np.ndarray, flags: dict, xp) -> None:
        """Update in place: `arrays[i]` are tensor i's arrays by slot (param, grad, state
        arrays; None for a slot the update does not read), all contiguous, of one dtype, on
        one device (`xp`: cupy, or numpy to run in Triton's interpreter); `hyper[i]` are its
        float64 hyperparameters for slots 6 on."""
        if not arrays:
            return
        numels = tuple(int(a[0].size) for a in arrays)
        table = np.zeros((len(arrays), ROW), np.int64)
        for i, slots in enumerate(arrays):
            table[i, :len(slots)] = [0 if a is None else _address(a, xp) for a in slots]
        table[:, 5] = numels
        table[:, 6:6 + hyper.shape[1]] = hyper.view(np.int64)
        programs = self._programs.get((numels, xp))
        if programs is None:
            programs = self._programs[(numels, xp)] = xp.asarray(program_table(list(numels)))
        dtype = np.dtype(arrays[0][0].dtype).name
        key = (dtype, tuple(sorted(flags.items())), len(programs), xp)
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


def _address(array, xp) -> int:
    return array.ctypes.data if xp is np else array.data.ptr


ADAM = FusedUpdate("adam")
SGD = FusedUpdate("sgd")
