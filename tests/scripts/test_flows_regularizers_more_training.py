"""Training programs with a masked autoregressive flow, a quasi-Newton optimizer, activation
checkpointing with gradient accumulation, a spectrally normalized GAN and elastic weight
consolidation, each written as its community writes it and run under torch and kiln: a MAF
(MADE layers as `nn.Linear` subclasses multiplying a `mask` buffer into the weight, degrees by a
seeded `torch.randperm`, affine log-dets, `x.flip(-1)` between layers, a `Normal` base, sampling
by the inverse pass in a loop). Each kiln run starts from torch's initial weights: losses agree
with torch's step by step, final values too, and the compiled run repeats eager's losses (rtol
1e-4), with no step falling back to eager unless said, and then for a reason the warning names."""

import numpy as np

from tests.scripts.harness import _as_array
from tests.scripts.test_applied_training import applied_run


def test_masked_autoregressive_flow_made_masks_flip_normal_base_and_inverse_sampling():
    t, k, c, notes = applied_run("maf", values_rtol=1e-4, values_atol=1e-5)
    assert notes == []
    v = k["values"]
    # the masks and orders come from torch's seeded generator: the same bits
    np.testing.assert_array_equal(_as_array(v["masks"]), _as_array(t["values"]["masks"]))
    np.testing.assert_array_equal(_as_array(v["orders"]), _as_array(t["values"]["orders"]))
    # autoregressive: no output sees an input of its own degree or later, yet some see earlier
    assert float(v["leak"]) == 0.0 and float(v["seen"]) > 0.0
    # sampling inverts the flow: the samples map back to the base draws
    assert float(v["inverse_err"]) < 1e-5
    assert float(c["values"]["inverse_err"]) < 1e-5
    assert k["losses"][-1] < 0.8 * k["losses"][0]
