"""`out=` against PyTorch on its OpInfo samples (`tests/opinfo_sweep.py --out-variant`): every
OpInfo that takes `out=`, its first 2 float32 samples, with an `out` of the result's shape and
dtype, an empty one (resized), and a float64 one (cast into, or refused as torch refuses). What
is written into `out` and what the op returns must match torch, unless `KNOWN` lists the op; a
listed op that now matches fails too, so the list only shrinks."""

import pytest

pytest.importorskip("expecttest")     # torch's OpInfo module imports it

import torch  # noqa: E402

from tests import opinfo_sweep  # noqa: E402

KNOWN = {
    **{name: "no such function in kiln" for name in
       ("native_batch_norm", "_native_batch_norm_legit", "_batch_norm_with_update")},
}
OPS = {opinfo_sweep.label(op): op for op in opinfo_sweep.ops() if op.supports_out}


@pytest.mark.parametrize("name", sorted(OPS))
def test_out_matches_torch(name):
    counts, first = opinfo_sweep.check(OPS[name], torch.float32, most=2, out_variant=True)
    bad = [k for k in ("wrong", "error", "timeout", "missing") if k in counts]
    if name in KNOWN:
        assert bad, (f"{name} now matches torch with out= on all {counts.get('ok', 0)} cases: "
                     f"delete it from KNOWN")
    else:
        assert not bad, f"{name}: {dict(counts)}; {bad[0]}: {first.get(bad[0], '')}"
