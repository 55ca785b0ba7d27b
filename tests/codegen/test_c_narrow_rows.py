"""Short-row reductions over masks on the C backend: compiled replays equal eager.

GCC 12 with AVX (-O2/-O3 with -mavx2 or -march=native) miscompiled kiln's unrolled reduction
(16 or more rows of at most 16 elements, written out element by element) when an element was
selected from a load: FlexAttention's first way of finding rows with nothing allowed,
`x = s.masked_fill(~m, c)` then `(x == c).all(-1)`, replayed with kept elements zeroed. Loop
if-conversion made the selected loads masked loads and the vectorizer gave every group the
first group's mask; unrolled kernels are now built without that pass (`NO_IF_CONVERSION` in
kiln/codegen/c.py; more cases in test_c_fuzz_regressions.py). The patterns below are the ones
users write with masks: each is compiled with the C backend and its replays compared with
eager on new data.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import kiln


def _fill_then_all(s, m):
    x = s.masked_fill(~m, -5.0)
    return x.masked_fill((x == -5.0).all(dim=-1, keepdim=True), 0.0)


def _masked_softmax(s, m):
    return s.masked_fill(~m, -math.inf).softmax(-1).nan_to_num(0.0)


def _masked_max(s, m):
    return kiln.where(m, s, -1e9).amax(-1) + m.any(-1).float()


def _count_kept(s, m):
    return (s * m).sum(-1) / m.sum(-1).clamp_min(1)


PATTERNS = {"fill_then_all": _fill_then_all, "masked_softmax": _masked_softmax,
            "masked_max": _masked_max, "count_kept": _count_kept}


@pytest.mark.parametrize("shape", [(16, 4), (16, 8), (32, 8), (16, 16), (8, 8), (48, 3)])
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_compiled_replays_equal_eager(name, shape):
    fn = PATTERNS[name]
    compiled = kiln.compile(fn, backend="c")
    rng = np.random.default_rng(sum(shape))
    for step in range(3):              # the first call traces; the others replay the C kernels
        s = kiln.tensor(rng.standard_normal(shape).astype(np.float32))
        mask = rng.random(shape) > 0.5
        mask[step % shape[0]] = False      # a row with nothing kept
        m = kiln.tensor(mask)
        np.testing.assert_allclose(compiled(s, m).numpy(), fn(s, m).numpy(), rtol=1e-6,
                                   atol=1e-6, err_msg=f"{name}{shape}, call {step}")
