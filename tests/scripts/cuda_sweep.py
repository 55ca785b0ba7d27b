"""The user programs of `programs/` on the GPU path, without a GPU: each runs under kiln twice,
on the CPU and with `cuda` as the default device under the strict fake CUDA
(tests/fake_cuda.py), and the per-step losses are compared.

The programs are written for the CPU (`torch.from_numpy` batches, `device="cpu"` tensors,
`.numpy()` of results), so this sweep moves a CPU tensor that meets a cuda tensor in an op to
the GPU, where a user's `.to(device)` would have put it (`_move_to_cuda`, patched into the
dispatcher for this process only; kiln itself refuses such a mix, as PyTorch does). What is left
to see is kiln's GPU path: a NumPy-only call on a CuPy array, a host array where CuPy wants a
device one, a code path only cuda tensors take (the stepwise RNN, CuPy's kernels) giving other
values than the CPU's. A program that reads a cuda tensor with `.numpy()`, or that uses
bfloat16 (CuPy has none) or NCCL, stops with that error: the program's, not kiln's.

`python -m tests.scripts.cuda_sweep [--compiled] [PROGRAM ...]` prints one line per program:
SAME (losses agree to rtol 1e-3), DIFF (both runs' first losses) or ERR (the error and where).
Found this way: the packed-sequence dropout of a stepwise RNN (`nn/rnn.py`), a CPU value
written into a cuda tensor by `fill_`/setitem. A program under autocast("cpu") differs on
purpose (no CPU autocast on cuda tensors); an L-BFGS run drifts from float rounding.
"""

from __future__ import annotations

import sys
import time
import traceback
import warnings

import numpy as np

from tests import fake_cuda
from tests.scripts import harness


def _move_to_cuda(prim, args, arrays, first):
    """The dispatcher's device choice, looser for the sweep: a CPU tensor meeting a cuda one
    goes to the GPU."""
    from kiln.runtime.device import to_device
    from kiln.tracer.tensor import Tensor
    devices = [a.device for a in args if isinstance(a, Tensor)]
    device = next((d for d in devices if d.type == "cuda"), devices[0])
    for i, a in enumerate(args):
        if isinstance(a, Tensor) and a.device is not device:
            arrays[i] = to_device(a._data, device)
    return device


def sweep(programs: list[str], compiled: bool = False) -> None:
    import kiln
    from kiln.tracer import dispatch
    dispatch._move_cpu_scalars = _move_to_cuda
    warnings.simplefilter("ignore")
    for name in programs:
        start = time.time()
        try:
            kiln.set_default_device(None)
            cpu = harness.run(name, "kiln", seed=0)
            kiln.set_default_device("cuda")
            gpu = harness.run(name, "kiln", seed=0, compile=compiled)
            a = np.asarray(cpu["losses"], dtype=float)
            b = np.asarray(gpu["losses"], dtype=float)
            same = a.shape == b.shape and np.allclose(a, b, rtol=1e-3, atol=1e-4)
            print(f"{name}: {'SAME' if same else 'DIFF'} {a[:3]} {b[:3]} "
                  f"{time.time() - start:.1f}s", flush=True)
        except Exception as e:
            frames = traceback.extract_tb(e.__traceback__)[-4:]
            where = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in frames]
            print(f"{name}: ERR {type(e).__name__}: {str(e)[:200]} @ {where}", flush=True)
        finally:
            kiln.set_default_device(None)


if __name__ == "__main__":
    fake_cuda.install()
    argv = sys.argv[1:]
    compiled = "--compiled" in argv
    names = [a for a in argv if a != "--compiled"] or \
        sorted(p.stem for p in harness.PROGRAMS.glob("*.py"))
    sweep(names, compiled)
