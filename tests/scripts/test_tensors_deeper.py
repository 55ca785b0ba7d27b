"""The introyt tensors tutorial under `import kiln as torch`: what it prints (tensors of each
dtype, shapes) is torch's text, `kiln.` for `torch.` aside; broadcasting failures raise
RuntimeError as torch's; `out=`, clones, squeezes, reshapes and the NumPy bridge behave alike
(values to rtol 1e-5)."""

from tests.scripts.test_recipes import same_run


def test_tensors_deeper_tutorial_matches_torch():
    t, k = same_run("tensors_deeper", skip_values=("printed",))
    assert k["values"]["printed"].replace("kiln.", "torch.") == t["values"]["printed"]
    v = k["values"]
    assert v["bad_broadcast_1"] == v["bad_broadcast_3"] == "RuntimeError"
    assert v["out_same_object"] and v["numpy_shares"] == 17.0
