"""PyTorch's operator samples through an op's Tensor method and its in-place method.

`tests/test_opinfo.py` calls each op as a function (`kiln.where(c, x, y)`). Users as often write
the method (`x.where(c, y)`, `x.masked_fill(m, 0)`) or the in-place twin (`x.add_(y)`,
`F.relu(x, inplace=True)`), which kiln binds separately (`kiln/tracer/methods.py`): the method
`x.where` once read its tensor as the condition. Here every OpInfo that has such a variant runs
through it (`tests/opinfo_sweep.py --variant`), its first few samples: methods in float32
values, in-place methods also in float64 with gradients (through the overwritten clone of the
sample's input, which the call must return).
An op fails unless the function itself is listed in `tests/opinfo_known` for that dtype mode
(the same departure reached through the method) or `VARIANT_KNOWN` lists it; a listed op that
now matches fails too, so the lists only shrink.
"""

import pytest

pytest.importorskip("expecttest")     # torch's OpInfo module imports it

import torch  # noqa: E402

from tests import opinfo_sweep  # noqa: E402
from tests.test_opinfo import KNOWN  # noqa: E402

MODES = {"float32": (torch.float32, False), "float64_grad": (torch.float64, True)}
# a method's gradient is its function's (test_opinfo.py); an in-place one's is its own
VARIANT_MODES = {"method": ("float32",), "inplace": ("float32", "float64_grad")}
SAMPLES = 3         # the first samples of each op: the binding, not the op, is under test here
NO_AS_STRIDED_ = "kiln has no as_strided_ (tests/api_exclusions.py: strides are NumPy's)"
VARIANT_KNOWN = {
    ("as_strided", "inplace", "float32"): NO_AS_STRIDED_,
    ("as_strided", "inplace", "float64_grad"): NO_AS_STRIDED_,
    ("addbmm", "inplace", "float32"): (
        "torch's addbmm_ resizes a self of shape [1] or [] to the product's [5, 10] (its out= "
        "path); kiln refuses an in-place op that would change self's shape, as torch does for "
        "the other in-place ops"),
    ("addbmm", "inplace", "float64_grad"): "as in float32",
}
CASES = [(opinfo_sweep.label(op), variant, mode) for op in opinfo_sweep.ops()
         for variant in ("method", "inplace")
         if (op.method_variant if variant == "method" else op.inplace_variant) is not None
         for mode in VARIANT_MODES[variant]]
OPS = {opinfo_sweep.label(op): op for op in opinfo_sweep.ops()}


@pytest.mark.parametrize("name,variant,mode", CASES)
def test_variant_matches_torch(name, variant, mode):
    dtype, grad = MODES[mode]
    counts, first = opinfo_sweep.check(OPS[name], dtype, grad, most=SAMPLES, variant=variant)
    bad = [k for k in ("wrong", "error", "timeout", "missing") if k in counts]
    if (name, variant, mode) in VARIANT_KNOWN:
        assert bad, (f"{name} ({variant}, {mode}) now matches torch on all "
                     f"{counts.get('ok', 0)} samples: delete it from VARIANT_KNOWN")
    elif (name, mode) not in KNOWN:
        assert not bad, f"{name} ({variant}, {mode}): {dict(counts)}; {bad[0]}: " \
                        f"{first.get(bad[0], '')}"
