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
    **{f"nn.functional.{name}": "torch's nn.functional binding takes out=; kiln.nn.functional "
       "does not (torch.X takes it where torch has that name)"
       for name in ("normalize", "avg_pool2d", "avg_pool3d", "linear", "logsigmoid",
                    "softshrink", "hardshrink", "gelu", "softplus")},
    **{name: "no such function in kiln" for name in
       ("native_batch_norm", "_native_batch_norm_legit", "_batch_norm_with_update")},
    "_chunk_cat": "a private name: out= is installed on the public functions only",
    "normal.number_mean": "torch refuses a float64 out for a float mean here and casts into it "
                          "for a tensor mean; kiln's normal casts in both",
    "inner": "torch refuses a float64 out except for 0-d inputs (its mul path); kiln refuses "
             "it always",
    "linalg.matrix_power": "torch casts into a float64 out for n = 0 only; kiln refuses it always",
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
