"""State-dict recipes under `import kiln as torch`: what_is_state_dict,
saving_multiple_models_in_one_file, zeroing_out_gradients, module_load_state_dict_tips (mmap,
meta device, assign=True) and swap_tensors (a wrapper-subclass weight through .bfloat16() with
and without the swap switch, a module_load handler). Losses agree with torch's to rtol 1e-5
from torch's initial weights; every value agrees; the compiled train step repeats eager's."""

from tests.scripts.test_recipes import compiled_matches, same_run


def test_state_dict_recipes_match_torch():
    # m.bfloat16() on a wrapper-subclass weight raised NotImplementedError (.data of a
    # __torch_dispatch__ subclass); the swap switch was ignored; Tensor.module_load was missing
    t, k = same_run("state_dict_recipes")
    v = k["values"]
    assert (v["plain_elem_dtype"], v["swap_elem_dtype"]) == ("float32", "bfloat16")
    assert v["loaded_weight_type"] == "ScaledWeight" and v["assigned_device"] == "cpu"
    compiled_matches("state_dict_recipes", k, t)
