"""Parameters tagged by attribute (`p.no_weight_decay`, `p._is_embedding`, `p.lr_scale`),
param groups built from the tags, and an Optimizer subclass keeping `p.momentum_buffer` on the
parameter: kiln's losses and every value agree with torch's from torch's initial weights (to
rtol 1e-5), and the compiled train step (no fallback to eager) repeats them."""

from tests.scripts.test_compiled_loops import compiled_like_torch


def test_tagged_parameters_and_momentum_on_the_parameter_match_torch_compiled():
    t, k, c = compiled_like_torch("tagged_parameters")
    assert k["values"]["groups"] == "3,4"
    assert not k["values"]["state_dict_tagged"] and k["values"]["tags_after_double"]
