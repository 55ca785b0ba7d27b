"""The first part of benchmarks/gpu_check.sh: the versions, then the checks whose failure would
fail every later part, so a GPU call is not spent finding that out test by test.

1. prints Python's, NumPy's, Triton's and CuPy's versions, the CUDA runtime and driver versions
   and the device (`kiln` was checked against Triton 3.6 and 3.9, cupy-cuda13x 14.2);
2. runs, on the host, the tests of kiln's launch arguments against this Triton's launcher
   (tests/runtime/test_triton_launcher_args.py) and of the fake CUDA's names against this
   CuPy (tests/test_fake_cuda.py's checks of CuPy's surface);
3. launches one generated kernel on the device through kiln's lean launcher and compares it with
   NumPy, and runs an in-place update of a cuda tensor (issue 16's `flags.writeable`).

Exits 0 when all pass, 1 with the failing step named otherwise.

    python benchmarks/gpu_preflight.py
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def versions() -> None:
    import numpy
    import triton
    print(f"python {platform.python_version()}, numpy {numpy.__version__}, "
          f"triton {triton.__version__}")
    try:
        import cupy
    except Exception as e:        # noqa: BLE001 - report whatever stops the import
        print(f"cupy: cannot import ({e!r})")
        return
    print(f"cupy {cupy.__version__}")
    try:
        runtime = cupy.cuda.runtime
        props = runtime.getDeviceProperties(runtime.getDevice())
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        print(f"CUDA runtime {runtime.runtimeGetVersion()}, driver {runtime.driverGetVersion()}, "
              f"device {name} (sm_{props['major']}{props['minor']})")
    except Exception as e:        # noqa: BLE001
        print(f"no CUDA device: {e!r}")


def host_checks() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/runtime/test_triton_launcher_args.py",
         "tests/test_fake_cuda.py::test_fake_names_are_real_cupys",
         "tests/test_fake_cuda.py::test_fake_refuses_the_keywords_cupy_lacks"],
        cwd=ROOT, capture_output=True, text=True)
    print(out.stdout[-3000:] + out.stderr[-2000:])
    return out.returncode == 0


def device_checks() -> None:
    import numpy as np

    import kiln
    import kiln.nn.functional as F
    from kiln.codegen.kernel import lower
    from kiln.codegen.triton import render_triton
    from kiln.runtime import triton_launch
    from tests.codegen.cases import BY_NAME

    import cupy as cp
    case = BY_NAME["layer_norm"]
    tk = render_triton(lower(case.graph()))
    arrays = [cp.asarray(a) for a in case.arrays(seed=0)]
    outs = [cp.empty(v.shape, v.dtype.np) for v in case.graph().outputs]
    triton_launch.kernel_launcher(tk, "cuda")(arrays, outs)
    want = [np.empty(v.shape, v.dtype.np) for v in case.graph().outputs]
    triton_launch.launch(tk, case.arrays(seed=0), want, "interpreter")
    for got, ref in zip(outs, want):
        np.testing.assert_allclose(cp.asnumpy(got), ref, rtol=1e-5, atol=1e-5)
    print("one generated kernel launched by kiln's launcher: matches the interpreter")
    x = kiln.ones(4, device="cuda")
    x.add_(1.0)
    y = kiln.compile(lambda t: F.gelu(t * 2.0))(x)
    assert x.cpu().tolist() == [2.0] * 4 and y.device.type == "cuda"
    print("an in-place update and a compiled call on cuda tensors: fine")


def main() -> int:
    versions()
    if not host_checks():
        print("PREFLIGHT FAILED: kiln's launch arguments or the fake CUDA's names disagree with "
              "this Triton/CuPy (the log above says which)")
        return 1
    try:
        device_checks()
    except Exception as e:        # noqa: BLE001 - the message is the report
        import traceback
        traceback.print_exc()
        print(f"PREFLIGHT FAILED on the device: {e!r}")
        return 1
    print("preflight passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
