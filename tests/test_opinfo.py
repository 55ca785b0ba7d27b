"""kiln against PyTorch on PyTorch's own operator samples (`tests/opinfo_sweep.py`).

Every OpInfo of `op_db` runs in six modes: float32, int64, bool, complex64 and float16 values
(float16 without the ops in `tests/opinfo_known/half.py` SKIPPED, for CI time), float64 values
with gradients. An op must match torch on every sample torch accepts, unless
`tests/opinfo_known` lists it; a listed op that now matches fails too, so the lists only shrink.
"""

import pytest

pytest.importorskip("expecttest")     # torch's OpInfo module imports it

import torch  # noqa: E402

from tests import opinfo_sweep  # noqa: E402
from tests.opinfo_known import bools, complex, core, half, index, linalg, nn  # noqa: E402

KNOWN = {**core.KNOWN, **index.KNOWN, **nn.KNOWN, **linalg.KNOWN, **bools.KNOWN,
         **complex.KNOWN, **half.KNOWN}
MODES = {"float32": (torch.float32, False), "int64": (torch.int64, False),
         "float64_grad": (torch.float64, True), "bool": (torch.bool, False),
         "complex64": (torch.complex64, False), "float16": (torch.float16, False)}
SKIPPED = {"float16": half.SKIPPED}
OPS = {opinfo_sweep.label(op): op for op in opinfo_sweep.ops()}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", sorted(OPS))
def test_matches_torch(name, mode):
    dtype, grad = MODES[mode]
    if name in SKIPPED.get(mode, ()):
        pytest.skip(f"{name} is not run in the {mode} mode (tests/opinfo_known, for CI time)")
    counts, first = opinfo_sweep.check(OPS[name], dtype, grad)
    bad = [k for k in ("wrong", "error", "timeout", "missing") if k in counts]
    if (name, mode) in KNOWN:
        assert bad, (f"{name} ({mode}) now matches torch on all {counts.get('ok', 0)} samples: "
                     f"delete its line from tests/opinfo_known")
    else:
        assert not bad, f"{name} ({mode}): {dict(counts)}; {bad[0]}: {first.get(bad[0], '')}"
